"""The fake-quant core: grids, straight-through gradients, per-layer control, calibration guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_quant import batches, calibrated, fused
from repdeploy.errors import CalibrationError, DataError
from repdeploy.evaluate import sqnr_db
from repdeploy.quant.calib import calibrate
from repdeploy.quant.fake_quant import TensorQuantizer
from repdeploy.quant.quantizer import QuantPlainNet


@pytest.fixture(scope="module")
def plain():
    return fused("RepVGG-mini")


@pytest.fixture(scope="module")
def qnet(plain):
    return calibrated(plain, method="max", n=128)[0]


def test_weights_are_per_channel_int8(qnet):
    layer = qnet.layers()["stage2.0.conv"]
    w = layer.conv.weight.detach()
    wq = layer.weight_quantizer(w).detach()
    scale = w.abs().flatten(1).amax(1) / 127
    steps = wq / scale.view(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the grid of its own channel
    assert steps.abs().max() <= 127.001
    assert ((w - wq).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()
    assert layer.weight_quantizer.amax.shape == (w.shape[0],)


def test_activation_grids_follow_the_target(plain):
    ort = QuantPlainNet(plain, "ort")
    trt = QuantPlainNet(plain, "tensorrt")
    assert not ort.layers()["stage0.conv"].input_quantizer.unsigned  # the image is signed
    assert ort.layers()["stage1.0.conv"].input_quantizer.unsigned  # ReLU outputs: uint8
    assert ort.layers()["linear"].input_quantizer.unsigned
    assert not any(q.unsigned for q in trt.quantizers())  # TensorRT: int8 everywhere
    assert "features" in ort.activation_quantizers() and "features" not in trt.activation_quantizers()


def test_unsigned_quantizer_rounds_to_amax_over_255():
    q = TensorQuantizer("t", unsigned=True)
    q.set_amax(2.55)
    x = torch.linspace(-1, 3, 401)
    y = q(x)
    assert y.min() == 0 and y.max() == pytest.approx(2.55)
    assert torch.allclose(y / 0.01, (y / 0.01).round(), atol=1e-3)


def test_straight_through_gradients():
    q = TensorQuantizer("t")
    q.set_amax(1.0)
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 2.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # identity inside the range, zero outside


def test_gradients_reach_every_weight(qnet):
    x = batches(8)[0][:8]
    qnet.zero_grad()
    qnet(x).square().mean().backward()
    for name, layer in qnet.layers().items():
        module = getattr(layer, "conv", None) or layer.linear
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
    qnet.zero_grad()


@torch.no_grad()
def test_disabled_quantizers_give_the_float_model(plain, qnet):
    x = batches(32)[0][:32]
    ref = plain(x)
    qnet.disable()
    try:
        assert torch.equal(qnet(x), ref)
        assert qnet.float_layers() == list(qnet.layers())
    finally:
        qnet.enable()
    q = qnet(x)
    assert not torch.equal(q, ref)
    assert sqnr_db(ref.numpy(), q.numpy()) > 25
    assert (ref.argmax(1) == q.argmax(1)).float().mean() >= 0.95


@torch.no_grad()
def test_one_layer_can_stay_in_float(plain, qnet):
    x = batches(16)[0][:16]
    full = qnet(x)
    qnet.disable("stage0.conv")
    try:
        assert qnet.float_layers() == ["stage0.conv"]
        info = {i.name: i for i in qnet.describe()}
        assert not info["stage0.conv.input"].enabled and info["stage1.0.conv.input"].enabled
        partial = qnet(x)
        assert not torch.equal(partial, full)
    finally:
        qnet.enable("stage0.conv")
    assert torch.equal(qnet(x), full)
    with pytest.raises(KeyError, match="no quantized layer"):
        qnet.disable("stage9.conv")


def test_float_model_returns_the_wrapped_weights(plain, qnet):
    back = qnet.float_model()
    for (k1, v1), (k2, v2) in zip(sorted(plain.state_dict().items()), sorted(back.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


def test_uncalibrated_or_incomplete_ranges_are_refused(plain):
    q = QuantPlainNet(plain, "ort")
    with pytest.raises(CalibrationError, match="miss"):
        q.load_ranges({"stage0.conv.input": 1.0})
    with pytest.raises(CalibrationError, match="no range"):
        q.layers()["stage0.conv"].input_quantizer.scale()
    with pytest.raises(CalibrationError, match="finite"):
        q.layers()["stage0.conv"].input_quantizer.set_amax(float("inf"))


def test_calibration_rejects_bad_data(plain):
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()
    with pytest.raises(DataError, match="no calibration images"):
        calibrate(q, [], method="max")
    with pytest.raises(DataError, match="all identical"):
        calibrate(q, [torch.zeros(4, 3, 32, 32)], method="entropy")
    bad = torch.randn(4, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        calibrate(q, [bad], method="max")
    assert not q.layers()["stage0.conv"].input_quantizer.calibrated  # nothing half-set


@torch.no_grad()
@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_calibrate_every_activation(plain, method):
    q, cache = calibrated(plain, method=method, n=64)
    assert set(cache.amax) == set(QuantPlainNet(plain, "ort").activation_quantizers())
    assert all(np.isfinite(v) and v > 0 for v in cache.amax.values())
    # Clipping methods never choose a range beyond what was observed.
    for name, r in cache.tensors.items():
        assert r.amax <= max(abs(r.min), abs(r.max)) * (1 + 1e-6), name
    x = batches(64, split="val")[0]
    assert sqnr_db(plain(x).numpy(), q(x).numpy()) > 15
