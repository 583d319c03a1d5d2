"""The pipeline's stages one at a time: each runs on the records of the ones before and nothing
else, and the report row is assembled from whichever records a model got to."""

import dataclasses

import pytest

from repdeploy.errors import InputError
from repdeploy.pipeline import Built, ModelJob, PipelineSettings, StageFailure, assemble_row, judge_row
from repdeploy.pipeline.stages import (build_tensorrt, check_labels, evaluate_pair, export_fp32, load_checkpoint,
                                       open_evaluation_data, quantize_int8)
from repdeploy.zoo import builtin_zoo

SETTINGS = dict(calib_samples=32, eval_limit=64)


def _job(run_dir):
    checkpoint = next(e.file for e in builtin_zoo() if e.name == "repvgg_mini")
    run_dir.mkdir(parents=True, exist_ok=True)
    return ModelJob(name="repvgg_mini", checkpoint=checkpoint, run_dir=run_dir, final_dir=run_dir.parent / "final",
                    load_kwargs={"arch": "RepVGG-mini"})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    job = _job(tmp_path_factory.mktemp("stages") / "run")
    s = PipelineSettings(**SETTINGS)
    fused = load_checkpoint(job)
    prepared = open_evaluation_data(job, fused, s)
    check_labels(job, fused, prepared, s)
    return job, s, fused, prepared


def test_stages_compose_from_their_records_alone(loaded):
    job, s, fused, prepared = loaded
    exported = export_fp32(job, fused, prepared)
    quantized = quantize_int8(job, fused, prepared, s)
    evaluated = evaluate_pair(job, prepared, exported, quantized, None, s)
    # each stage wrote its own files into the run directory, and nothing else
    assert {p.name for p in job.run_dir.iterdir()} == {"fused.pt", "model_fp32.onnx", "model_int8_ort.onnx",
                                                       "calib.json"}
    assert evaluated.images == 64 and evaluated.verdicts == ()  # TensorRT verdicts only with Built
    with pytest.raises(dataclasses.FrozenInstanceError):
        evaluated.fp32_top1 = 0.0  # a later stage cannot rewrite an earlier one's figures

    row = assemble_row(job, s, fused=fused, prepared=prepared, quantized=quantized, evaluated=evaluated)
    assert row.status == "PASSED", row.error
    assert row.run_dir == str(job.final_dir) and row.arch == "RepVGG-mini" and row.num_classes == 10
    assert row.top1_drop == pytest.approx(row.fp32_top1 - row.int8_top1) and row.eval_images == 64
    assert [v["check"] for v in row.verdicts] == ["fusion", "ort_fp32", "ort_int8", "int8_graph"]
    assert row.calibration["method"] == quantized.report["calib_method"] and row.diagnostics["layers"]
    assert row.fp32_ms is None and row.bench == []  # no Timed record: no latency figures
    judge_row(row, s)  # judging twice adds the fusion verdict once
    assert [v["check"] for v in row.verdicts] == ["fusion", "ort_fp32", "ort_int8", "int8_graph"] and row.status == "PASSED"


def test_an_error_row_keeps_what_the_earlier_stages_found(loaded):
    job, s, fused, prepared = loaded
    failure = StageFailure("export", InputError("disk says no"))
    row = assemble_row(job, s, fused=fused, prepared=prepared, failure=failure, timings={"load": 1.0, "export": 0.1})
    assert (row.status, row.failed_stage, row.error, row.exit_code) == ("ERROR", "export", "disk says no", 2)
    assert row.arch == "RepVGG-mini" and row.fusion == fused.fusion
    assert row.preprocessing == prepared.val.preprocessing.to_dict()
    assert row.fp32_top1 is None and row.calibration is None and row.verdicts == []
    assert row.parity is None  # an ERROR row is not judged
    assert list(row.timings) == ["load", "export"]


def test_tensorrt_is_its_own_stage(fake_tensorrt, tmp_path):
    job = _job(tmp_path / "run")
    s = PipelineSettings(engine="trt", target="tensorrt", **SETTINGS)
    fused = load_checkpoint(job)
    prepared = open_evaluation_data(job, fused, s)
    exported = export_fp32(job, fused, prepared)
    quantized = quantize_int8(job, fused, prepared, s)
    built = build_tensorrt(exported, quantized)
    assert isinstance(built, Built)
    assert (built.fp32_engine.name, built.int8_engine.name) == ("model_fp32.engine", "model_int8_tensorrt.engine")
    assert built.fp32_engine.is_file() and (job.run_dir / "trt_cache" / "timing.cache").is_file()
    evaluated = evaluate_pair(job, prepared, exported, quantized, built, s)
    assert [v["check"] for v in evaluated.verdicts] == ["trt_fp32", "trt_int8"]
    assert all(v["passed"] for v in evaluated.verdicts)
    assert fake_tensorrt.VIOLATIONS == []
