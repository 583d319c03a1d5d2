"""bench: labels, interleaved ratios, threads, layout warnings; inspect: the ONNX layout; doctor."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from repdeploy import defaults
from repdeploy.bench import bench_interleaved, t_quantile, unique_labels
from repdeploy.cli import main
from repdeploy.runtime import open_runner
from repdeploy.zoo import zoo_entry
from repdeploy.errors import InputError

FAST = ["--warmup", "0", "--duration", "0", "--iterations", "4"]


def test_unique_labels_add_parents_only_where_names_collide():
    assert unique_labels(["runs/a/model_int8_ort.onnx", "runs/b/model_int8_ort.onnx", "x/fused.pt"]) == [
        "a/model_int8_ort.onnx", "b/model_int8_ort.onnx", "fused.pt"]
    assert unique_labels(["p/a/m.onnx", "q/a/m.onnx"]) == ["p/a/m.onnx", "q/a/m.onnx"]
    assert unique_labels(["m.onnx", "m.onnx"]) == ["m.onnx #1", "m.onnx #2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run directories with files of the same names, and a TensorRT-layout INT8 model."""
    root = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    for target in ("ort", "tensorrt"):
        r = runner.invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--calib-data", "builtin",
                                 "--calib-samples", "16", "--target", target, "-o", str(root / target), "-q"])
        assert r.exit_code == 0, r.output
    shutil.copytree(root / "ort", root / "copy")
    return root


def test_bench_two_runs_gets_distinct_labels_a_speedup_column_and_threads(runs):
    a, b = runs / "ort" / "model_int8_ort.onnx", runs / "copy" / "model_int8_ort.onnx"
    fp32 = runs / "ort" / "model_fp32.onnx"
    r = CliRunner().invoke(main, ["bench", str(fp32), str(a), str(b), "--threads", "1", "--json", "-q", *FAST])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    labels = [x["label"] for x in doc["results"]]
    assert labels == ["model_fp32.onnx", "ort/model_int8_ort.onnx", "copy/model_int8_ort.onnx"]
    assert doc["baseline"] == "model_fp32.onnx" and doc["results"][0]["speedup_vs_first"] == 1.0
    # One figure per model, the same in the column and in the interval line, and one direction:
    # the baseline's time / this model's time, never the inverse.
    speedups = {sp["candidate"]: sp for sp in doc["speedups"]}
    assert set(speedups) == set(labels[1:]) and all(sp["reference"] == labels[0] for sp in speedups.values())
    for x in doc["results"][1:]:
        sp = speedups[x["label"]]
        assert x["speedup_vs_first"] == sp["speedup"] and sp["sessions"] == defaults.BENCH_SESSIONS
        # each session pairs the two models under one load; the figure is their geometric mean
        assert sp["speedup"] == pytest.approx(float(np.exp(np.mean(np.log(sp["session_speedups"])))))
        assert sp["ci_low"] <= sp["speedup"] <= sp["ci_high"] and sp["interval"] == "t-interval over sessions"
        # the interval is as wide as the sessions' spread says: the t-interval of their log speed-ups
        logs = np.log(sp["session_speedups"])
        half = t_quantile(0.95, logs.size - 1) * logs.std(ddof=1) / np.sqrt(logs.size)
        assert np.log(sp["ci_high"] / sp["ci_low"]) == pytest.approx(2 * half)
    assert all(x["runner"]["intra_op_threads"] == 1 for x in doc["results"])
    text = CliRunner().invoke(main, ["bench", str(fp32), str(a), "-q", *FAST]).stdout
    assert "threads -" not in text and ("threads ORT default (" in text or re.search(r"threads \d+\b", text))
    assert "speed-up" in text and not re.search(r"\bratio\b", text) and "ort/model_int8_ort.onnx" not in text
    assert "model_int8_ort.onnx" in text and "x over model_fp32.onnx" in text


def test_bench_times_both_sides_under_one_named_ort_setting(runs):
    """The INT8 file records a spin bound; bench gives it to the FP32 session too and names it.
    Planted fault: the old behaviour (each runner applying only its own record) fails the first check."""
    fp32, int8 = runs / "ort" / "model_fp32.onnx", runs / "ort" / "model_int8_ort.onnx"
    for option, expected in ((None, {"session.intra_op.spin_duration_us": "100"}), ("default", {}),
                             ("37", {"session.intra_op.spin_duration_us": "37"})):
        extra = [] if option is None else ["--ort-spin-us", option]
        r = CliRunner().invoke(main, ["bench", str(fp32), str(int8), "--json", "-q", *extra, *FAST])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert [x["runner"]["session_config"] for x in doc["results"]] == [expected, expected]
        assert doc["ort_session"]["config"] == expected and doc["ort_session"]["applied_to"] == "every model"
        sp = doc["speedups"][0]  # one word, one direction: the first model's time / the second's
        assert (sp["reference"], sp["candidate"]) == ("model_fp32.onnx", "model_int8_ort.onnx")
        assert sp["ci_low"] <= sp["speedup"] <= sp["ci_high"] and "ratio" not in sp
    assert "recorded by model_int8_ort.onnx" in doc_text(fp32, int8)
    bad = CliRunner().invoke(main, ["bench", str(fp32), str(int8), "--ort-spin-us", "-5", *FAST])
    assert bad.exit_code == 2 and "--ort-spin-us" in bad.output


