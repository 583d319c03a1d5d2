"""Hostile and careless input, family by family (issue 13's audit).

Each case crafts its bad file in a temporary directory, runs the real command, and asserts the
exit code, exactly one `error:` line and no traceback, that the inputs are byte-identical
afterwards and that nothing new was left on disk (the whole directory is hashed before and after).
Disk-full cases write onto a small tmpfs (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from repdeploy.cli import main
from repdeploy.zoo import zoo_entry

REPVGG = zoo_entry("repvgg").file
REPOPT = zoo_entry("repopt").file


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (hidden ones too), with file contents hashed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special"
    return out


def cli(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    # Anything but SystemExit escaping the command is a traceback a user would have seen.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def refused(root: Path, code: int, *args, says: str = "") -> str:
    """Run a command that must fail cleanly; return its one error line."""
    before = snapshot(root)
    exit_code, out, err = cli(*args)
    # Warnings (say, unstable latency on a busy machine) may precede it; the error is one line.
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert exit_code == code, (exit_code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert snapshot(root) == before, "inputs changed or something was left on disk"
    assert says.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path):
    shutil.copy(REPVGG, tmp_path / "a.pth")
    return tmp_path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- 1, 2: data loss


def test_pipeline_never_deletes_an_input_or_a_foreign_file(work):
    run_dir = work / "out" / "dl" / "fused"
    run_dir.mkdir(parents=True)
    shutil.copy(work / "a.pth", run_dir / "fused.pt")
    (run_dir / "a0_fp16.engine").write_bytes(b"user's engine")
    refused(work, 2, "pipeline", run_dir / "fused.pt", work / "a.pth", "-o", work / "out" / "dl", "-q",
            says="contains the input")
    # no input inside, but a file no manifest lists: refused too (--force would keep it)
    (run_dir / "fused.pt").unlink()
    refused(work, 2, "pipeline", work / "fused.pth", "-o", work / "out" / "dl", "-q", says="--force")


@pytest.mark.parametrize("command", [
    ["fuse", "{a}", "-o", "{a}"],
    ["export", "{a}", "-o", "{a}"],
    ["quantize", "{a}", "--calib-data", "builtin", "-o", "{dir}"],
    ["qat", "{a}", "--train-data", "builtin", "-o", "{dir}"],
    ["train", "--arch", "RepVGG-mini", "--data", "{npz}", "-o", "{npz}"],
])
def test_output_that_is_an_input_is_refused(work, command):
    shutil.copy(work / "a.pth", work / "fused.pt")  # quantize/qat write fused.pt: the input here
    np.savez(work / "d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    args = [c.format(a=work / ("fused.pt" if c == "{a}" and command[0] in ("quantize", "qat") else "a.pth"),
                     dir=work, npz=work / "d.npz") for c in command]
    refused(work, 2, *args, "-q", says="input")


def test_bench_json_onto_the_model_is_refused(work):
    onnx_path = work / "m.onnx"
    onnx_path.write_bytes(b"not really onnx, but the user's file")
    refused(work, 2, "bench", onnx_path, "--json", onnx_path, "-q", says="is the input")
    os.mkfifo(work / "pipe")  # a rename onto a FIFO or device (/dev/null, as root) would replace the node
    refused(work, 2, "bench", onnx_path, "--json", work / "pipe", "-q", says="not a regular file")
    assert (work / "pipe").is_fifo()


def test_force_keeps_foreign_files_and_replaces_only_manifest_ones(tmp_path):
    from repdeploy.rundir import OutputSet

    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"tool": "repdeploy", "artifacts": ["old.onnx", "manifest.json"]}))
    (run / "old.onnx").write_text("old")
    (run / "notes.txt").write_text("the user's")
    with pytest.raises(Exception, match="--force"):
        OutputSet(run)
    with OutputSet(run, force=True) as staging:
        (staging / "manifest.json").write_text(json.dumps({"tool": "repdeploy", "artifacts": ["new.onnx"]}))
        (staging / "new.onnx").write_text("new")
    assert sorted(os.listdir(run)) == ["manifest.json", "new.onnx", "notes.txt"]
    assert (run / "notes.txt").read_text() == "the user's"


# --------------------------------------------------------------------------- 3: integrity


@pytest.fixture
def damaged(work):
    data = bytearray((work / "a.pth").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(range(64))
    (work / "damaged.pth").write_bytes(bytes(data))
    return work / "damaged.pth"


@pytest.mark.parametrize("command", [["inspect"], ["fuse", "-o", "{w}/f.pt"], ["eval", "--data", "builtin"]])
def test_damaged_checkpoint_is_refused_by_every_reader(damaged, command):
    args = [command[0], damaged, *[c.format(w=damaged.parent) for c in command[1:]], "-q"]
    line = refused(damaged.parent, 2, *args, says="CRC")
    assert "--trust-checkpoint" not in line


def test_fusion_check_is_bounded_absolutely():
    from repdeploy.fuse import Equivalence

    assert not Equivalence(1.2e25, 1.2e-4 / 2, 1e29, 1e-4, (2, 3, 8, 8), 0).passed  # relative alone would pass
    assert not Equivalence(float("nan"), float("nan"), float("nan"), 1e-4, (2, 3, 8, 8), 0).passed
    assert Equivalence(2e-6, 1e-6, 2.0, 1e-4, (2, 3, 8, 8), 0).passed


def test_corrupt_pickle_is_not_called_unsafe(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "legacy.pth").read_bytes())
    data[20:28] = b"\xff" * 8
    (tmp_path / "legacy.pth").write_bytes(bytes(data))
    line = refused(tmp_path, 2, "inspect", tmp_path / "legacy.pth", "-q", says="damaged")
    assert "would not repair" in line and "if you trust" not in line


# --------------------------------------------------------------------------- 4: resume identity


def test_qat_resume_refuses_another_runs_state(tmp_path):
    from repdeploy.errors import InputError
    from repdeploy.quant.qat import qat

    digits = np.load(Path(__file__).parents[1] / "repdeploy" / "assets" / "digits.npz")
    np.savez(tmp_path / "val.npz", images=digits["val_images"][:16], labels=digits["val_labels"][:16])
    common = dict(train_data="builtin", val_data=str(tmp_path / "val.npz"), epochs=1, train_samples=32,
                  batch_size=32, calib_samples=16, calib_method="max", stop_after_steps=1)
    qat(str(REPVGG), output_dir=tmp_path, **common)
    state = (tmp_path / "qat_state.pt").read_bytes()
    with pytest.raises(InputError, match="another run.*(arch|model)"):
        qat(str(REPOPT), output_dir=tmp_path, resume=True, **common)
    with pytest.raises(InputError, match="another run.*(calibration|ranges)"):
        qat(str(REPVGG), output_dir=tmp_path, resume=True, **{**common, "calib_method": "percentile"})
    assert (tmp_path / "qat_state.pt").read_bytes() == state


def test_train_resume_refuses_another_runs_state(tmp_path):
    from repdeploy.data import open_dataset
    from repdeploy.errors import InputError
    from repdeploy.models import get_spec
    from repdeploy.recipes import train_architecture
    from repdeploy.train import TrainConfig

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 255, (16, 16, 16), np.uint8), labels=np.arange(16) % 2)
    data = open_dataset(tmp_path / "d.npz", image_size=16)
    spec = get_spec("RepVGG-mini", num_classes=2)
    config = dict(epochs=1, batch_size=8, stop_after_steps=1, augment="none")
    state = tmp_path / "m.pth.state"
    train_architecture(spec, data, config=TrainConfig(**config), state_path=state)
    with pytest.raises(InputError, match="another run.*sgs"):
        train_architecture(spec, data, config=TrainConfig(**config), state_path=state, resume=True, sgs=True)
    other = open_dataset(tmp_path / "d.npz", image_size=16).subset(range(12))
    with pytest.raises(InputError, match="another run.*data"):
        train_architecture(spec, other, config=TrainConfig(**config), state_path=state, resume=True)


# --------------------------------------------------------------------------- 5, 6: gates and hangs


def test_accuracy_gates_cannot_be_silently_off(work):
    refused(work, 2, "quantize", work / "a.pth", "--calib-data", "builtin", "--max-drop", "1", "-o", work / "q", "-q",
            says="needs --eval-data")
    refused(work, 2, "pipeline", work / "a.pth", "--max-drop", "nan", "-o", work / "p", "-q", says="finite")
    refused(work, 2, "quantize", work / "a.pth", "--calib-data", "builtin", "--eval-data", "builtin",
            "--max-drop", "inf", "-o", work / "q", "-q", says="finite")


@pytest.mark.parametrize("args, says", [
    (["bench", "{a}", "--duration", "nan"], "finite"),
    (["bench", "{a}", "--warmup", "inf"], "finite"),
    (["bench", "{a}", "--threads", "100000"], "CPUs"),
    (["bench", "{a}", "--threads", "-1"], ">= 1"),
    (["eval", "{a}", "--data", "{w}/huge_label.npz"], "classes"),
    (["pipeline", "{a}", "--iterations", "0", "-o", "{w}/p"], "--iterations"),
    (["pipeline", "{a}", "--threads", "100000", "-o", "{w}/p"], "CPUs"),
])
def test_one_bad_value_never_hangs_or_exhausts_memory(work, args, says):
    np.savez(work / "huge_label.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 2**62]))
    refused(work, 2, *[a.format(a=work / "a.pth", w=work) for a in args], "-q", says=says)


# --------------------------------------------------------------------------- 7: atomic sets


def own_scratch_name(name: str, tag: str, pid: int, suffix: str = "") -> str:
    """The signed name this user's repdeploy gives scratch of process `pid` (see rundir.is_own_scratch)."""
    from repdeploy.rundir import _host, _sign

    unsigned = f".{name}.{tag}-{_host()}-{pid}-0123abcd-"
    return unsigned + _sign(unsigned) + suffix


