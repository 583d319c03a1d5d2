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
    from repdeploy import Equivalence

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
    from repdeploy import InputError, qat

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
    from repdeploy import InputError
    from repdeploy.models import get_spec
    from repdeploy.training import train_architecture
    from repdeploy.training import TrainConfig

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
    from repdeploy.scratch import _host, _sign

    unsigned = f".{name}.{tag}-{_host()}-{pid}-0123abcd-"
    return unsigned + _sign(unsigned) + suffix


def test_stale_staging_of_killed_runs_is_removed_and_live_ones_kept(tmp_path):
    from repdeploy.io import write_json_atomic
    from repdeploy.scratch import _host

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
    from repdeploy.scratch import COMMIT_MARKER, _sign, clean_stale_scratch

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
    from repdeploy import ledger, rundir

    with ledger.recording():  # the command's ledger, which the error boundary opens
        rundir.note_committed(tmp_path / "first_model")
        message, code = describe_failure(KeyboardInterrupt())
    assert code == 130 and "no partial output" not in message and "first_model" in message
    assert "first_model" not in describe_failure(KeyboardInterrupt())[0]  # the next command starts empty


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
    from repdeploy import load_fused

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
    from repdeploy import run_pipeline

    result = run_pipeline(str(tmp_path / "missing.pth"), output_dir=tmp_path / "out", command="test")
    assert [r.name for r in result.rows] == ["missing"] and "does not exist" in result.rows[0].error


# =========================================================================== issue 21: N1-N23
# Nothing lost, nothing trusted that should not be. Each case as it was reproduced; the test
# names carry the case number.