def doc_text(*models) -> str:
    r = CliRunner().invoke(main, ["bench", *map(str, models), "-q", *FAST])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_interleaved_bench_meets_the_minimums_and_keeps_order(runs):
    with open_runner(runs / "ort" / "model_fp32.onnx", "ort", threads=1) as r1, \
            open_runner(runs / "ort" / "model_int8_ort.onnx", "ort", threads=1) as r2:
        results, speedup = bench_interleaved([r1, r2], batch=2, warmup=0, duration=0.05, iterations=9)
    assert [x.model for x in results] == ["model_fp32.onnx", "model_int8_ort.onnx"]
    assert speedup.rounds >= 5 and speedup.ci_low <= speedup.ratio <= speedup.ci_high
    for x in results:
        assert x.stats.count >= 9 and x.measured_s >= 0.05 and x.batch == 2


def test_bench_warns_when_a_tensorrt_layout_model_runs_on_ort(runs):
    model = runs / "tensorrt" / "model_int8_tensorrt.onnx"
    r = CliRunner().invoke(main, ["bench", str(model), *FAST])
    assert r.exit_code == 0, r.output
    assert "TensorRT QDQ layout" in r.stderr and "--target ort" in r.stderr
    ort = CliRunner().invoke(main, ["bench", str(runs / "ort" / "model_int8_ort.onnx"), *FAST])
    assert "TensorRT QDQ layout" not in ort.stderr


def test_inspect_names_the_layout_and_checks_only_its_rules(runs):
    def inspect(path):
        r = CliRunner().invoke(main, ["inspect", str(path), "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    ort = inspect(runs / "ort" / "model_int8_ort.onnx")
    assert ort["layout"] == "ort" and ort["layout_check"]["passed"]
    assert ort["layout_check"]["integer_nodes"]["QLinearConv"] == 7 and ort["layout_check"]["float_weighted_nodes"] == 0
    assert "violations" not in ort["layout_check"]  # TensorRT's rules are not this layout's
    trt = inspect(runs / "tensorrt" / "model_int8_tensorrt.onnx")
    assert trt["layout"] == "tensorrt" and trt["layout_check"]["violations"] == [] and trt["layout_check"]["passed"]
    fp32 = inspect(runs / "ort" / "model_fp32.onnx")
    assert fp32["quantized"] is False and "layout_check" not in fp32
    text = CliRunner().invoke(main, ["inspect", str(runs / "ort" / "model_int8_ort.onnx")]).stdout
    assert "layout      ort INT8 QDQ" in text and "tensorrt_qdq_violations" not in text


def test_doctor_reports_versions_devices_tensorrt_and_threads():
    r = CliRunner().invoke(main, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    import onnxruntime
    import torch

    assert doc["packages"]["torch"] == torch.__version__.split("+")[0] or doc["packages"]["torch"] == torch.__version__
    assert doc["packages"]["onnxruntime"] == onnxruntime.__version__
    assert doc["torch"]["cuda_available"] == torch.cuda.is_available()
    assert "CPUExecutionProvider" in doc["onnxruntime"]["providers"]
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None or getattr(importlib.import_module("tensorrt"), "IS_FAKE", False):
        # no TensorRT here (its stubs are not the module): unusable, and the reason says what to install
        assert doc["tensorrt"]["usable"] is False and "repdeploy[trt]" in doc["tensorrt"]["reason"]
    else:
        assert doc["tensorrt"]["usable"] or doc["tensorrt"]["reason"]
    assert doc["threads"]["logical_cpus"] >= 1 and doc["torch"]["threads"] == torch.get_num_threads()
    text = CliRunner().invoke(main, ["doctor"]).stdout
    assert "tensorrt" in text and "threads" in text and "torch" in text


def test_models_that_record_different_settings_are_refused_until_one_is_chosen(runs, tmp_path):
    import onnx

    from repdeploy.runtime.ort import SPIN_KEY, record_session_config, shared_session_config

    int8 = runs / "ort" / "model_int8_ort.onnx"
    other = tmp_path / "other_int8.onnx"
    model = onnx.load(str(int8))
    record_session_config(model, {SPIN_KEY: "20"})
    onnx.save(model, str(other))
    with pytest.raises(InputError, match="--ort-spin-us"):
        shared_session_config([int8, other])
    assert shared_session_config([int8, other], "250").config == {SPIN_KEY: "250"}
    assert shared_session_config([runs / "ort" / "model_fp32.onnx"]).config == {}
