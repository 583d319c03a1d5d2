"""The deployment verdicts on real-size models: every correct deployment passes at default
settings, every planted fault fails (issue 18).

Models: RepVGG-A0 (3 seeds) and B1g4 (one case, `slow`) at 224 px, 1000 classes, BN statistics
re-estimated on scikit-image's photographs (tests/realsize.py), calibrated on 32 photo crops and
judged on 64 other crops, as `quantize` judges (quant.fidelity.int8_verdicts). The full sweep over
A0/B0/B1g4, seeds and layers is benchmarks/verdict_confusion.py; its table is in
docs/quantization.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from planted_faults import plant
from realsize_deploy import RECORD, deploy_all, judge

SEEDS = (0, 1, 2)
pytestmark = pytest.mark.slow  # real-size models: still run by `make test`


@pytest.fixture(scope="module")
def a0(tmp_path_factory):
    """A0's correct deployments per seed (built once per test process): seed 0 in both layouts, the
    others in the ort layout, to stay within the suite's budget (the benchmark runs every seed in
    both: docs/quantization.md's table)."""
    cache: dict = {}

    def get(seed: int):
        if seed not in cache:
            torch.manual_seed(seed)
            targets = ("ort", "tensorrt") if seed == 0 else ("ort",)
            cache[seed] = deploy_all("RepVGG-A0", seed, targets, tmp_path_factory.mktemp(f"a0s{seed}"))
        return cache[seed]

    return get


def failed(verdicts: dict) -> list[str]:
    return [v["line"] for v in verdicts.values() if not v["passed"]]


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_a0_int8_deployments_pass(a0, seed):
    for target, d in a0(seed).items():
        v = judge(d)
        assert not failed(v), (target, failed(v))
        assert set(v) == {"ort_fp32", "ort_int8", "int8_graph"}
        dep = v["ort_int8"]
        assert dep["images"] == 64 and dep["deviation"] < 0.7, dep["line"]
        # random-weight real-size models are fragile: the simulation itself keeps ~10-18 dB
        assert dep["simulated_sqnr_db"] < 25 and dep["deployed_sqnr_db"] > dep["simulated_sqnr_db"] - 0.1


# Each fault, where it is planted, and the check that must catch it. The layers are where the
# fault is visible at the logits; benchmarks/verdict_confusion.py sweeps the others (docs table).
FAULTS = [
    ("activation scale halved", "stage1.0.conv", "ort_int8"),
    ("activation scale doubled", "stage1.0.conv", "int8_graph"),
    ("Q/DQ pair missing", "stage3.4.conv", "int8_graph"),
    ("weights transposed", "stage0.conv", "ort_int8"),
    ("wrong mean/std", None, "ort_int8"),
    ("per-tensor weight scale", "stage3.4.conv", "ort_int8"),
]
# The faults an exporter writes into the graph's parameters, caught in every layer by comparing
# them with calibration's (int8_graph), whether or not the logits show them.
GRAPH_FAULTS = ["activation scale halved", "activation scale doubled", "weights transposed", "per-tensor weight scale"]


@pytest.mark.parametrize("fault,layer,check", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_planted_faults_fail_and_name_the_check(a0, tmp_path, fault, layer, check, target):
    d = a0(0)[target]
    v = judge(d, plant(d.int8_onnx, fault, layer or "stage0.conv", tmp_path))
    assert not v[check]["passed"], v[check]["line"]
    assert "FAILED" in v[check]["line"]


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_every_parameter_fault_fails_the_graph_check_in_every_layer_it_is_planted(a0, tmp_path, target):
    import onnx

    from repdeploy.quant.fidelity import parameters_differ

    d = a0(0)[target]
    assert parameters_differ(d.qnet, onnx.load(str(d.int8_onnx)).graph) == []  # the correct file
    for layer in ("stage0.conv", "stage1.0.conv", "stage2.3.conv", "stage3.13.conv", "stage4.0.conv", "linear"):
        for fault in GRAPH_FAULTS:
            if fault == "weights transposed" and layer == "linear":
                continue  # a 2-D weight has no spatial axes
            path = plant(d.int8_onnx, fault, layer, tmp_path)
            differ = parameters_differ(d.qnet, onnx.load(str(path)).graph)
            assert len(differ) == 1 and differ[0].startswith(layer), (fault, layer, differ)
            path.unlink()


def test_fp16_onnx_of_a_real_size_model_passes_its_check(tmp_path):
    from realsize import photo_batch, realistic_model

    from repdeploy.export.onnx import export_onnx, ort_parity
    from repdeploy.fuse import fuse

    plain = fuse(realistic_model("RepVGG-A0", 0)).plain
    path = export_onnx(plain, tmp_path / "fp16.onnx", input_size=224, precision="fp16", preprocessing=RECORD)
    parity = ort_parity(plain, path, photo_batch(16, 224, seed=7))
    assert parity.passed and parity.verdict["check"] == "ort_fp16", parity.verdict["line"]
    assert parity.top1_agreement == 1.0


def test_tensorrt_double_engines_pass_the_pipelines_checks(a0, fake_tensorrt, tmp_path):
    from repdeploy.data import from_arrays
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.pipeline.stages import _tensorrt_verdicts
    from repdeploy.runtime import open_runner

    d = a0(0)["tensorrt"]
    x = d.x[:16]  # the double runs its engines in ONNX Runtime: few images say as much as many
    engines = {k: build_engine(p, tmp_path / f"{k}.engine", precision=k, batch_sizes=(1, 8, 16), input_size=224).engine
               for k, p in (("fp32", d.fp32_onnx), ("int8", d.int8_onnx))}
    logits = {}
    for k, engine in engines.items():
        with open_runner(engine, "trt") as r:
            logits[k] = r.infer(x.numpy())
    val = from_arrays(x.numpy(), torch.zeros(len(x), dtype=torch.long).numpy(), image_size=224, channels=3,
                      name="verification crops")
    verdicts = _tensorrt_verdicts(SimpleNamespace(val=val), SimpleNamespace(fp32_onnx=d.fp32_onnx),
                                  SimpleNamespace(int8_onnx=d.int8_onnx), logits["fp32"], logits["int8"], images=16)
    assert [v["check"] for v in verdicts] == ["trt_fp32", "trt_int8"]
    assert all(v["passed"] for v in verdicts), [v["line"] for v in verdicts]


def test_b1g4_correct_deployment_passes_and_a_transposed_conv_fails(tmp_path):
    # 32 images keep B1g4 within the suite's budget: the SQNR and deviation rules still judge (the
    # sign test needs 64 to reject, which the A0 cases and the benchmark exercise).
    d = deploy_all("RepVGG-B1g4", 0, ("ort",), tmp_path, images=32, calib_images=16)["ort"]
    v = judge(d)
    assert not failed(v), failed(v)
    bad = judge(d, plant(d.int8_onnx, "weights transposed", "stage3.4.conv", tmp_path))
    assert not bad["ort_int8"]["passed"], bad["ort_int8"]["line"]
