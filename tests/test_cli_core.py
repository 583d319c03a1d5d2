"""inspect / fuse / export through the real console script: output, exit codes, no partial files."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import trained_like
from test_checkpoints import bad_files

from click.testing import CliRunner

from repdeploy.cli import main

REPDEPLOY = [sys.executable, "-m", "repdeploy"]


def run(*args):
    """In-process: the same click command, exit codes and streams, without a torch import each."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    result.returncode = result.exit_code
    return result


def test_console_entry_point_runs(ckpt):
    r = subprocess.run([*REPDEPLOY, "inspect", str(ckpt), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["variant"] == "RepVGG-mini"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "repvgg.pth"
    torch.save(trained_like("RepVGG-mini").state_dict(), path)
    return path


def test_inspect_json(ckpt):
    r = run("inspect", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert {k: info[k] for k in ("format", "family", "variant", "form", "num_classes")} == {
        "format": "repvgg-official", "family": "repvgg", "variant": "RepVGG-mini", "form": "train",
        "num_classes": 10}
    assert info["params"] == sum(v.numel() for k, v in torch.load(ckpt).items() if "running" not in k
                                 and "num_batches" not in k)


def test_fuse_then_export_roundtrip(ckpt, tmp_path):
    fused = tmp_path / "fused.pt"
    r = run("fuse", ckpt, "-o", fused, "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["output"] == str(fused) and rec["max_rel_diff"] <= 1e-4 and 0 <= rec["max_abs_diff"] <= 1e-2
    r = run("export", fused, "-o", tmp_path / "m.onnx", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["ort_parity"]["max_rel_diff"] <= 1e-4 and rec["ort_parity"]["top1_agreement"] == 1.0
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_bad_inputs_exit_2_with_one_line_and_no_output(tmp_path, ckpt):
    repvgg = trained_like("RepVGG-mini-se")
    for name, pattern in bad_files(tmp_path, repvgg).items():
        out = tmp_path / f"{name}.onnx"
        r = run("export", tmp_path / name, "-o", out)
        assert r.returncode == 2, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], r.stderr
        assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".part"]
    assert leftovers == []


def test_unwritable_output_fails_before_work(tmp_path, ckpt):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    r = run("fuse", ckpt, "-o", blocker / "fused.pt")
    assert r.returncode == 2 and "not writable" in r.stderr and "-o" in r.stderr


def test_unknown_arch_and_list(ckpt):
    r = run("inspect", ckpt, "--arch", "RepVGG-Z9")
    assert r.returncode == 2 and "unknown architecture" in r.stderr
    r = run("inspect", "--list-arch")
    assert r.returncode == 0 and "RepVGG-D2se" in r.stdout and "RepOpt-VGG-L2" in r.stdout


def test_help_has_examples():
    for cmd in ("inspect", "fuse", "export"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and "Example" in r.stdout
