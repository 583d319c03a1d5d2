"""Verification gates: a failed hand-off is FAILED everywhere and exits 1; --allow-mismatch says so."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from repdeploy import tolerance, verify
from repdeploy.cli import main
from repdeploy.zoo import builtin_zoo

ZOO = {e.name: e.file for e in builtin_zoo()}
FAST_PIPELINE = ["--calib-samples", "32", "--eval-limit", "120", "--warmup", "0", "--duration", "0",
                 "--iterations", "3", "--max-duration", "0"]


def test_relative_rule_and_the_report_cells():
    ref = np.array([[4.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
    same = tolerance.judge("ort_fp32", ref, ref + 1e-6, reference_name="a", candidate_name="b")
    assert same.passed and same.max_rel_diff == pytest.approx(1e-6 / 4.0) and same.top1_agreement == 1.0
    flipped = ref.copy()
    flipped[1] = [0.0, 1.0, 2.0]  # 1/4 of the logit scale, and the second row's class changes
    bad = tolerance.judge("ort_fp32", ref, flipped, reference_name="a", candidate_name="b")
    assert not bad.passed and bad.top1_agreement == 0.5 and "max rel diff 2.5e-01 > 1e-04" in bad.line()
    nan = tolerance.judge("fusion", ref, ref * np.nan, reference_name="a", candidate_name="b")
    assert not nan.passed and "non-finite" in nan.line()
    assert verify.parity_cell([same.to_dict(), bad.to_dict()]) == "MISMATCH (ort_fp32)"
    assert verify.parity_cell([same.to_dict()]) == "ok" and verify.parity_cell([]) == "-"
    assert verify.parity_cell([bad.to_dict()], allowed=True) == "MISMATCH (ort_fp32) allowed"
    assert "PASSED" not in verify.kept_line([bad.line()]) and "KEPT" in verify.kept_line([bad.line()])


def _deployment(seed=0, n=256, classes=50, deviation=0.1):
    rng = np.random.default_rng(seed)
    fp32 = rng.standard_normal((n, classes)) * 3
    sim = fp32 + rng.standard_normal((n, classes))  # quantization noise, rms 1
    return fp32, sim, sim + deviation * rng.standard_normal((n, classes))


def test_deployment_rule_judges_against_the_measured_simulation():
    fp32, sim, dep = _deployment()
    ok = tolerance.judge_deployment("ort_int8", fp32, sim, dep, fp32_name="f", simulated_name="s", deployed_name="d")
    assert ok.passed and ok.deviation == pytest.approx(0.1, rel=0.1) and ok.images == 256, ok.line()
    assert ok.lost + ok.gained > 0 and ok.sign_p > 1e-3  # near-ties flip both ways
    # a gross error: deviation larger than the quantization noise itself
    _, _, gross = _deployment(deviation=1.5)
    g = tolerance.judge_deployment("ort_int8", fp32, sim, gross, fp32_name="f", simulated_name="s", deployed_name="d")
    assert not g.passed and g.deviation > tolerance.DEPLOYMENT_DEVIATION and "FAILED" in g.line()
    # a wrong scale on the logits
    s = tolerance.judge_deployment("ort_int8", fp32, sim, 1.5 * sim, fp32_name="f", simulated_name="s",
                                   deployed_name="d")
    assert not s.passed and s.deployed_sqnr_db < s.min_sqnr_db
    # a deployment that only ever loses the class FP32 picks fails the sign test, however small the change
    lossy = sim.copy()
    keep = fp32.argmax(1) == sim.argmax(1)
    rows = np.flatnonzero(keep)[:12]
    lossy[rows, fp32.argmax(1)[rows]] -= 100.0
    lo = tolerance.judge_deployment("ort_int8", fp32, sim, lossy, fp32_name="f", simulated_name="s",
                                    deployed_name="d")
    assert lo.lost == 12 and lo.gained == 0 and lo.sign_p < 1e-3 and not lo.passed
    assert tolerance.sign_test_p(0, 0) == 1.0 and tolerance.sign_test_p(10, 0) == pytest.approx(2.0 ** -10)


def test_one_tolerance_table_names_every_hand_off():
    assert set(tolerance.TOLERANCES) == {"fusion", "ort_fp32", "ort_fp16", "ort_int8", "int8_graph", "trt_fp32",
                                        "trt_fp16", "trt_int8", "compare", "input_graph"}
    assert tolerance.tolerance("qat_ort_int8") is tolerance.TOLERANCES["ort_int8"]
    from repdeploy.compare import DEFAULT_ATOL
    from repdeploy.fuse import DEFAULT_TOLERANCE

    assert DEFAULT_TOLERANCE == tolerance.TOLERANCES["fusion"].max_rel and DEFAULT_ATOL == 1e-5


def test_sanity_warnings():
    flags = lambda **kw: [w["flag"] for w in verify.sanity_warnings(**kw)]  # noqa: E731
    assert flags(fp32_top1=10.0, num_classes=10, eval_images=18, calib_on_eval=True) == [
        "at/below chance", "18 eval images", "calibrated on eval"]
    assert flags(fp32_top1=10.1, num_classes=10, eval_images=100, calib_on_eval=False) == []
    assert flags(fp32_top1=0.0, num_classes=1000, eval_images=None, calib_on_eval=False) == ["at/below chance"]


@pytest.fixture
def strict_int8_parity(monkeypatch):
    """No deviation allowed from ORT INT8 to torch fake-quant: the real, small rounding differences
    between ORT's integer kernels and torch's float fake-quant then fail the check, as a broken export would."""
    from dataclasses import replace

    monkeypatch.setitem(tolerance.TOLERANCES, "ort_int8", replace(tolerance.TOLERANCES["ort_int8"], max_deviation=0.0))


def test_quantize_mismatch_exits_1_after_writing_everything(strict_int8_parity, tmp_path):
    args = ["quantize", str(ZOO["repvgg_mini"]), "--calib-method", "max", "--calib-samples", "32",
            "--eval-data", "builtin", "--eval-limit", "64"]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a")], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "error: RepVGG-mini: ort_int8 (ORT INT8 vs torch fake-quant)" in r.output and "--allow-mismatch" in r.output
    assert "status      FAILED: ort_int8" in r.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["status"] == "FAILED" and not report["allow_mismatch"]
    assert [v["check"] for v in report["verdicts"]] == ["fusion", "ort_fp32", "ort_int8", "int8_graph"]
    assert [v["passed"] for v in report["verdicts"]] == [True, True, False, True]
    assert {"model_int8_ort.onnx", "calib.json", "fused.pt"} <= {p.name for p in (tmp_path / "a").iterdir()}
    # 64 images: flagged beside the figures
    assert [w["flag"] for w in report["warnings"]] == ["64 eval images"]

    r = CliRunner().invoke(main, [*args, "--allow-mismatch", "-o", str(tmp_path / "b")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "status      KEPT despite a failed check (--allow-mismatch): ort_int8" in r.output
    assert "PASSED" not in r.output.split("status")[-1]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["status"] == "KEPT" and report["allow_mismatch"] and not report["verdicts"][2]["passed"]


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
    assert row["status"] == "KEPT" and row["allow_mismatch"] and doc["settings"]["allow_mismatch"]
    assert row["parity"] == "MISMATCH (ort_int8) allowed"
    assert "MISMATCH allowed" in [w["flag"] for w in row["warnings"]]
    md = (allowed / "report.md").read_text()
    assert "MISMATCH (ort_int8) allowed" in md and "kept by --allow-mismatch" in md


def test_quantize_verifies_on_held_out_images_and_gates_fidelity_without_labels(tmp_path):
    args = ["quantize", str(ZOO["repvgg_mini"]), "--calib-method", "max", "--calib-samples", "64", "--json"]
    r = CliRunner().invoke(main, [*args, "--min-agreement", "0.5", "-o", str(tmp_path / "a")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    # the built-in train split: 64 calibrated on, 256 others verified on, none of them shared
    assert report["verify_images"] == 256 and report["verify_disjoint"] is True
    assert "held out of calibration" in report["verify_data"]
    assert report["fidelity_gate"]["passed"] and report["fidelity_gate"]["images"] == 256
    assert all(v["passed"] for v in report["verdicts"])

    r = CliRunner().invoke(main, [*args, "--min-sqnr", "99", "-o", str(tmp_path / "b")], catch_exceptions=False)
    assert r.exit_code == 3, r.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["status"] == "FAILED" and not report["fidelity_gate"]["passed"]
    assert "< --min-sqnr 99" in report["failures"][0]
    bad = CliRunner().invoke(main, [*args, "--min-agreement", "95", "-o", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--min-agreement 95.0: give a fraction 0-1" in bad.output