def test_stale_staging_of_killed_runs_is_removed_and_live_ones_kept(tmp_path):
    from repdeploy.io import write_json_atomic
    from repdeploy.rundir import _host

    dead = dead_pid()
    (tmp_path / own_scratch_name("report.json", "part", dead, ".part")).write_text("half")
    staging = tmp_path / own_scratch_name("run", "staging", dead)
    staging.mkdir()
    (staging / "fused.pt").write_text("half")
    live = tmp_path / own_scratch_name("run", "staging", os.getpid())
    live.mkdir()
    (tmp_path / ".quantize-legacy-user-file").write_text("not ours to judge")  # no host-pid tag: kept
    unsigned = tmp_path / f".run.staging-{_host()}-{dead}-0123abcd-{'0' * 20}"  # the name alone proves nothing
    unsigned.mkdir()
    write_json_atomic(tmp_path / "report.json", {"ok": True})
    assert sorted(os.listdir(tmp_path)) == sorted([".quantize-legacy-user-file", live.name, unsigned.name,
                                                   "report.json"])


def test_a_commit_killed_half_way_is_finished_by_the_next_run(tmp_path):
    from repdeploy.rundir import COMMIT_MARKER, _sign, clean_stale_scratch

    for name in ("fused.pt", "model_int8_ort.onnx", "report.json"):
        (tmp_path / name).write_text("old")
    stage = tmp_path / own_scratch_name("set", "quantize", dead_pid())
    stage.mkdir()
    names = ["fused.pt", "model_int8_ort.onnx", "report.json"]
    (stage / COMMIT_MARKER).write_text(json.dumps({"files": names, "mac": _sign(stage.name + json.dumps(names))}))
    os.replace(tmp_path / "report.json", stage / "old-report-gone")  # commit removes the old report first
    (tmp_path / "fused.pt").write_text("new")  # ... and was killed after the first rename
    for name in names[1:]:
        (stage / name).write_text("new")
    clean_stale_scratch(tmp_path)
    assert {n: (tmp_path / n).read_text() for n in names} == dict.fromkeys(names, "new")
    assert not stage.exists()


