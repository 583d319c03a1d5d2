"""A zoo entry fed at another size than its checkpoint's variant: every stage, QAT included, works
at the entry's size (issue 18: PTQ ran at the entry's size while QAT reloaded the checkpoint at
its variant's, so its calibration cache was refused as made for another architecture)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx

import repdeploy.zoo as zoo_module
from repdeploy.pipeline import run_pipeline
from repdeploy.zoo import builtin_zoo

ENTRY_SIZE = 40  # the mini's variant says 32


def small_digits(path: Path, n: int = 96) -> Path:
    """The built-in digits cut to n images per split, so one QAT epoch is quick."""
    from repdeploy.data.builtin import builtin_path

    with np.load(builtin_path()) as d:
        arrays = {k: d[k][:n] if k.startswith(("train_", "val_")) else d[k] for k in d.files}
    np.savez(path, **arrays)
    return path


def test_zoo_entry_at_another_input_size_runs_every_stage_at_that_size(tmp_path, monkeypatch):
    mini = next(e for e in builtin_zoo() if e.name == "repvgg_mini")
    zoo_dir = tmp_path / "zoo"
    zoo_dir.mkdir()
    shutil.copy(mini.file, zoo_dir / mini.file.name)
    (zoo_dir / "zoo.json").write_text(json.dumps({"models": [
        {"name": "mini_40", "file": mini.file.name, "arch": mini.arch, "family": "repvgg",
         "input_size": ENTRY_SIZE}]}))
    monkeypatch.setattr(zoo_module, "ZOO_DIR", zoo_dir)
    data = small_digits(tmp_path / "digits.npz")

    # (an explicit --qat-lr skips the sharpness estimate, and diagnostics are off: only the sizes matter here)
    result = run_pipeline(output_dir=tmp_path / "out", data=str(data), qat=True, qat_epochs=1, qat_lr=0.01,
                          calib_samples=16, eval_limit=32, warmup=0.0, duration=0.0, iterations=3, max_duration=0.0,
                          bench_sessions=1, diagnostics="off", command="test")
    row = result.rows[0]
    assert row.status == "PASSED", (row.failed_stage, row.error)
    run_dir = Path(row.run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["input_size"] == ENTRY_SIZE
    ptq = json.loads((run_dir / "report.json").read_text())["ptq"]
    assert ptq["arch"]["input_size"] == ENTRY_SIZE and ptq["preprocessing"]["input_size"] == ENTRY_SIZE
    qat_report = json.loads((run_dir / "qat_report.json").read_text())
    assert qat_report["preprocessing"]["input_size"] == ENTRY_SIZE
    # Every ONNX records the size it was calibrated and verified at.
    for name in ("model_fp32.onnx", "model_int8_ort.onnx", "qat_int8_ort.onnx"):
        props = {p.key: p.value for p in onnx.load(str(run_dir / name), load_external_data=False).metadata_props}
        prep = next(json.loads(v) for k, v in props.items() if "preprocess" in k)
        assert prep["input_size"] == ENTRY_SIZE, name
