"""The weight fake-quant cache (quantizer.TensorQuantizer._cached): the same numbers as computing
it every forward, recomputed whenever the weight or its range changes, never under autograd."""

from __future__ import annotations

import torch

from repdeploy import load_fused
from repdeploy.quant.fake_quant import TensorQuantizer
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.zoo import zoo_entry


def weight_quantizer():
    q = TensorQuantizer("w", per_channel=True)
    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0)))
    q.set_amax(w.detach().abs().flatten(1).amax(1))
    return q, w


def test_a_cached_weight_is_the_computed_one_until_the_weight_or_range_changes():
    q, w = weight_quantizer()
    with torch.no_grad():
        first = q(w)
        assert q(w) is first  # hit: not recomputed
        assert torch.equal(first, q._fake_quantize(w))
        w.mul_(1.5)  # in place (an optimizer step, load_state_dict): the version counter moves
        second = q(w)
        assert second is not first and torch.equal(second, q._fake_quantize(w))
        q.set_amax(q.amax * 2)  # a new range
        third = q(w)
        assert third is not second and torch.equal(third, q._fake_quantize(w))
        other = w.detach().clone()  # another tensor with equal values and version: its own entry
        assert q(other) is not third
    assert q(w).grad_fn is not None  # under autograd: computed every time, with its gradient


def test_a_model_gives_the_same_logits_cached_or_not_and_after_load_state_dict():
    qnet = QuantPlainNet(load_fused(zoo_entry("repvgg").file).plain, "ort")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for q in qnet.activation_quantizers().values():
        q.set_amax(4.0)
    with torch.no_grad():
        cached = qnet(x)
        uncached = TensorQuantizer._cached
        try:
            TensorQuantizer._cached = TensorQuantizer._fake_quantize
            assert torch.equal(qnet(x), cached)
        finally:
            TensorQuantizer._cached = uncached
        state = {k: v * 0.5 if k.endswith("conv.weight") else v for k, v in qnet.state_dict().items()}
        qnet.load_state_dict(state)
        qnet.set_weight_ranges()
        after = qnet(x)
        TensorQuantizer._cached = TensorQuantizer._fake_quantize
        try:
            assert torch.equal(qnet(x), after)
        finally:
            TensorQuantizer._cached = uncached
    assert not torch.equal(after, cached)
