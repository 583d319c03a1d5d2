"""One vocabulary across commands (docs/cli.md): names, defaults, --json/--json-out, -q, aliases."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from repdeploy import defaults
from repdeploy.cli import main
from repdeploy.zoo import zoo_entry


def options(command: str) -> dict[str, click.Option]:
    """Visible options of a command by their long name."""
    out = {}
    for p in main.commands[command].params:
        if isinstance(p, click.Option) and not p.hidden:
            for o in p.opts:
                if o.startswith("--"):
                    out[o] = p
    return out


def test_the_same_thing_has_the_same_name_everywhere():
    retired = {"--data", "--val-data", "--limit", "--image-size", "--batch"}
    for name in main.commands:
        visible = set(options(name))
        assert not visible & retired, (name, visible & retired)
        assert "--json" in visible and "--json-out" in visible, name
        assert any(p.name == "quiet" or "-q" in getattr(p, "opts", ()) for p in main.commands[name].params), name
    for name in ("eval", "quantize", "pipeline", "qat", "train", "hypersearch"):
        assert "--eval-data" in options(name), name
    for name in ("eval", "quantize", "pipeline"):
        assert "--eval-limit" in options(name), name
    for name in ("eval", "pipeline", "qat", "train"):
        assert options(name)["--batch-size"].type is click.INT, name
    assert "--batches" in options("bench")
    assert "--input-size" in options("export") and "--input-size" in options("train")


def test_one_defaults_module_feeds_every_command():
    for name in ("quantize", "pipeline", "qat"):
        assert options(name)["--calib-samples"].default == defaults.CALIB_SAMPLES, name
    for name in ("bench", "pipeline"):
        o = options(name)
        assert (o["--warmup"].default, o["--duration"].default, o["--iterations"].default) == (
            defaults.BENCH_WARMUP_S, defaults.BENCH_DURATION_S, defaults.BENCH_ITERATIONS), name
    import importlib
    import inspect

    bench, pipeline = importlib.import_module("repdeploy.bench"), importlib.import_module("repdeploy.pipeline")
    ptq, qat = importlib.import_module("repdeploy.quant.ptq"), importlib.import_module("repdeploy.quant.qat")

    assert inspect.signature(ptq.quantize).parameters["calib_samples"].default == defaults.CALIB_SAMPLES
    assert inspect.signature(qat.qat).parameters["calib_samples"].default == defaults.CALIB_SAMPLES
    assert inspect.signature(pipeline.run_pipeline).parameters["calib_samples"].default == defaults.CALIB_SAMPLES
    assert inspect.signature(bench.bench).parameters["duration"].default == defaults.BENCH_DURATION_S


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    r = CliRunner().invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--calib-data", "builtin",
                                  "--calib-samples", "32", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out / "model_int8_ort.onnx"


def test_old_spellings_still_work_with_a_deprecation_note(int8_onnx):
    runner = CliRunner()
    new = runner.invoke(main, ["eval", str(int8_onnx), "--eval-data", "builtin", "--eval-limit", "50", "--json"])
    old = runner.invoke(main, ["eval", str(int8_onnx), "--data", "builtin", "--limit", "50", "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    a, b = json.loads(old.stdout), json.loads(new.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and b["images"] == 50
    assert "--data is deprecated" in old.stderr and "use --eval-data" in old.stderr
    assert "--limit is deprecated" in old.stderr and "deprecated" not in new.stderr
    # The old name is hidden from --help, and giving both names with different values is refused.
    assert "--limit" not in runner.invoke(main, ["eval", "--help"]).stdout.replace("--eval-limit", "")
    both = runner.invoke(main, ["eval", str(int8_onnx), "--eval-limit", "10", "--limit", "20"])
    assert both.exit_code == 2 and "give only --eval-limit" in both.stderr


def test_json_is_one_object_on_stdout_and_json_out_writes_it(int8_onnx, tmp_path):
    runner = CliRunner()
    out = tmp_path / "inspect.json"
    r = runner.invoke(main, ["inspect", str(int8_onnx), "--json", "--json-out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(out.read_text())
    b = runner.invoke(main, ["bench", str(int8_onnx), "--json", "--quiet", "--warmup", "0", "--duration", "0",
                             "--iterations", "3"])
    assert b.exit_code == 0, b.output
    doc = json.loads(b.stdout)  # the whole stdout is one JSON object
    assert doc["verdict"] == "PASSED" and doc["results"][0]["stats"]["count"] >= 3
    assert not (tmp_path / "--quiet").exists() and b.stderr == ""  # -q: results and errors only


def test_bench_old_json_file_form_still_writes_the_file(int8_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["bench", str(int8_onnx), "--batch", "2", "--json", "old.json", "--warmup", "0",
                                  "--duration", "0", "--iterations", "3"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "old.json").read_text())
    assert doc["results"][0]["batch"] == 2
    assert "use --json-out FILE" in r.stderr and "--batch is deprecated" in r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("&&&& PASSED")


def test_quiet_silences_stage_lines_and_warnings_but_not_errors(int8_onnx, tmp_path):
    runner = CliRunner()
    args = ["bench", str(int8_onnx), "--warmup", "0", "--duration", "0", "--iterations", "3", "--batch", "1"]
    loud, quiet = runner.invoke(main, args), runner.invoke(main, [*args, "-q"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "bench 1 model(s)" in loud.stderr and "--batch is deprecated" in loud.stderr and quiet.stderr == ""
    assert "&&&& PASSED" in quiet.stdout and "p99" in quiet.stdout  # results stay
    bad = runner.invoke(main, ["eval", str(tmp_path / "missing.onnx"), "-q"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ")


def test_pipeline_report_names_the_calibration_method_it_defaults_to(tmp_path):
    """report.json/.md/.html said `calib_method: None` when the default (entropy) was used."""
    from repdeploy.pipeline import run_pipeline

    result = run_pipeline([str(tmp_path / "missing.pth")], output_dir=tmp_path / "run")  # fails fast, still reports
    assert result.rows[0].status == "ERROR"
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["settings"]["calib_method"] == defaults.CALIB_METHOD
    assert doc["settings"]["calib_samples"] == defaults.CALIB_SAMPLES


def test_json_out_to_a_bad_place_is_one_line_and_the_cli_leaves_no_handler(int8_onnx, tmp_path, capsys):
    import logging

    from repdeploy.progress import status

    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["inspect", str(int8_onnx), "--json-out", str(tmp_path / "file" / "out.json")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output
    # After a command ran in-process, library messages are a library's again: logged, not printed.
    capsys.readouterr()
    status("a library stage line")
    assert capsys.readouterr().err == ""
    assert logging.getLogger("repdeploy").handlers == []
