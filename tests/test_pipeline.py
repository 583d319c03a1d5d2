"""The pipeline end to end on two small models plus a broken file, and the accuracy gate."""

import json
import math
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

from repdeploy.checkpoints import load_fused, save_fused
from repdeploy.recorded import preprocessing_of
from repdeploy.pipeline import ModelRow, PipelineResult, PipelineSettings, run_pipeline
from repdeploy.pipeline import judge_row as _gate
from repdeploy.cli.outcome import pipeline_exit
from repdeploy.zoo import builtin_zoo, zoo_entry

FAST = dict(calib_samples=32, eval_limit=120, warmup=0.0, duration=0.0, iterations=3, max_duration=0.0)
RUN_FILES = {"manifest.json", "fused.pt", "model_fp32.onnx", "model_int8_ort.onnx", "calib.json", "report.json"}
ROW_FIELDS = ("fp32_top1", "fp32_top5", "int8_top1", "int8_top5", "top1_drop", "top1_agreement", "sqnr_db",
              "fp32_ms", "int8_ms", "speedup")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The two shipped zoo models with a broken file between them."""
    zoo = {e.name: e.file for e in builtin_zoo()}
    broken = tmp_path_factory.mktemp("ckpts") / "broken.pth"
    broken.write_bytes(b"\x00 this is not a checkpoint")
    return [zoo["repvgg_mini"], broken, zoo["repoptvgg_mini"]]


@pytest.fixture(scope="module")
def result(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_pipeline(checkpoints, output_dir=out, max_drop=100.0, command="test", **FAST)


def test_every_artifact_and_field_for_the_good_models(result):
    by_name = {r.name: r for r in result.rows}
    assert list(by_name) == ["repvgg_mini", "broken", "repoptvgg_mini"]
    for name, arch in (("repvgg_mini", "RepVGG-mini"), ("repoptvgg_mini", "RepOpt-VGG-mini")):
        row = by_name[name]
        assert row.status == "PASSED", row.error
        assert row.arch == arch
        assert row.fp32_top1 > 90  # trained zoo models on the first 120 val images
        run = result.output_dir / name
        assert RUN_FILES <= {p.name for p in run.iterdir()}
        assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no scratch or partial files left
        record = json.loads((run / "report.json").read_text())
        for key in ROW_FIELDS:
            assert isinstance(record[key], float), key
        assert record["top1_drop"] == pytest.approx(record["fp32_top1"] - record["int8_top1"])
        # FP32 time / INT8 time as each fresh session paired them: their geometric mean, inside its interval
        sessions = record["speedup_sessions"]
        assert record["speedup"] == pytest.approx(math.prod(sessions) ** (1 / len(sessions)))
        assert record["speedup_ci"][0] <= record["speedup"] <= record["speedup_ci"][1]
        assert [b["precision"] for b in record["bench"]] == ["fp32", "int8"] and record["bench"][0]["stats"]["count"] >= 3
        # both sides timed under one ORT setting: the INT8 file's spin bound reaches the FP32 session too
        assert [b["runner"]["session_config"] for b in record["bench"]] == [
            {"session.intra_op.spin_duration_us": "100"}] * 2
        assert record["diagnostics"]["layers"] and "sqnr_db" in record["diagnostics"]["layers"][0]
        # one preprocessing record in every artifact, the one the model was calibrated and evaluated with
        records = {f: preprocessing_of(run / f) for f in ("fused.pt", "calib.json", "report.json", "model_fp32.onnx",
                                                          "model_int8_ort.onnx")}
        assert len(set(records.values())) == 1 and records["fused.pt"].mean == pytest.approx((0.3058,) * 3)
        assert record["parity"] == "ok" and record["eval_images"] == 120
        # the flag and the warning every report format shows are one fact
        assert record["latency_noisy"] == any(w["flag"] == "noisy" for w in record["warnings"])
        assert [v["check"] for v in record["verdicts"]] == ["fusion", "ort_fp32", "ort_int8", "int8_graph"]
        lo, hi = record["speedup_ci"]
        assert lo <= record["speedup"] <= hi
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["command"] == "test" and len(manifest["input"]["sha256"]) == 64
        assert manifest["detected"]["variant"] == arch and manifest["settings"]["max_drop"] == 100.0
        assert set(manifest["timings"]) == {"load", "export", "quantize", "evaluate", "benchmark"}


def test_broken_checkpoint_is_reported_and_others_finish(result):
    broken = next(r for r in result.rows if r.name == "broken")
    assert broken.status == "ERROR" and broken.failed_stage == "load"
    assert "broken.pth" in broken.error and broken.exit_code == 2
    assert {p.name for p in (result.output_dir / "broken").iterdir()} == {"manifest.json", "report.json"}
    assert result.status == "ERROR"
    assert pipeline_exit(result.rows, None)[0] == 2  # no gate failure: the first error's code


def test_report_files_and_html(result):
    doc = json.loads(result.report.json.read_text())
    assert [m["name"] for m in doc["models"]] == ["repvgg_mini", "broken", "repoptvgg_mini"]
    assert doc["environment"]["onnxruntime"] and doc["settings"]["engine"] == "ort"
    assert result.report.csv.read_text().count("\n") == 4
    assert "| broken | - | ERROR |" in result.report.md.read_text()

    class Page(HTMLParser):
        images, cells = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.cells.append(data.strip())

    page = Page()
    page.feed(result.report.html.read_text())
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(page.images) == 4  # drop vs speed-up, latency, and per-layer diagnostics for each good model
    assert "repoptvgg_mini" in page.cells and "ERROR" in page.cells


def test_gate_marks_failed_and_exit_code_3():
    s = PipelineSettings(max_drop=1.0)
    over = ModelRow("a", "a.pth", "a", top1_drop=1.5)
    under = ModelRow("b", "b.pth", "b", top1_drop=1.0)
    _gate(over, s)
    _gate(under, s)
    assert over.status == "FAILED" and "1.50 points > --max-drop 1" in over.error
    assert under.status == "PASSED" and under.error is None
    broken = ModelRow("c", "c.pth", "c", status="ERROR", exit_code=2)
    assert pipeline_exit([under, broken], 1.0)[0] == 2
    assert pipeline_exit([under, broken, over], 1.0) == (3, "accuracy gate failed for a (top-1 drop > 1 points)")
    assert pipeline_exit([under], 1.0) == (0, None)
    assert PipelineResult(None, [under, broken, over], None, s).status == "FAILED"
    assert PipelineResult(None, [under], None, s).status == "PASSED"


def test_builtin_zoo_is_what_make_demo_runs():
    entries = builtin_zoo()
    assert {e.arch for e in entries} >= {"RepVGG-mini", "RepOpt-VGG-mini", "RepVGG-A0"}
    assert all(e.file.is_file() for e in entries)
    # the minis at their 32 px; the speed model at real A0 widths and 96 px, where INT8 pays (issue 18)
    assert {e.input_size for e in entries if e.arch != "RepVGG-A0"} == {32}
    assert [e.input_size for e in entries if e.arch == "RepVGG-A0"] == [96]
    assert zoo_entry("repvgg").name == "repvgg_mini"  # qat's and the examples' default stays the small model


def outlier_model(path):
    """The zoo RepVGG-mini with one stage0 channel scaled x1000 and stage1.0 compensating.

    ReLU(1000 z) = 1000 ReLU(z), so FP32 computes the same function, but a per-tensor INT8
    activation range calibrated by max is then 1000x too wide for every other channel:
    a deterministic, large INT8 accuracy drop.
    """
    plain, _, _ = load_fused(next(e.file for e in builtin_zoo() if e.name == "repvgg_mini"))
    with torch.no_grad():
        plain.stage0.conv.weight[0] *= 1000
        plain.stage0.conv.bias[0] *= 1000
        first = plain.stage1[0].conv
        first.weight[:, 0] /= 1000
    return save_fused(plain, path)


def test_cli_gate_fails_exit_3_after_writing_everything(tmp_path):
    model = outlier_model(tmp_path / "outlier.pt")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "repdeploy", "pipeline", str(model), "-o", str(out), "--max-drop", "1",
                        "--calib-method", "max", "--calib-samples", "32", "--eval-limit", "120", "--warmup", "0",
                        "--duration", "0", "--iterations", "3", "--max-duration", "0"], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "accuracy gate failed for outlier" in r.stderr
    row = json.loads((out / "report.json").read_text())["models"][0]
    assert row["status"] == "FAILED" and row["fp32_top1"] > 90 and row["top1_drop"] > 1
    assert RUN_FILES <= {p.name for p in (out / "outlier").iterdir()}
    assert (out / "report.html").is_file() and (out / "report.csv").is_file()
    assert "FP32 top-1 %" in r.stdout and "FAILED" in r.stdout  # the plain table (stdout is not a tty)
    assert "outlier: quantize" in r.stderr  # one progress line per stage


def test_a_failed_rerun_never_replaces_a_good_run_directory(result, tmp_path):
    # issue 21 N4: a file with the good model's name that now fails to load: the old results stay whole
    impostor = tmp_path / "repvgg_mini.pth"
    impostor.write_bytes(b"\x00 truncated")
    run = result.output_dir / "repvgg_mini"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    again = run_pipeline([impostor], output_dir=result.output_dir, command="rerun", **FAST)
    assert again.rows[0].status == "ERROR" and "previous results" in again.rows[0].error
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_calibration_never_silently_uses_the_evaluation_images(tmp_path):
    import numpy as np

    from repdeploy.pipeline import calibration_source as _calibration_source

    (tmp_path / "flat" / "a").mkdir(parents=True)
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    np.savez(tmp_path / "val_only.npz", images=np.zeros((2, 8, 8)), labels=np.zeros(2))
    np.savez(tmp_path / "both.npz", train_images=np.zeros((2, 8, 8)), val_images=np.zeros((2, 8, 8)))
    cases = {"builtin": False, str(tmp_path / "flat"): True, str(tmp_path / "split"): False,
             str(tmp_path / "val_only.npz"): True, str(tmp_path / "both.npz"): False}
    for data, on_eval in cases.items():
        assert _calibration_source(PipelineSettings(data=data)) == (data, on_eval), data
    assert _calibration_source(PipelineSettings(data=str(tmp_path / "flat"), calib_data="calib/")) == ("calib/", False)


def test_pipeline_fallback_float_chooses_on_a_calibration_holdout(tmp_path):
    model = outlier_model(tmp_path / "outlier.pt")
    result = run_pipeline([model], output_dir=tmp_path / "out", max_drop=1.0, fallback_float=True,
                          calib_method="max", command="test", **FAST)
    row = result.rows[0]
    fb = row.calibration["fallback"]
    assert (fb["holdout_source"], fb["holdout_split"], fb["holdout_images"]) == ("builtin", "train", 256)
    assert fb["float_layers"] and row.diagnostics["float_layers"] == fb["float_layers"]
    assert fb["int8_top1_before"] < fb["fp32_top1"] - 1  # without float layers the drop is over the gate
    # the table's figures are measured after the choice, on the eval images (120 here)
    assert row.eval_images == 120 and row.top1_drop is not None
    assert row.status == ("PASSED" if row.top1_drop <= 1.0 else "FAILED"), row.error
    with pytest.raises(Exception, match="--fallback-float needs --max-drop"):
        run_pipeline([model], output_dir=tmp_path / "x", fallback_float=True, **FAST)


def test_label_free_fidelity_gate_marks_failed_and_exit_code_3():
    s = PipelineSettings(min_sqnr=20.0, min_agreement=0.9)
    low = ModelRow("a", "a.pth", "a", sqnr_db=15.0, top1_agreement=95.0)
    disagreeing = ModelRow("b", "b.pth", "b", sqnr_db=25.0, top1_agreement=80.0)
    fine = ModelRow("c", "c.pth", "c", sqnr_db=25.0, top1_agreement=95.0)
    for row in (low, disagreeing, fine):
        _gate(row, s)
    assert low.status == "FAILED" and low.exit_code == 3 and "15.00 dB < --min-sqnr 20" in low.error
    assert disagreeing.status == "FAILED" and "80.0% < --min-agreement 90.0%" in disagreeing.error
    assert fine.status == "PASSED" and pipeline_exit([fine, low], None)[0] == 3
