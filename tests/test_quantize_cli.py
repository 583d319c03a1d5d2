"""`repdeploy quantize` end to end: outputs, report, cache reuse, targets, gates and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import trained_like
from helpers_quant import fused, with_fitted_head
from repdeploy.checkpoints import save_fused
from repdeploy.cli import main
from repdeploy.zoo import ZOO_DIR

OUTPUTS = {"fused.pt", "model_fp32.onnx", "calib.json", "report.json"}
FAST = ["--calib-method", "max", "--calib-samples", "64"]


def run(*args: str):
    return CliRunner().invoke(main, ["quantize", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An official-format RepVGG-mini train checkpoint (randomized BN, as trained)."""
    path = tmp_path_factory.mktemp("ckpt") / "repvgg_mini.pth"
    torch.save(trained_like("RepVGG-mini").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def first_run(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    result = run(ckpt, "--int8", "--calib-data", "builtin", *FAST, "--eval-data", "builtin",
                 "--eval-limit", "200", "-o", out, "--json")
    return result, out


def files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} if d.exists() else set()


def test_quantize_writes_a_verified_int8_model(first_run):
    result, out = first_run
    assert result.exit_code == 0, result.output
    assert files(out) == OUTPUTS | {"model_int8_ort.onnx"}  # and no staging leftovers
    report = json.loads(result.stdout)
    on_disk = json.loads((out / "report.json").read_text())
    assert report["model"] == on_disk["model"] == "RepVGG-mini"
    assert (report["calib_method"], report["calib_samples"], report["target"]) == ("max", 64, "ort")
    assert report["sqnr_db"] > 20 and report["top1_agreement"] >= 0.95
    assert report["ort_parity"]["passed"] and report["ort_parity"]["top1_agreement"] >= 0.99
    assert report["ort_fused_nodes"]["QLinearConv"] == 7
    assert report["eval_images"] == 200
    # Calibration reports its stages; they add up to no more than the whole calibration step.
    t = on_disk["timings"]
    stages = [t[f"calibration_{k}"] for k in ("data_s", "forward_s", "collect_wait_s", "search_s")]
    assert all(v >= 0 for v in stages) and t["calibration_collect_overlapped_s"] >= 0  # rounded to ms
    assert sum(stages) <= t["calibration_s"] + 0.01
    for key in ("fp32_top1", "int8_top1", "top1_drop", "fp32_top5", "int8_top5"):
        assert isinstance(report[key], float), key
    assert report["top1_drop"] == pytest.approx(report["fp32_top1"] - report["int8_top1"])
    layers = {r["layer"]: r for r in report["layers"]}
    assert list(layers)[0] == "stage0.conv" and "linear" in layers
    conv = layers["stage1.0.conv"]
    assert 0 < conv["centre_share"] < 1 and conv["weight_std"] > 0 and conv["sqnr_db"] is not None
    # The first layer sees the image in both passes: its own error is all the error there is
    # (the default estimates it on half the sample's images: near, not equal).
    assert layers["stage0.conv"]["own_sqnr_db"] == pytest.approx(layers["stage0.conv"]["sqnr_db"], abs=0.5)
    assert conv["isolated_sqnr_db"] is None and report["layers_summary"]["ranked_by"] == "own_sqnr_db"


def test_cache_reuse_gives_identical_int8_onnx(first_run, ckpt, tmp_path):
    _, out1 = first_run
    result = run(ckpt, "--int8", "--calib-cache", out1 / "calib.json", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model_int8_ort.onnx").read_bytes() == (out1 / "model_int8_ort.onnx").read_bytes()
    assert json.loads(result.stdout)["calib_cache_used"] == str(out1 / "calib.json")


def test_tensorrt_target(first_run, ckpt, tmp_path):
    _, out1 = first_run
    result = run(ckpt, "--int8", "--target", "tensorrt", "--calib-cache", out1 / "calib.json", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert "not meant for ORT" in result.output or "ONNX Runtime runs it unfused" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tensorrt_rule_violations"] == []
    assert "QLinearConv" not in report["ort_fused_nodes"]
    assert files(tmp_path) == OUTPUTS | {"model_int8_tensorrt.onnx"}


@pytest.fixture(scope="module")
def fragile(tmp_path_factory) -> Path:
    """Random features with a fitted classifier: accurate in float, fragile in int8."""
    model = tmp_path_factory.mktemp("fragile") / "fragile.pt"
    save_fused(with_fitted_head(fused("RepVGG-mini")), model)
    return model


def test_accuracy_gate_exits_3_and_keeps_the_report(fragile, tmp_path):
    model = fragile
    out = tmp_path / "out"
    result = run(model, "--int8", "--calib-data", "builtin", *FAST, "--eval-data", "builtin",
                 "--max-drop", "0.5", "-o", out)
    report = json.loads((out / "report.json").read_text())
    assert report["fp32_top1"] > 50  # a real classifier, so the drop is meaningful
    assert report["top1_drop"] > 0.5
    assert result.exit_code == 3, result.output
    assert report["accuracy_gate"] == {"max_drop": 0.5, "passed": False}
    assert "dropped" in result.output and "--max-drop" in result.output


def test_fallback_leaves_sensitive_layers_in_float(fragile, tmp_path, monkeypatch):
    import repdeploy.quant.sensitivity as sensitivity

    seen = []
    real = sensitivity.restore_sensitive_layers

    def recording(plain, qnet, images, labels, **kwargs):  # the real selector, with its inputs kept
        seen.append(images.clone())
        return real(plain, qnet, images, labels, **kwargs)

    monkeypatch.setattr(sensitivity, "restore_sensitive_layers", recording)
    result = run(fragile, "--int8", "--calib-data", "builtin", *FAST, "--eval-data", "builtin",
                 "--max-drop", "2", "--fallback-float", "-o", tmp_path, "--json")
    report = json.loads((tmp_path / "report.json").read_text())
    fb = report["fallback"]
    # The selector saw a holdout of the calibration source's train split, and no eval image.
    assert (fb["holdout_source"], fb["holdout_split"], fb["holdout_images"]) == ("builtin", "train", 256)
    (chosen_on,) = seen
    assert len(chosen_on) == 256
    from repdeploy.data import open_dataset

    eval_images = torch.cat([x for x, _ in open_dataset("builtin", split="val", image_size=32).batches(100)])
    eval_rows = {row.numpy().tobytes() for row in eval_images}
    assert not any(row.numpy().tobytes() in eval_rows for row in chosen_on)
    assert report["eval_images"] == 400 and "calibration holdout of 256 images" not in result.output  # --json
    assert fb["int8_top1_before"] < fb["fp32_top1"] - 2  # the gate alone would have failed
    assert sorted(report["float_layers"]) == sorted(fb["float_layers"]) and fb["float_layers"]
    assert fb["met"] and fb["steps"][-1]["int8_top1"] == fb["int8_top1_after"]
    # The eval accuracy is measured after the choice, on images the selector never saw, and the
    # gate judges that figure. This model's head was fitted on the train split the holdout comes
    # from, so the choice does not carry over: scoring on the eval set (as before) would have
    # reported the drop met; measured honestly it is not, and the exit code says so.
    holdout_drop = fb["fp32_top1"] - fb["int8_top1_after"]
    assert holdout_drop <= 2 < report["top1_drop"]
    assert result.exit_code == 3 and report["status"] == "FAILED" and not report["accuracy_gate"]["passed"]
    convs_in_float = sum(1 for layer in fb["float_layers"] if layer != "linear")
    assert report["ort_fused_nodes"].get("QLinearConv", 0) <= 7 - convs_in_float


def _npy(path: Path, images: np.ndarray) -> Path:
    np.save(path, images)
    return path


@pytest.mark.parametrize("case", ["no-data", "empty-folder", "all-zero", "nan", "other-model-cache", "bad-method"])
def test_bad_inputs_fail_cleanly(case, ckpt, first_run, tmp_path):
    out = tmp_path / "out"
    args: list = [ckpt, "--int8", *FAST, "-o", out]
    if case == "no-data":
        expect = "no calibration data"
    elif case == "empty-folder":
        (tmp_path / "empty").mkdir()
        args += ["--calib-data", tmp_path / "empty"]
        expect = "empty"
    elif case == "all-zero":
        args += ["--calib-data", _npy(tmp_path / "zeros.npy", np.zeros((16, 32, 32, 3), np.uint8))]
        expect = "all identical"
    elif case == "nan":
        x = np.random.default_rng(0).random((16, 3, 32, 32)).astype(np.float32)
        x[3, 0, 5, 5] = np.nan
        args += ["--calib-data", _npy(tmp_path / "nan.npy", x)]
        expect = "NaN"
    elif case == "other-model-cache":
        other = tmp_path / "other.pth"
        torch.save(trained_like("RepOpt-VGG-mini", "target").state_dict(), other)
        args = [other, "--int8", "--calib-cache", first_run[1] / "calib.json", "-o", out]
        expect = "made for RepVGG-mini"
    else:
        args += ["--calib-data", "builtin", "--calib-method", "kl"]
        expect = "Invalid value"
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert expect in result.output, result.output
    assert files(out) == set()  # nothing partial, not even a staging directory


def test_unwritable_output_is_refused_before_work(ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(ckpt, "--int8", "--calib-data", "builtin", *FAST, "-o", blocker / "sub")
    assert result.exit_code == 2 and "not writable" in result.output


# ------------------------------------------------------------------------------ shipped zoo

ZOO_INDEX = ZOO_DIR / "zoo.json"
needs_zoo = pytest.mark.skipif(not ZOO_INDEX.exists(), reason="the trained zoo (issue 3) is not shipped yet")
# Bounds on the built-in val split (400 images): a trained small model keeps >= 95 % of its
# FP32 decisions and loses at most 3 top-1 points with entropy calibration.
ZOO_MIN_AGREEMENT = 0.95
ZOO_MAX_DROP = 3.0


@needs_zoo
def test_zoo_int8_agreement_and_drop(tmp_path, monkeypatch):
    import repdeploy.zoo

    small = [e for e in repdeploy.zoo.builtin_zoo() if e.input_size <= 32]  # the 96-px A0 is the demo's speed model
    monkeypatch.setattr(repdeploy.zoo, "builtin_zoo", lambda zoo="default": small)
    result = run("--int8", "--calib-samples", "128", "--eval-data", "builtin", "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    reports = reports.get("models", [reports])
    by_family = {}
    for r in reports:
        assert r["top1_agreement"] >= ZOO_MIN_AGREEMENT, r["model"]
        assert r["top1_drop"] <= ZOO_MAX_DROP, r["model"]
        by_family.setdefault(r["arch"]["family"], []).append(r["top1_drop"])
    assert {"repvgg", "repopt"} <= set(by_family)
    # The RepOpt-VGG claim: it quantizes no worse than RepVGG (half a point of slack for 400 images).
    assert min(by_family["repopt"]) <= max(by_family["repvgg"]) + 0.5


def test_preprocessing_statistics_can_be_overridden(ckpt, tmp_path):
    result = run(ckpt, "--int8", "--calib-data", "builtin", *FAST, "--mean", "0.5", "--std", "0.25", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "calib.json").read_text())["data"]
    assert data["mean"] == [0.5] * 3 and data["std"] == [0.25] * 3
    bad = run(ckpt, "--int8", "--calib-data", "builtin", "--mean", "x", "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "--mean" in bad.output


def test_image_folders_for_calibration_and_evaluation(tmp_path):
    """The 'done when' command: a zoo checkpoint with --calib-data DIR --eval-data DIR (PNG files)."""
    from PIL import Image

    digits = np.load(ZOO_DIR.parent / "digits.npz")
    for split, images, labels in (("train", digits["train_images"][:40], digits["train_labels"][:40]),
                                  ("val", digits["val_images"][:40], digits["val_labels"][:40])):
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = tmp_path / split / f"{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
    for digit in range(10):  # every class folder must exist for labels to match the model's classes
        (tmp_path / "val" / str(digit)).mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / str(digit)).mkdir(parents=True, exist_ok=True)
    ckpt = ZOO_DIR / "repoptvgg_mini.pth"
    if not ckpt.exists():
        pytest.skip("the trained zoo (issue 3) is not shipped yet")
    out = tmp_path / "out"
    result = run(ckpt, "--int8", "--calib-data", tmp_path / "train", *FAST, "--eval-data", tmp_path / "val",
                 "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calib_data"]["source"] == str(tmp_path / "train") and report["calib_samples"] == 40
    assert report["eval_images"] == 40 and report["eval_data"] == str(tmp_path / "val")
    assert report["top1_agreement"] >= 0.9
