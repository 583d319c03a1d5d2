"""Per-layer diagnostics: figures equal to the direct computation, taken off passes that run
anyway (no forward pass of their own inside `quantize`), a planted bad layer found (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from repdeploy import load_fused, quantize
from repdeploy.evaluate import sqnr_db
from repdeploy.models.plain import PlainNet
from repdeploy.quant import diagnostics as D
from repdeploy.quant.calib import calibrate
from repdeploy.quant.fake_quant import QuantConv2d
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.zoo import zoo_entry


@pytest.fixture(scope="module")
def plain_and_images():
    plain = load_fused(zoo_entry("repvgg").file).plain
    return plain, torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def models(plain_and_images):
    plain, x = plain_and_images
    qnet = QuantPlainNet(plain, "ort")  # per test: some change its ranges
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
    every = [D.layer_sqnr(plain, qnet, x, batch=len(x), own_stride=1), D.layer_sqnr(plain, qnet, x, batch=3, own_stride=1)]
    share = [D.layer_sqnr(plain, qnet, x, batch=len(x), own_stride=2), D.layer_sqnr(plain, qnet, x, batch=4, own_stride=2)]
    strided = 0
    for name, layer in layers.items():
        f_in, f_out = floats[name]
        channels = D.own_channels(layer, 2)
        strided += channels is not None
        with torch.no_grad():
            own = sqnr_db(f_out.numpy(), layer(f_in).numpy())
            # the estimate: the share of channels, on the first half of the images
            half = (len(x) + 1) // 2
            cols = channels if channels is not None else slice(None)
            own_share = sqnr_db(f_out[:half, cols].numpy(), layer(f_in[:half])[:, cols].numpy())
        cumulative = sqnr_db(f_out.numpy(), quants[name][1].numpy())
        for got in every:  # conv kernels differ by batch size in the last bits
            assert got[name]["own_sqnr_db"] == pytest.approx(own, abs=1e-3), name
            assert got[name]["sqnr_db"] == pytest.approx(cumulative, abs=1e-3), name
        for got in share:  # exactly the figure of the channels it took
            assert got[name]["own_sqnr_db"] == pytest.approx(own_share, abs=1e-3), name
            assert got[name]["sqnr_db"] == pytest.approx(cumulative, abs=1e-3), name
    assert strided >= 2  # the share path ran (layers of >= 64 channels)
    # The first layer sees the image in both models: its own error is all there is.
    assert every[0]["stage0.conv"]["own_sqnr_db"] == pytest.approx(every[0]["stage0.conv"]["sqnr_db"])


def test_the_channel_share_keeps_groups_whole_and_a_floor_of_channels():
    def layer(out, groups=1):
        return QuantConv2d(torch.nn.Conv2d(8 * groups, out, 3, groups=groups), "c", unsigned_input=False, quantize_bias=False)
    assert D.own_channels(layer(256), 4) == slice(None, None, 4)
    assert D.own_channels(layer(96), 4) == slice(None, None, 3)  # 4 would leave 24 < 32 channels
    assert D.own_channels(layer(48), 4) is None  # narrow: run whole, exact
    assert D.own_channels(layer(256, groups=4), 4) == slice(None, None, 4)  # 64 per group: 16 of each
    assert D.own_channels(layer(4 * 34, groups=4), 4) == slice(None, None, 2)  # 34 per group: 17 of each
    assert D.own_channels(layer(256), 1) is None
    # a grouped conv on a share of its channels computes exactly those channels
    conv = layer(128, groups=4)
    conv.input_quantizer.set_amax(3.0)
    conv.weight_quantizer.set_amax(conv.conv.weight.detach().abs().flatten(1).amax(1))
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        assert torch.equal(conv(x, slice(None, None, 4)), conv(x)[:, ::4])


def test_the_probe_reads_either_pass_order_and_falls_back_when_it_saw_too_little(models):
    plain, qnet, x = models
    reference = D.layer_sqnr(plain, qnet, x)
    with torch.no_grad(), D.SQNRProbe(plain, qnet, len(x)) as probe:
        for xb in x.split(4):
            qnet(xb)  # the fake-quant pass first, in its own batches...
        for xb in x.split(4):
            plain(xb)  # ...then the float one: the figures do not depend on it
    assert probe.complete and probe.seconds > 0
    for name, figures in probe.figures().items():
        assert figures == pytest.approx(reference[name], abs=1e-3), name
    with torch.no_grad(), D.SQNRProbe(plain, qnet, len(x)) as short:
        plain(x[:5])
        qnet(x[:5])  # half the sample: diagnose runs its own passes instead of reporting half
    assert not short.complete
    records = D.diagnose(plain, qnet, x, mode="sample", probe=short)
    assert [r.own_sqnr_db for r in records] == pytest.approx([reference[r.layer]["own_sqnr_db"] for r in records], abs=1e-3)


class Counting:
    """Forward calls of every PlainNet/QuantPlainNet while inside, and the conv/matmul FLOPs of
    quantize's verification and diagnostics steps (FlopCounterMode cannot run around the ONNX
    export, whose work does not depend on the diagnostics anyway)."""

    def __init__(self, monkeypatch=None):
        self.calls = {"float": 0, "quant": 0}
        self.total_flops = 0
        if monkeypatch is not None:
            from repdeploy.quant import fidelity, ptq_report

            # the INT8 set step (quant/int8_set.py) looks both up where they live, at call time
            for module, name in ((fidelity, "verify_int8"), (ptq_report, "diagnostics_record")):
                monkeypatch.setattr(module, name, self.counted(getattr(module, name)))

    def counted(self, step):
        def run(*args, **kwargs):
            with FlopCounterMode(display=False) as flops:  # (entering one resets its count)
                try:
                    return step(*args, **kwargs)
                finally:
                    self.total_flops += flops.get_total_flops()
        return run

    def __enter__(self):
        def pre(module, _args):
            if isinstance(module, (PlainNet, QuantPlainNet)):
                self.calls["quant" if isinstance(module, QuantPlainNet) else "float"] += 1
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(pre)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_quantize_diagnoses_without_a_forward_pass_of_its_own(tmp_path, plain_and_images, monkeypatch):
    """The pass count, counted: with the default diagnostics `quantize` runs exactly the torch
    forwards it runs with none, and its conv/matmul work grows by under one FP32 pass over the
    diagnostics' sample (the own-error figure: on this narrow model every channel, one quantized
    pass of the convs; a quarter of one at real widths)."""
    plain = plain_and_images[0]
    x = torch.randn(96, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    counted = {}
    for mode in ("off", "sample"):
        with monkeypatch.context() as m, Counting(m) as c:
            result = quantize(plain, output_dir=tmp_path / mode, calib_data=x, calib_samples=64, calib_method="max",
                              diagnostics=mode, allow_mismatch=True, eval_limit=40)
        counted[mode] = (dict(c.calls), c.total_flops, result.report)
    sample = counted["sample"][2]
    assert sample["diagnostics"] == {"mode": "sample", "images": 32}
    with FlopCounterMode(display=False) as one_pass, torch.no_grad():
        plain(x[:32])
    assert counted["sample"][0] == counted["off"][0]  # not one forward more
    added = (counted["sample"][1] - counted["off"][1]) / one_pass.get_total_flops()
    assert 0.05 < added <= 1.0, added  # the own figure, and no more
    assert sample["layers_summary"]["ranked_by"] == "own_sqnr_db" and len(sample["layers"]) == len(QuantPlainNet(plain).layers())
    assert counted["off"][2]["layers"] == [] and counted["off"][2]["diagnostics"]["images"] == 0
    assert sample["timings"]["diagnostics_s"] > 0


def test_passes_of_their_own_are_counted_where_they_run(models):
    """Where no pass ran anyway (no probe, or `full`), the diagnostics' own passes show in the
    same counts: one float and one fake-quant forward per batch of 8, and `full` one more per layer."""
    plain, qnet, x = models  # 10 images: two batches
    layers = len(qnet.layers())
    with Counting() as own, FlopCounterMode(display=False) as own_flops:
        D.diagnose(plain, qnet, x, mode="sample")
    with Counting() as full, FlopCounterMode(display=False) as full_flops:
        records = D.diagnose(plain, qnet, x, mode="full")
    with FlopCounterMode(display=False) as one_pass, torch.no_grad():
        plain(x)
    assert own.calls == {"float": 2, "quant": 2}
    assert own_flops.get_total_flops() / one_pass.get_total_flops() > 2  # float + fake-quant + own
    assert full.calls == {"float": 3, "quant": 2 + layers}
    assert full_flops.get_total_flops() / one_pass.get_total_flops() > layers
    assert all(r.isolated_sqnr_db is not None for r in records)


def test_a_planted_badly_quantized_layer_ranks_first_and_sample_agrees_with_full(models):
    plain, qnet, x = models
    victim = "stage2.1.conv"
    layer = qnet.layers()[victim]  # its input grid 64x too coarse: a range far too wide
    layer.input_quantizer.set_amax(layer.input_quantizer.amax * 64)
    sample = D.diagnose(plain, qnet, x, mode="sample")
    full = D.diagnose(plain, qnet, x, mode="full")
    assert D.summary(sample)["ranked_by"] == "own_sqnr_db" and D.summary(sample)["most_sensitive_layers"][0] == victim
    assert D.summary(full)["ranked_by"] == "isolated_sqnr_db" and D.summary(full)["most_sensitive_layers"][0] == victim
    for s, f in zip(sample, full):  # where they overlap: the same figures (own: a share of channels)
        assert s.layer == f.layer and s.isolated_sqnr_db is None and f.isolated_sqnr_db is not None
        same = {k: v for k, v in s.to_dict().items() if k not in ("own_sqnr_db", "isolated_sqnr_db")}
        assert same == pytest.approx({k: f.to_dict()[k] for k in same}), s.layer
        assert s.own_sqnr_db == pytest.approx(f.own_sqnr_db, abs=1.5), s.layer
    bad = {r.layer: r for r in sample}[victim]
    assert bad.own_sqnr_db < min(r.own_sqnr_db for r in sample if r.layer != victim) - 10
    qnet.disable(victim)
    again = {r.layer: r for r in D.diagnose(plain, qnet, x, mode="sample")}
    assert again[victim].to_dict()["own_sqnr_db"] is None  # float: no error of its own (inf -> None in JSON)
    assert math.isinf(again[victim].own_sqnr_db)
    assert D.diagnose(plain, qnet, x, mode="off") == []
    with pytest.raises(Exception, match="--diagnostics"):
        D.diagnose(plain, qnet, x, mode="fast")