def test_a_failed_run_leaves_the_previous_set_whole(tmp_path):
    from repdeploy.rundir import OutputSet

    run = tmp_path / "run"
    with OutputSet(run) as staging:
        (staging / "manifest.json").write_text(json.dumps({"tool": "repdeploy", "artifacts": ["a", "manifest.json"]}))
        (staging / "a").write_text("first")
    before = snapshot(tmp_path)
    for error in (KeyboardInterrupt(), OSError(28, "No space left on device")):
        with pytest.raises(type(error)):
            with OutputSet(run) as staging:
                (staging / "a").write_text("second, half written")
                raise error
        assert snapshot(tmp_path) == before


def test_interrupt_message_says_what_was_kept(tmp_path):
    from repdeploy.cli.common import describe_failure
    from repdeploy import rundir

    rundir._committed.clear()  # other tests in this process committed outputs too
    rundir.note_committed(tmp_path / "first_model")
    message, code = describe_failure(KeyboardInterrupt())
    assert code == 130 and "no partial output" not in message and "first_model" in message


# --------------------------------------------------------------------------- 8: tracebacks -> one line


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: too small for any model file."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs for disk-full cases needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mount
    finally:
        busy = subprocess.run(["umount", str(mount)], capture_output=True, text=True)
        if busy.returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
            pytest.fail(f"a file on the full disk was left open: {busy.stderr.strip()}")