def refused_json(root: Path, code: int, *args, says: str = "") -> dict:
    """`refused`, with --json: stdout is exactly one JSON error object, stderr the one error line."""
    before = snapshot(root)
    exit_code, out, err = cli(*args, "--json")
    assert exit_code == code, (exit_code, out, err)
    doc = json.loads(out)  # strict: one object, no NaN
    assert doc["exit_code"] == code and says.lower() in doc["error"].lower(), doc
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert lines == [f"error: {doc['error']}"], err
    assert snapshot(root) == before, "inputs changed or something was left on disk"
    return doc


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The zoo RepVGG exported once (tests copy it before changing it)."""
    from repdeploy import load_fused, export_onnx

    plain, _, _ = load_fused(REPVGG)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    return export_onnx(plain, path, input_size=32)


def _with_metadata(src: Path, dst: Path, *, drop: str | None = None, **props: str) -> Path:
    import onnx

    from repdeploy.metadata import set_metadata_prop

    model = onnx.load(str(src))
    if drop:
        for prop in [p for p in model.metadata_props if p.key == drop]:
            model.metadata_props.remove(prop)
    for key, value in props.items():
        set_metadata_prop(model, key.replace("__", "."), value)
    onnx.save(model, str(dst))
    return dst


# --------------------------------------------------------------------------- N1-N5: data loss


@pytest.mark.parametrize("command", [
    ["inspect", "{a}"],
    ["fuse", "{a}", "-o", "{w}/f.pt"],
    ["export", "{a}", "-o", "{w}/m.onnx"],
    ["eval", "{a}", "--eval-data", "builtin"],
    ["compare", "{a}", "{a}"],
    ["train", "--arch", "RepVGG-mini", "--train-data", "{w}/d.npz", "-o", "{w}/t.pth"],
    ["quantize", "{a}", "--calib-data", "builtin", "-o", "{w}/q"],
    ["pipeline", "{a}", "-o", "{w}/p"],
    ["bench", "{a}"],
])
def test_n1_json_out_onto_an_input_is_refused_before_any_work(work, command):
    np.savez(work / "d.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4) % 2)
    onto = work / ("d.npz" if command[0] == "train" else "a.pth")
    args = [c.format(a=work / "a.pth", w=work) for c in command]
    refused(work, 2, *args, "--json-out", onto, "-q", says="is the input")


def test_n1_json_out_onto_the_output_is_refused(work):
    refused(work, 2, "fuse", work / "a.pth", "-o", work / "f.pt", "--json-out", work / "f.pt", "-q",
            says="--json-out")


def test_n2_pipeline_never_replaces_the_users_report_files(work):
    out = work / "out"
    out.mkdir()
    for ext in ("md", "json", "html"):
        (out / f"report.{ext}").write_text(f"the user's own {ext}")
    refused(work, 2, "pipeline", work / "a.pth", "-o", out, "-q", says="did not write")
    refused(work, 2, "pipeline", work / "a.pth", "-o", out, "--force", "-q", says="--force never replaces")


def test_n3_force_keeps_foreign_files_but_never_replaces_one(work):
    run = work / "out" / "a"
    run.mkdir(parents=True)
    (run / "fused.pt").write_bytes(b"the user's own fused.pt")
    refused(work, 2, "pipeline", work / "a.pth", "-o", work / "out", "--force", "-q", says="never replaces")
    q = work / "q"
    q.mkdir()
    (q / "report.json").write_text('{"the user": "own report"}')
    refused(work, 2, "quantize", work / "a.pth", "--calib-data", "builtin", "-o", q, "-q", says="did not write")


def test_n3_a_commit_with_force_moves_nothing_when_a_name_is_foreign(tmp_path):
    from repdeploy import OutputError
    from repdeploy.rundir import OutputSet

    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("the user's")
    output_set = OutputSet(run, force=True)  # no outputs named up front: the commit itself must refuse
    (output_set.staging / "report.json").write_text("ours")
    (output_set.staging / "fused.pt").write_text("ours")
    with pytest.raises(OutputError, match="report.json"):
        output_set.commit()
    output_set.discard()
    assert sorted(os.listdir(tmp_path)) == ["run"] and os.listdir(run) == ["report.json"]
    assert (run / "report.json").read_text() == "the user's"


FAST_PIPELINE = ["--calib-samples", "16", "--calib-method", "max", "--eval-limit", "32", "--warmup", "0",
                 "--duration", "0", "--iterations", "2", "--max-duration", "0", "--sessions", "1", "-q"]


def test_n4_a_failed_rerun_keeps_the_good_run_directory(work):
    out = work / "out"
    code, _, err = cli("pipeline", work / "a.pth", "-o", out, *FAST_PIPELINE)
    assert code == 0, err
    good = snapshot(out / "a")
    bad = work / "calib"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png at all")  # read only when the quantize stage calibrates
    code, _, err = cli("pipeline", work / "a.pth", "-o", out, "--calib-data", bad, *FAST_PIPELINE)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: a: quantize: "), err
    assert "previous results" in lines[0] and "x.png" in lines[0]
    assert snapshot(out / "a") == good  # INT8 and FP32 models and calib.json all still there
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no staging left
    row = json.loads((out / "report.json").read_text())["models"][0]
    assert row["status"] == "ERROR" and "previous results" in row["error"]


def test_n5_n17_n22_run_directories_unique_per_input_and_rows_say_error(work):
    paths = [work / "x" / "a.pth", work / "y" / "a.pth", work / "a-2.pth", work / "report.json.pth"]
    for i, p in enumerate(paths):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"PK broken %d" % i)  # each fails at load, fast
    out = work / "out"
    code, _, err = cli("pipeline", *paths, "-o", out, "-q")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: a: load: ") and "3 more" in lines[0], err
    assert "Errno" not in err and "Traceback" not in err
    dirs = {n: json.loads((out / n / "manifest.json").read_text())["input"]["path"]
            for n in os.listdir(out) if (out / n).is_dir()}
    assert dirs == {"a": str(paths[0]), "a-3": str(paths[1]), "a-2": str(paths[2]), "report.json-2": str(paths[3])}
    assert len(json.loads((out / "report.json").read_text())["models"]) == 4


def test_n17_a_row_worded_by_the_same_boundary(tmp_path):
    from repdeploy.pipeline import StageFailure
    from repdeploy.pipeline.run import _stage

    with pytest.raises(StageFailure) as caught:
        with _stage("export", "a", {}):
            raise OSError(28, "No space left on device", str(tmp_path / "m.onnx"))
    assert caught.value.error.exit_code == 1
    assert str(caught.value.error).startswith("no space left on the device writing") and "Errno" not in str(caught.value)


# --------------------------------------------------------------------------- N6: planted scratch


def test_n6_planted_scratch_is_never_followed_and_nothing_outside_is_touched(work, tmp_path_factory):
    from repdeploy.scratch import COMMIT_MARKER, _host, _sign

    victim = tmp_path_factory.mktemp("elsewhere") / "precious.txt"
    victim.write_text("must survive")
    outside_before = snapshot(victim.parent)
    out = work / "out"
    out.mkdir()
    dead = dead_pid()
    planted = out / f".x.staging-{_host()}-{dead}-z"  # the name repdeploy's scratch has, unsigned
    planted.mkdir()
    (planted / COMMIT_MARKER).write_text(json.dumps({"files": [str(victim)]}))
    # Even this user's signed scratch cannot be made to act outside the output directory.
    signed = out / own_scratch_name("y", "staging", dead)
    signed.mkdir()
    names = [str(victim)]
    (signed / COMMIT_MARKER).write_text(json.dumps({"files": names, "mac": _sign(signed.name + json.dumps(names))}))
    forged = out / own_scratch_name("z", "quantize", dead)
    forged.mkdir()
    (forged / COMMIT_MARKER).write_text(json.dumps({"files": ["g.pt"], "mac": "0" * 20}))  # a redo log not signed
    (forged / "g.pt").write_text("planted weights")
    link = out / own_scratch_name("w", "staging", dead)
    link.symlink_to(victim.parent, target_is_directory=True)
    planted_before = snapshot(planted)

    assert cli("fuse", work / "a.pth", "-o", out / "f.pt", "-q")[0] == 0
    assert cli("bench", work / "a.pth", "--engine", "torch", "--warmup", "0", "--duration", "0", "--iterations", "2",
               "--json-out", out / "b.json", "-q")[0] == 0
    assert cli("quantize", work / "a.pth", "--calib-data", "builtin", "--calib-samples", "16", "--calib-method",
               "max", "-o", out, "-q")[0] == 0

    assert snapshot(victim.parent) == outside_before and victim.read_text() == "must survive"
    assert snapshot(planted) == planted_before  # not ours: left exactly as planted
    assert link.is_symlink()  # a link is never scratch, whatever its name
    assert not signed.exists() and not forged.exists() and not (out / "g.pt").exists()  # ours: removed, logs not followed
    assert json.loads((out / "report.json").read_text())["files"]["fused"] == "fused.pt"


# --------------------------------------------------------------------------- N7-N13: numbers


@pytest.mark.parametrize("option, value", [("--mean", "nan"), ("--std", "nan"), ("--std", "inf"), ("--std", "0"),
                                           ("--mean", "1e300")])
def test_n7_non_finite_preprocessing_options_are_one_json_error(work, option, value):
    refused_json(work, 2, "eval", work / "a.pth", "--eval-data", "builtin", option, value, "-q", says=option)


def test_n7_nan_in_a_stored_preprocessing_record_is_refused(work, exported):
    from repdeploy import load_fused, save_fused

    plain, _, _ = load_fused(REPVGG)
    record = {"input_size": 32, "resize": 32, "mean": [float("nan")], "std": [1.0], "channel_order": "L"}
    save_fused(plain, work / "nan.pt", extra={"preprocessing": record})
    refused_json(work, 2, "eval", work / "nan.pt", "--eval-data", "builtin", "-q", says="finite")
    _with_metadata(exported, work / "nan.onnx", repdeploy__preprocessing=json.dumps({**record, "std": [float("inf")]}))
    refused_json(work, 2, "eval", work / "nan.onnx", "--eval-data", "builtin", "-q", says="finite")


def test_n7_json_never_holds_nan():
    from repdeploy.cli.common import to_json
    from repdeploy.io import finite_json

    assert json.loads(to_json({"top1": float("nan"), "x": [float("inf"), 1.0]})) == {"top1": None, "x": [None, 1.0]}
    assert finite_json(np.float32("nan")) is None


def _digit_folders(root: Path, names: list[str], per_class: int = 12) -> Path:
    from PIL import Image

    digits = np.load(Path(__file__).parents[1] / "repdeploy" / "assets" / "digits.npz")
    images, labels = digits["val_images"], digits["val_labels"]
    for label, name in enumerate(names):
        if name is None:
            continue  # this class's folder is missing
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images[labels == label][:per_class]):
            Image.fromarray((image.astype(np.float32) * 255 / max(1, image.max())).astype(np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_n8_class_folders_are_matched_by_name_not_position(work):
    from repdeploy import evaluate
    from repdeploy.evaluate import open_eval_data
    from repdeploy import open_runner

    full = _digit_folders(work / "full", [str(i) for i in range(10)])
    missing = _digit_folders(work / "missing", [str(i) if i != 3 else None for i in range(10)])
    with open_runner(str(work / "a.pth"), "torch") as runner:
        acc_full = evaluate(runner, open_eval_data(runner, str(full))).top1
        acc_missing = evaluate(runner, open_eval_data(runner, str(missing))).top1
    # (the PNGs are rescaled digits, so top-1 is below the builtin figure; by position, every label after 3
    # would shift and top-1 would fall to chance)
    assert acc_full > 40 and abs(acc_missing - acc_full) < 10
    words = ["zero", "one", "two", None, "four", "five", "six", "seven", "eight", "nine"]
    _digit_folders(work / "named", words, per_class=2)
    refused(work, 2, "eval", work / "a.pth", "--eval-data", work / "named", "-q", says="matched to classes by name")


def test_n9_an_implausible_calibration_range_is_refused(work):
    from repdeploy import CalibrationError
    from repdeploy.quant.calib_cache import CalibrationCache, TensorRange

    cache = CalibrationCache(arch={}, weights_sha256="", method="max", samples=1,
                             tensors={"a": TensorRange(6.0, 0.0, 6.0), "b": TensorRange(2.0, 0.0, 2.0)})
    cache.check_plausible({"a": 5.5, "b": 4.0})  # honest: within a few x of the data
    for planted in (1e38, 1e-6):
        cache.tensors["a"].amax = planted
        with pytest.raises(CalibrationError, match="implausible"):
            cache.check_plausible({"a": 5.5, "b": 4.0})


def test_n9_n11_json_out_alone_is_written_and_an_edited_cache_is_refused(work):
    code, out, err = cli("quantize", work / "a.pth", "--calib-data", "builtin", "--calib-samples", "32",
                         "--calib-method", "max", "-o", work / "q", "--json-out", work / "q.json", "-q")
    assert code == 0, err
    assert json.loads((work / "q.json").read_text())["status"] == "PASSED"  # N11: written without --json
    assert not out.lstrip().startswith("{")
    cache = json.loads((work / "q" / "calib.json").read_text())
    name = sorted(cache["tensors"])[len(cache["tensors"]) // 2]
    cache["tensors"][name]["amax"] = 1e38
    (work / "edited.json").write_text(json.dumps(cache))
    refused(work, 2, "quantize", work / "a.pth", "--calib-cache", work / "edited.json", "-o", work / "q2", "-q",
            says="implausible")


def test_n10_concurrent_exports_take_turns(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from repdeploy import load_fused, export_onnx

    plain, _, _ = load_fused(REPVGG)
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda i: export_onnx(plain, tmp_path / f"m{i}.onnx", input_size=32), range(4)))
    assert all(p.is_file() for p in done)


@pytest.mark.parametrize("args, says", [
    (["eval", "{a}", "--eval-data", "builtin", "--resize", "1000000"], "--resize"),
    (["eval", "{w}/big.onnx", "--eval-data", "builtin"], "input_size"),
    (["train", "--arch", "RepVGG-A0", "--input-size", "2048", "-o", "{w}/t.pth"], "GiB"),
    (["compare", "{a}", "{a}", "--samples", "1000000000"], "--samples"),
    (["bench", "{a}", "--iterations", "10000000"], "--iterations"),
    (["pipeline", "{a}", "--qat", "--qat-epochs", "1000000000", "-o", "{w}/p"], "--qat-epochs"),
])
def test_n12_n13_sizes_and_counts_are_bounded_up_front(work, exported, args, says):
    _with_metadata(exported, work / "big.onnx", repdeploy__input_size="100000")
    refused(work, 2, *[a.format(a=work / "a.pth", w=work) for a in args], "-q", says=says)


# --------------------------------------------------------------------------- N14-N23: boundary


def test_n14_damaged_records_are_one_line(work, exported):
    torch.save(_fused_record(extra=[1, 2]), work / "listextra.pt")
    refused(work, 2, "eval", work / "listextra.pt", "--eval-data", "builtin", "-q", says="extra")
    _with_metadata(exported, work / "notjson.onnx", repdeploy__preprocessing="{not json")
    refused(work, 2, "eval", work / "notjson.onnx", "--eval-data", "builtin", "-q", says="not JSON")
    deep = "[" * 100_000 + "]" * 100_000
    (work / "deep.json").write_text(deep)
    refused(work, 2, "quantize", work / "a.pth", "--calib-cache", work / "deep.json", "-o", work / "q", "-q",
            says="nested")


def test_n14_fixed_batch_onnx_is_one_line(work):
    from repdeploy import load_fused, export_onnx

    plain, _, _ = load_fused(REPVGG)
    export_onnx(plain, work / "b1.onnx", input_size=32, dynamic_batch=False)
    refused(work, 2, "eval", work / "b1.onnx", "--eval-data", "builtin", "--eval-limit", "8", "-q",
            says="fixed batch of 1")
    assert cli("eval", work / "b1.onnx", "--eval-data", "builtin", "--eval-limit", "8", "--batch-size", "1",
               "-q")[0] == 0


def _interrupt(args: list, *, after: float = 0.0, when=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start `python -m repdeploy ARGS`, send Ctrl-C (SIGINT) after `after` s or once `when()` holds."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "repdeploy", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    time.sleep(after)
    while when is not None and not when() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_n15_ctrl_c_in_the_first_second_is_one_line_and_130(work, after=0.5):
    # A long command, so Ctrl-C lands while torch imports or, on a fast machine, in the command.
    np.savez(work / "d.npz", images=np.zeros((16, 16, 16), np.uint8), labels=np.arange(16) % 2)
    r = _interrupt(["train", "--arch", "RepVGG-mini", "--train-data", work / "d.npz", "--input-size", "16",
                    "--epochs", "10000", "-o", work / "t.pth", "-q"], after=after)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: interrupted") and "Traceback" not in r.stderr
    assert set(os.listdir(work)) <= {"a.pth", "d.npz", "t.pth.state"}  # a resume state is the one thing kept


def test_json_failures_are_one_json_object_on_stdout(work):
    refused_json(work, 2, "inspect", work / "missing.pth", "-q", says="does not exist")
    refused_json(work, 2, "quantize", work / "a.pth", "--calib-data", "builtin", "--max-drop", "1", "-o", work / "q",
                 "-q", says="--eval-data")
    code, out, err = cli("eval", work / "a.pth", "--batch-size", "abc", "--json")  # a usage error, click's wording
    assert code == 2 and json.loads(out) == {"error": json.loads(out)["error"], "exit_code": 2}
    assert "--batch-size" in json.loads(out)["error"] and "Usage:" in err
    code, out, _ = cli("eval", work / "a.pth", "--batch-size", "abc")
    assert code == 2 and out == ""  # without --json, stdout stays empty


def test_n18_ctrl_c_during_training_says_how_to_resume(work):
    rng = np.random.default_rng(0)
    np.savez(work / "d.npz", images=rng.integers(0, 255, (64, 16, 16), np.uint8), labels=np.arange(64) % 2)
    state = work / "t.pth.state"
    r = _interrupt(["train", "--arch", "RepVGG-mini", "--train-data", work / "d.npz", "--input-size", "16",
                    "--epochs", "10000", "--batch-size", "8", "--checkpoint-every", "1", "-o", work / "t.pth", "-q"],
                   when=state.exists)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 130 and len(lines) == 1, r.stderr
    assert "--resume" in lines[0] and str(state) in lines[0] and "left as they were" not in lines[0]
    assert not (work / "t.pth").exists()


def test_n16_api_arguments_are_checked(work):
    import repdeploy
    from repdeploy import InputError, open_runner

    with open_runner(str(work / "a.pth"), "torch") as runner:
        assert repdeploy.evaluate(runner, "builtin").top1 > 80  # a source is opened for the runner
    with pytest.raises(InputError, match="Runner"):
        repdeploy.evaluate("a.pth", "builtin")
    with pytest.raises(InputError, match="nn.Module"):
        repdeploy.export_onnx(None, work / "m.onnx", input_size=32)
    with pytest.raises(InputError, match="--max-drop"):
        repdeploy.quantize(str(work / "a.pth"), calib_data="builtin", eval_data="builtin", max_drop="1",
                           output_dir=work / "q")
    assert sorted(os.listdir(work)) == ["a.pth"]


def test_n19_bench_says_an_unknown_size_once_with_a_cli_fix(work, exported):
    from repdeploy.metadata import META_INPUT_SIZE, META_PREPROCESSING

    _with_metadata(exported, work / "nosize.onnx", drop=META_INPUT_SIZE)
    _with_metadata(work / "nosize.onnx", work / "nosize.onnx", drop=META_PREPROCESSING)
    line = refused(work, 2, "bench", work / "nosize.onnx", "--batches", "1,2", "--warmup", "0", "--duration", "0",
                   "--iterations", "2", "-q", says="input size unknown")
    assert "--input-size" in line and "pass image_size" not in line


def test_n20_the_top_level_report_set_is_committed_whole(tmp_path, monkeypatch):
    from repdeploy.report import html as report_html
    from repdeploy.pipeline.run import _commit_report
    from repdeploy.pipeline import PipelineSettings

    for ext in ("json", "csv", "md", "html"):
        (tmp_path / f"report.{ext}").write_text(json.dumps({"tool": "repdeploy", "models": []}) if ext == "json"
                                                else f"old {ext}")
    before = snapshot(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("repdeploy.report.render_html", full_disk)
    with pytest.raises(OSError):
        _commit_report([], tmp_path, PipelineSettings(data="builtin", calib_data=None), {})
    assert snapshot(tmp_path) == before  # the old set, whole; no scratch left
    monkeypatch.setattr("repdeploy.report.render_html", report_html.render_html)
    paths = _commit_report([], tmp_path, PipelineSettings(data="builtin", calib_data=None), {})
    assert all(Path(p).read_text() != f"old {ext}" for ext, p in paths.to_dict().items())
    assert sorted(os.listdir(tmp_path)) == [f"report.{e}" for e in ("csv", "html", "json", "md")]


@pytest.mark.parametrize("command", [
    ["train", "--arch", "RepVGG-mini", "--train-data", "{w}/bad.npz", "-o", "{w}/new/deeper/t.pth"],
    ["qat", "{a}", "--train-data", "{w}/bad.npz", "-o", "{w}/newq/deeper"],
])
def test_n21_a_failed_command_leaves_no_new_empty_directory(work, command):
    np.savez(work / "bad.npz", images=np.zeros((4,), np.uint8))
    refused(work, 2, *[c.format(a=work / "a.pth", w=work) for c in command], "-q", says="bad.npz")


def test_n23_refusing_a_pickled_scales_or_state_file_gives_no_unsafe_advice(work):
    import pathlib

    torch.save({"stage1.0.scale_conv": pathlib.PurePosixPath("x")}, work / "evil_scales.pth")
    np.savez(work / "d.npz", images=np.zeros((8, 16, 16), np.uint8), labels=np.arange(8) % 2)
    line = refused(work, 2, "train", "--arch", "RepOpt-VGG-mini", "--optimizer", "repopt-sgd", "--scales",
                   work / "evil_scales.pth", "--train-data", work / "d.npz", "-o", work / "t.pth", "-q",
                   says="arbitrary unpickling")
    torch.save({"format": pathlib.PurePosixPath("x")}, work / "t.pth.state")
    line2 = refused(work, 2, "train", "--arch", "RepVGG-mini", "--train-data", work / "d.npz", "--input-size", "16",
                    "--resume", "-o", work / "t.pth", "-q", says="training state")
    for text in (line, line2):
        assert "likely succeed" not in text and "weights_only=False" not in text and "trust" not in text.lower()


# --------------------------------------------------------------------------- integrity without a zip CRC


@pytest.mark.parametrize("fmt", ["safetensors", "legacy"])
def test_checkpoints_without_a_crc_are_checked_against_their_digest(work, fmt):
    import hashlib as hl

    from safetensors.torch import save_file

    sd = torch.load(REPVGG, weights_only=True)
    path = work / f"m.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    digest = work / (path.name + ".sha256")
    digest.write_text(f"{hl.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    assert cli("inspect", path, "-q")[0] == 0  # intact: accepted
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one low bit of one weight: no structure breaks, the fusion check would pass
    path.write_bytes(bytes(data))
    refused(work, 2, "inspect", path, "-q", says="does not match its digest")
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated: refused by structure even without a digest
    digest.unlink()
    refused(work, 2, "inspect", path, "-q", says="corrupt")


@pytest.mark.parametrize("command, onto", [
    (["fuse", "{a}", "-o", "{t}"], "notes.txt"),
    (["export", "{a}", "-o", "{t}"], "notes.txt"),
    (["train", "--arch", "RepVGG-mini", "-o", "{t}"], "notes.txt"),
    (["inspect", "{a}", "--json-out", "{t}"], "photo.png"),
])
def test_a_named_output_of_another_kind_is_never_replaced(work, command, onto):
    (work / onto).write_bytes(b"\x89PNG the user's photo" if onto.endswith(".png") else b"the user's notes\n")
    refused(work, 2, *[c.format(a=work / "a.pth", t=work / onto) for c in command], "-q", says="is not a")
