"""Per-layer diagnostics: one hooked pass per model, figures equal to the direct computation (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch

from repdeploy import load_fused
from repdeploy.evaluate import sqnr_db
from repdeploy.quant import diagnostics as D
from repdeploy.quant.calib import calibrate
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.zoo import zoo_entry


@pytest.fixture(scope="module")
def plain_and_images():
    plain = load_fused(zoo_entry("repvgg").file).plain
    return plain, torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def models(plain_and_images):
    plain, x = plain_and_images
    qnet = QuantPlainNet(plain, "ort")  # per test: the last one changes its ranges
    calibrate(qnet, [x], method="max")
    return plain, qnet, x


def outputs(model, modules: dict, x) -> dict:
    got = {}
    handles = [m.register_forward_hook(lambda _m, i, o, n=n: got.__setitem__(n, (i[0], o))) for n, m in modules.items()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return got


def test_figures_equal_the_direct_computation_whatever_the_batching(models):
    plain, qnet, x = models
    layers = qnet.layers()
    floats = outputs(plain, {n: dict(plain.named_modules())[n] for n in layers}, x)
    quants = outputs(qnet, layers, x)
    one_batch = D.layer_sqnr(plain, qnet, x, batch=len(x))
    in_threes = D.layer_sqnr(plain, qnet, x, batch=3)
    for name, layer in layers.items():
        f_in, f_out = floats[name]
        with torch.no_grad():
            own = sqnr_db(f_out.numpy(), layer(f_in).numpy())
        cumulative = sqnr_db(f_out.numpy(), quants[name][1].numpy())
        for got in (one_batch, in_threes):
            assert got[name]["own_sqnr_db"] == pytest.approx(own, abs=1e-3), name  # conv kernels differ by batch size
            assert got[name]["sqnr_db"] == pytest.approx(cumulative, abs=1e-3), name
    # The first layer sees the image in both models: its own error is all there is.
    assert one_batch["stage0.conv"]["own_sqnr_db"] == pytest.approx(one_batch["stage0.conv"]["sqnr_db"])


def test_one_pass_of_each_model_per_batch_however_deep(models):
    plain, qnet, x = models
    calls = {"float": 0, "quant": 0}
    hooks = [plain.register_forward_hook(lambda *_: calls.__setitem__("float", calls["float"] + 1)),
             qnet.register_forward_hook(lambda *_: calls.__setitem__("quant", calls["quant"] + 1))]
    D.diagnose(plain, qnet, x, mode="sample")
    assert calls == {"float": 2, "quant": 2}  # 10 images in batches of 8
    calls.update(float=0, quant=0)
    records = D.diagnose(plain, qnet, x, mode="full")  # adds one quantized forward per layer
    assert calls == {"float": 3, "quant": 2 + len(qnet.layers())}
    for h in hooks:
        h.remove()
    assert all(r.isolated_sqnr_db is not None for r in records)
    assert D.summary(records)["ranked_by"] == "isolated_sqnr_db"
    assert D.diagnose(plain, qnet, x, mode="off") == []
    with pytest.raises(Exception, match="--diagnostics"):
        D.diagnose(plain, qnet, x, mode="fast")


def test_a_planted_badly_quantized_layer_ranks_first_and_a_float_layer_is_exact(models):
    plain, qnet, x = models
    victim = "stage2.1.conv"
    layer = qnet.layers()[victim]  # its input grid 64x too coarse: a range far too wide
    layer.input_quantizer.set_amax(layer.input_quantizer.amax * 64)
    records = D.diagnose(plain, qnet, x, mode="sample")
    summary = D.summary(records)
    assert summary["ranked_by"] == "own_sqnr_db" and summary["most_sensitive_layers"][0] == victim
    qnet.disable(victim)
    again = {r.layer: r for r in D.diagnose(plain, qnet, x, mode="sample")}
    assert again[victim].to_dict()["own_sqnr_db"] is None  # float: no error of its own (inf -> None in JSON)
    assert math.isinf(again[victim].own_sqnr_db)
