"""The library never raises once it has written its outputs: quantize returns a result whose status
says what the checks found, and only the command line turns it into an exit code (issue 20)."""

import json
from dataclasses import replace

import pytest

import repdeploy
from repdeploy import tolerance
from repdeploy.cli.outcome import raise_for_results
from repdeploy.errors import AccuracyGateError, VerificationError
from repdeploy.quant.settings import QuantizeSettings
from repdeploy.zoo import builtin_zoo

MINI = next(e.file for e in builtin_zoo() if e.name == "repvgg_mini")
QUICK = QuantizeSettings(calib_data="builtin", calib_samples=32, eval_data="builtin", eval_limit=64,
                         diagnostics="off")


def test_a_planted_export_fault_is_a_failed_result_with_every_file_written(tmp_path, monkeypatch):
    # No deviation allowed from ORT INT8 to torch fake-quant: the real rounding differences of
    # ORT's integer kernels then fail the check, as a broken export would.
    monkeypatch.setitem(tolerance.TOLERANCES, "ort_int8", replace(tolerance.TOLERANCES["ort_int8"], max_deviation=0.0))
    r = repdeploy.quantize(MINI, QUICK, output_dir=tmp_path / "a")  # returns, does not raise
    assert r.status == "FAILED" and not r.passed and r.gate_failures == []
    assert r.verification_failures and r.verification_failures[0].startswith("ort_int8")
    report = json.loads(r.report_path.read_text())
    assert report["status"] == "FAILED" and report["verification_failures"] == r.verification_failures
    assert {"fused.pt", "model_fp32.onnx", "model_int8_ort.onnx", "calib.json", "report.json"} <= {
        p.name for p in (tmp_path / "a").iterdir()}
    with pytest.raises(VerificationError, match="ort_int8") as info:  # what the command line does with it
        raise_for_results([r])
    assert info.value.exit_code == 1
    kept = repdeploy.quantize(MINI, QUICK, output_dir=tmp_path / "b", allow_mismatch=True)
    assert kept.status == "KEPT" and kept.verification_failures and kept.passed
    raise_for_results([kept])


def test_a_failed_gate_is_a_failed_result_that_exits_3_and_a_mismatch_outranks_it(tmp_path):
    r = repdeploy.quantize(MINI, QUICK, output_dir=tmp_path, min_sqnr=99.0)  # no 8-bit model reaches 99 dB
    assert r.status == "FAILED" and r.verification_failures == [] and "--min-sqnr 99" in r.gate_failures[0]
    with pytest.raises(AccuracyGateError) as info:
        raise_for_results([r])
    assert info.value.exit_code == 3
    mismatched = replace(r, verification_failures=["ort_int8 (planted)"])
    with pytest.raises(VerificationError):
        raise_for_results([r, mismatched])