@pytest.mark.parametrize("command", [
    ["fuse", "{a}", "-o", "{full}/f.pt"],
    ["export", "{a}", "-o", "{full}/m.onnx"],
    ["quantize", "{a}", "--calib-data", "builtin", "--calib-samples", "16", "--calib-method", "max",
     "-o", "{full}/q"],
    ["train", "--arch", "RepVGG-mini", "--data", "{w}/tiny.npz", "--epochs", "1", "--batch-size", "8",
     "-o", "{full}/t.pth"],
    ["bench", "{a}", "--engine", "torch", "--warmup", "0", "--duration", "0", "--iterations", "2",
     "--json", "{full}/b.json"],
    ["pipeline", "{a}", "--calib-samples", "16", "--eval-limit", "32", "--warmup", "0", "--duration", "0",
     "--iterations", "2", "-o", "{full}/p"],
])
def test_full_disk_is_one_line_and_leaves_nothing(work, full_disk, command):
    np.savez(work / "tiny.npz", images=np.random.default_rng(0).integers(0, 255, (20, 32, 32), np.uint8),
             labels=np.arange(20) % 2)
    if command[0] in ("bench", "pipeline"):  # small outputs: fill the disk to its last block first
        fd = os.open(full_disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
    refused(work, 1, *[c.format(a=work / "a.pth", full=full_disk, w=work) for c in command], "-q",
            says="no space left")


def _fused_record(**changes):
    from repdeploy.checkpoints import load_fused

    plain, _, _ = load_fused(REPVGG)
    record = {"repdeploy_format": 1, "version": "x", "arch": plain.spec.to_dict(),
              "state_dict": plain.state_dict(), "extra": {}}
    for key, value in changes.items():
        if key in record["arch"]:
            record["arch"][key] = value
        else:
            record[key] = value
    return record


@pytest.mark.parametrize("changes, says", [
    ({"widths": [-8, 16, 32, 64, 128]}, "widths"),
    ({"state_dict": None}, "state_dict"),
    ({"state_dict": [1, 2]}, "state_dict"),
    ({"extra": [1, 2]}, "extra"),
    ({"groups": [[3, 7]]}, "groups"),
    ({"input_size": 0}, "input_size"),
    ({"input_size": 20000}, "input_size"),
    ({"arch": "RepVGG-A0"}, "arch"),
])
def test_damaged_fused_metadata_is_one_line(tmp_path, changes, says):
    torch.save(_fused_record(**changes), tmp_path / "fused.pt")
    refused(tmp_path, 2, "fuse", tmp_path / "fused.pt", "-o", tmp_path / "again.pt", "-q", says=says)


def test_zero_dim_tensors_and_arrays_are_one_line(tmp_path):
    sd = torch.load(REPVGG, weights_only=True)
    sd = dict(sd.get("state_dict", sd)) if "state_dict" in sd else dict(sd)
    sd["linear.weight"] = torch.tensor(1.0)
    torch.save(sd, tmp_path / "zero_dim.pth")
    refused(tmp_path, 2, "inspect", tmp_path / "zero_dim.pth", "-q", says="linear.weight")
    np.save(tmp_path / "scalar.npy", np.array(3.0))
    shutil.copy(REPVGG, tmp_path / "a.pth")
    refused(tmp_path, 2, "eval", tmp_path / "a.pth", "--data", tmp_path / "scalar.npy", "-q", says="single number")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels: what a decompression bomb looks like to Pillow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_one_line(work):
    (work / "val" / "a").mkdir(parents=True)
    _png_header_only(work / "val" / "a" / "bomb.png", 30000, 30000)
    refused(work, 2, "eval", work / "a.pth", "--data", work / "val", "-q", says="decompression bomb")


@pytest.mark.parametrize("args, says", [
    (["quantize", "{a}", "--calib-data", "builtin", "--seed", "-1", "-o", "{w}/q"], "--seed"),
    (["eval", "{a}", "--batch-size", "0"], "--batch-size"),
    (["export", "{a}", "--input-size", "-5", "-o", "{w}/m.onnx"], "--input-size"),
    (["export", "{a}", "--input-size", "0", "-o", "{w}/m.onnx"], "--input-size"),
    (["export", "{a}", "--opset", "5", "-o", "{w}/m.onnx"], "--opset"),
    (["qat", "{a}", "--train-data", "builtin", "--epochs", "0", "-o", "{w}/q"], "--epochs"),
    (["qat", "{a}", "--train-data", "builtin", "--temperature", "-1", "-o", "{w}/q"], "--temperature"),
    (["qat", "{a}", "--train-data", "builtin", "--checkpoint-every", "-3", "-o", "{w}/q"], "--checkpoint-every"),
    (["train", "--arch", "RepVGG-mini", "--warmup-epochs", "-1", "-o", "{w}/t.pth"], "--warmup-epochs"),
    (["train", "--arch", "RepVGG-mini", "--image-size", "0", "-o", "{w}/t.pth"], "--input-size"),
    (["train", "--arch", "RepVGG-mini", "--seed", "-1", "-o", "{w}/t.pth"], "--seed"),
])
def test_bad_option_values_are_refused_before_any_work(work, args, says):
    refused(work, 2, *[a.format(a=work / "a.pth", w=work) for a in args], "-q", says=says)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(work):
    from repdeploy.cli.common import describe_failure

    message, code = describe_failure(ValueError("boom\nsecond line"))
    assert code == 1 and "\n" not in message and "--debug" in message
    assert describe_failure(MemoryError())[1] == 1 and "memory" in describe_failure(MemoryError())[0]
    message, code = describe_failure(PermissionError(13, "Permission denied", "/ro/out.pt"))
    assert code == 2 and "/ro/out.pt" in message
    r = subprocess.run([sys.executable, "-m", "repdeploy", "--debug", "bench", str(work / "a.pth"), "--duration", "nan"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]  # known errors stay one line


# --------------------------------------------------------------------------- 9: silently wrong numbers


def test_sixteen_bit_images_and_integer_arrays_use_their_range(tmp_path, caplog):
    from PIL import Image

    from repdeploy.data import open_dataset

    pixels = np.linspace(0, 40000, 64 * 64).reshape(64, 64).astype(np.uint16)
    for name, image in (("a", Image.fromarray(pixels)), ("b", Image.fromarray((pixels // 257).astype(np.uint8)))):
        (tmp_path / "img" / name).mkdir(parents=True)
        image.save(tmp_path / "img" / name / "x.png")
    ds = open_dataset(tmp_path / "img", image_size=32, mean=(0,), std=(1,))
    assert abs(float(ds[0][0].mean()) - float(ds[1][0].mean())) < 0.01  # not clipped to white
    np.save(tmp_path / "u16.npy", pixels[None].repeat(2, 0))
    np.save(tmp_path / "u8.npy", (pixels // 257).astype(np.uint8)[None].repeat(2, 0))
    a = open_dataset(tmp_path / "u16.npy", image_size=32, mean=(0,), std=(1,))[0][0]
    b = open_dataset(tmp_path / "u8.npy", image_size=32, mean=(0,), std=(1,))[0][0]
    assert float(a.max()) <= 1.0 and abs(float(a.mean()) - float(b.mean())) < 0.01
    np.save(tmp_path / "dark.npy", np.full((2, 8, 8), 200, np.uint16))
    open_dataset(tmp_path / "dark.npy", image_size=8)
    # The library logs it (the CLI shows it on stderr, even with -q); it never prints.
    assert any("nearly black" in r.getMessage() for r in caplog.records if r.name == "repdeploy")


def test_integer_weights_are_refused(tmp_path):
    sd = torch.load(REPVGG, weights_only=True)
    sd = {k: (v * 100).to(torch.int32) if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(sd, tmp_path / "int.pth")
    refused(tmp_path, 2, "inspect", tmp_path / "int.pth", "-q", says="non-floating-point")


# --------------------------------------------------------------------------- 10: misc diagnosis


def test_run_pipeline_takes_one_path_as_one_checkpoint(tmp_path):
    from repdeploy.pipeline import run_pipeline

    result = run_pipeline(str(tmp_path / "missing.pth"), output_dir=tmp_path / "out", command="test")
    assert [r.name for r in result.rows] == ["missing"] and "does not exist" in result.rows[0].error
