"""Verification gates: a failed hand-off is FAILED everywhere and exits 1; --allow-mismatch says so."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from repdeploy import verify
from repdeploy.cli import main
from repdeploy.zoo import builtin_zoo

ZOO = {e.name: e.file for e in builtin_zoo()}
FAST_PIPELINE = ["--calib-samples", "32", "--eval-limit", "120", "--warmup", "0", "--duration", "0",
                 "--iterations", "3", "--max-duration", "0"]


def test_judge_logits_judges_relative_difference_and_agreement():
    ref = np.array([[4.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
    same = verify.judge_logits("x", ref, ref + 1e-6, reference_name="a", candidate_name="b", tolerance=1e-4)
    assert same.passed and same.max_rel_diff == pytest.approx(1e-6 / 4.0) and same.top1_agreement == 1.0
    flipped = ref.copy()
    flipped[1] = [0.0, 1.0, 2.0]  # 1/4 relative, and the second row's class changes
    bad = verify.judge_logits("x", ref, flipped, reference_name="a", candidate_name="b", tolerance=0.5,
                                min_agreement=0.99)
    assert not bad.passed and bad.top1_agreement == 0.5 and "50.0% < 99%" in bad.line() and "FAILED" in bad.line()
    # one flipped value among many exact ones: the max rules a max-based figure, not the SQNR
    big = np.tile(ref, (500, 1))
    one_flip = big.copy()
    one_flip[7, 1] += 0.2
    sq = verify.judge_logits("x", big, one_flip, reference_name="a", candidate_name="b", min_sqnr_db=30.0)
    assert sq.passed and sq.max_rel_diff == pytest.approx(0.05) and sq.sqnr_db > 50
    scaled = verify.judge_logits("x", big, 1.5 * big, reference_name="a", candidate_name="b", min_sqnr_db=30.0)
    assert not scaled.passed and scaled.sqnr_db == pytest.approx(20 * np.log10(2), abs=1e-6)  # a wrong scale
    assert verify.parity_cell([same.to_dict(), bad.to_dict()]) == "MISMATCH (x)"
    assert verify.parity_cell([same.to_dict()]) == "ok" and verify.parity_cell([]) == "-"
    assert verify.parity_cell([bad.to_dict()], allowed=True) == "MISMATCH (x) allowed"


def test_sanity_warnings():
    flags = lambda **kw: [w["flag"] for w in verify.sanity_warnings(**kw)]  # noqa: E731
    assert flags(fp32_top1=10.0, num_classes=10, eval_images=18, calib_on_eval=True) == [
        "at/below chance", "18 eval images", "calibrated on eval"]
    assert flags(fp32_top1=10.1, num_classes=10, eval_images=100, calib_on_eval=False) == []
    assert flags(fp32_top1=0.0, num_classes=1000, eval_images=None, calib_on_eval=False) == ["at/below chance"]


@pytest.fixture
def strict_int8_parity(monkeypatch):
    """An unreachable SQNR bound on ORT INT8 vs torch fake-quant: the real, small rounding differences
    between ORT's integer kernels and torch's float fake-quant then fail the check, as a broken export would."""
    monkeypatch.setattr(verify, "INT8_ORT_MIN_SQNR_DB", 200.0)


def test_quantize_mismatch_exits_1_after_writing_everything(strict_int8_parity, tmp_path):
    args = ["quantize", str(ZOO["repvgg_mini"]), "--calib-method", "max", "--calib-samples", "32",
            "--eval-data", "builtin", "--eval-limit", "64"]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a")], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "error: RepVGG-mini: ort_int8 (ORT INT8 vs torch fake-quant)" in r.output and "--allow-mismatch" in r.output
    assert "status      FAILED: ort_int8" in r.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["status"] == "FAILED" and not report["allow_mismatch"]
    assert [v["check"] for v in report["verdicts"]] == ["fusion", "ort_fp32", "ort_int8"]
    assert [v["passed"] for v in report["verdicts"]] == [True, True, False]
    assert {"model_int8_ort.onnx", "calib.json", "fused.pt"} <= {p.name for p in (tmp_path / "a").iterdir()}
    # 64 images: flagged beside the figures
    assert [w["flag"] for w in report["warnings"]] == ["64 eval images"]

    r = CliRunner().invoke(main, [*args, "--allow-mismatch", "-o", str(tmp_path / "b")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "--allow-mismatch kept the model anyway" in r.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["status"] == "PASSED" and report["allow_mismatch"] and not report["verdicts"][-1]["passed"]


def test_pipeline_mismatch_is_failed_in_every_format_and_exit_1(strict_int8_parity, tmp_path):
    out = tmp_path / "strict"
    r = CliRunner().invoke(main, ["pipeline", str(ZOO["repvgg_mini"]), "-o", str(out), *FAST_PIPELINE],
                           catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "verification failed for repvgg_mini" in r.output
    row = json.loads((out / "report.json").read_text())["models"][0]
    assert row["status"] == "FAILED" and row["exit_code"] == 1 and row["parity"] == "MISMATCH (ort_int8)"
    assert row["error"].startswith("verification failed: ort_int8")
    assert row["eval_images"] == 120 and row["fp32_top1"] > 90  # every figure still written
    assert json.loads((out / "repvgg_mini" / "report.json").read_text())["status"] == "FAILED"
    md = (out / "report.md").read_text()
    assert "| repvgg_mini | RepVGG-mini | FAILED | MISMATCH (ort_int8) | 120 |" in md
    assert "ort_int8 (ORT INT8 vs torch fake-quant)" in md and "FAILED" in md.split("## Verification")[1]
    html = (out / "report.html").read_text()
    assert "<td class='FAILED'>FAILED</td>" in html and "MISMATCH (ort_int8)" in html
    (csv_row,) = csv.DictReader((out / "report.csv").open())
    assert csv_row["status"] == "FAILED" and csv_row["parity"] == "MISMATCH (ort_int8)"
    assert "FAILED" in r.output and "MISMATCH" in r.output  # the terminal table

    allowed = tmp_path / "allowed"
    r = CliRunner().invoke(main, ["pipeline", str(ZOO["repvgg_mini"]), "-o", str(allowed), "--allow-mismatch",
                                  *FAST_PIPELINE], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads((allowed / "report.json").read_text())
    row = doc["models"][0]
    assert row["status"] == "PASSED" and row["allow_mismatch"] and doc["settings"]["allow_mismatch"]
    assert row["parity"] == "MISMATCH (ort_int8) allowed"
    assert "MISMATCH allowed" in [w["flag"] for w in row["warnings"]]
    md = (allowed / "report.md").read_text()
    assert "MISMATCH (ort_int8) allowed" in md and "kept by --allow-mismatch" in md
