"""Spatial Gradient Scaling: the matrix, and the multiplier-map equivalence with branches."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from repdeploy.data import open_dataset
from repdeploy.models import build, get_spec
from repdeploy.optim import MultiplierMap, SGDWithMultipliers, SpatialGradientScaling, compute_sgs, scaling_matrix
from repdeploy.optim.sgs import boost, normalised_mutual_information, sturges_bins


def test_nmi_and_boost_and_sturges():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50_000, generator=g)
    assert torch.allclose(normalised_mutual_information(a, a), torch.ones(3))
    independent = normalised_mutual_information(a, torch.randn(3, 50_000, generator=g))
    assert (independent < 0.01).all()
    dependent = normalised_mutual_information(a, a + 0.5 * torch.randn(3, 50_000, generator=g))
    assert ((dependent > 0.2) & (dependent < 0.9)).all()
    assert torch.isnan(normalised_mutual_information(torch.zeros(1, 10), a[:1, :10])).all()
    assert sturges_bins(1024) == 11 and sturges_bins(1000) == 11
    assert boost(torch.tensor(0.0)) == 0 and boost(torch.tensor(1.0)) == 1
    assert math.isclose(boost(torch.tensor(0.2)).item(), 5 * 0.2 / (4 * 0.2 + 1), rel_tol=1e-6)


def test_matrix_positive_mean_one_centre_largest_and_follows_smoothness():
    digits = next(open_dataset("builtin", split="train", image_size=32).batches(64))[0]
    smooth = scaling_matrix(digits)
    noise = scaling_matrix(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    for m in (smooth, noise):
        assert m.shape == (3, 3) and (m > 0).all()
        assert abs(m.mean().item() - 1.0) < 1e-5
        assert m[1, 1] == m.max()
    # Upsampled digits are smooth, so neighbours carry information; i.i.d. noise carries none.
    assert smooth[0, 0] / smooth[1, 1] > 0.5
    assert noise[0, 0] / noise[1, 1] < 0.05
    # Horizontal and vertical neighbours of a smooth image share more than diagonal ones.
    assert smooth[1, 0] > smooth[0, 0]


def test_model_matrices_and_refresh_schedule():
    data = open_dataset("builtin", split="train", image_size=32)
    model = build(get_spec("RepVGG-mini"), "train")
    mats = compute_sgs(model, next(data.batches(32))[0])
    assert set(mats) == {f"{p}.rbr_dense.conv.weight" for p, _ in model.named_blocks()}
    assert all(m.shape == (1, 1, 3, 3) and (m > 0).all() for m in mats.values())
    assert model.training  # the statistics pass leaves the mode alone and BN stats untouched

    hook = SpatialGradientScaling(data, refresh_every=2, samples=32)
    mults = MultiplierMap(model)
    hook.on_epoch_start(model, 0, mults)
    first = {k: v.clone() for k, v in mults.combined().items()}
    assert len(first) == len(mats)
    with torch.no_grad():
        model.stage0.rbr_dense.conv.weight.mul_(-3)
    hook.on_epoch_start(model, 1, mults)  # not a refresh epoch
    assert all(torch.equal(first[k], v) for k, v in mults.combined().items())
    hook.on_epoch_start(model, 2, mults)
    assert not torch.equal(first["stage1.0.rbr_dense.conv.weight"], mults.combined()["stage1.0.rbr_dense.conv.weight"])


def test_sgd_with_spatial_multiplier_equals_two_branch_training():
    """3x3 + 1x1 branches with constant scales s, t == one 3x3 conv whose gradient is scaled by the
    spatial matrix s^2 + t^2 * centre (the multiplier map SGS produces, here written down)."""
    torch.manual_seed(0)
    s, t = 0.8, 1.5
    w3 = nn.Parameter(torch.randn(6, 4, 3, 3) * 0.2)
    w1 = nn.Parameter(torch.randn(6, 4, 1, 1) * 0.2)
    plain = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        plain.weight.copy_(s * w3 + t * F.pad(w1, [1, 1, 1, 1]))
    matrix = torch.full((3, 3), s * s)
    matrix[1, 1] += t * t
    mults = MultiplierMap(plain)
    mults.set("sgs", "weight", matrix.view(1, 1, 3, 3))
    opt_b = torch.optim.SGD([w3, w1], lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt_p = SGDWithMultipliers(plain.parameters(), mults, lr=0.05, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        x, target = torch.randn(2, 4, 7, 7, generator=g), torch.randn(2, 6, 7, 7, generator=g)
        for out, opt in ((s * F.conv2d(x, w3, padding=1) + t * F.conv2d(x, w1), opt_b), (plain(x), opt_p)):
            opt.zero_grad()
            ((torch.tanh(out) - target) ** 2).mean().backward()
            opt.step()
    merged = s * w3 + t * F.pad(w1, [1, 1, 1, 1])
    assert (merged - plain.weight).abs().max().item() <= 1e-5


def test_producers_combine_by_product():
    conv = nn.Conv2d(2, 2, 3, bias=False)
    mults = MultiplierMap(conv)
    mults.set("repopt", "weight", torch.full((2, 2, 3, 3), 2.0))
    mults.set("sgs", "weight", torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    conv.weight.grad = torch.ones_like(conv.weight)
    mults.apply_to_grads()
    assert torch.equal(conv.weight.grad[1, 0], 2 * torch.arange(1.0, 10.0).view(3, 3))
    assert mults.producers == ["repopt", "sgs"]
    restored = MultiplierMap(conv)
    restored.load_state_dict(mults.state_dict())
    assert torch.equal(restored.combined()["weight"], mults.combined()["weight"])


def test_gradient_clipping_is_refused_with_sgs():
    import pytest

    from repdeploy import InputError
    from repdeploy.training import train_architecture
    from repdeploy.training import TrainConfig

    data = open_dataset("builtin", split="val", image_size=16).subset(range(64))
    with pytest.raises(InputError, match="SpatialGradientScaling.*drop --clip-grad"):
        train_architecture(get_spec("RepVGG-mini"), data, config=TrainConfig(clip_grad_norm=1.0), sgs=True)
