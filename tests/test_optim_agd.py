"""AGD: one step by hand, conv slices, initialisation, and learning without a learning rate."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repdeploy import InputError
from repdeploy.optim import AGD, agd_init, prepare_for_agd


def test_one_step_matches_hand_computation():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(8, 4) * 0.5)
    w2 = nn.Parameter(torch.randn(3, 8) * 0.5)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    F.cross_entropy(F.relu(x @ w1.T) @ w2.T, y).backward()
    g1, g2 = w1.grad.clone(), w2.grad.clone()
    before1, before2 = w1.detach().clone(), w2.detach().clone()

    # docs/facts.md §3, written out for L = 2 layers of shapes 8x4 and 3x8.
    big_g = 0.5 * (math.sqrt(8 / 4) * g1.norm().item() + math.sqrt(3 / 8) * g2.norm().item())
    eta = math.log((1 + math.sqrt(1 + 4 * big_g)) / 2)
    expect1 = before1 - (eta / 2) * math.sqrt(8 / 4) * g1 / g1.norm()
    expect2 = before2 - (eta / 2) * math.sqrt(3 / 8) * g2 / g2.norm()

    returned = AGD([w1, w2]).step()
    assert math.isclose(returned, eta, rel_tol=1e-6)
    assert torch.allclose(w1, expect1, atol=1e-6) and torch.allclose(w2, expect2, atol=1e-6)


def test_conv_taps_are_separate_matrices():
    w = nn.Parameter(torch.randn(6, 2, 3, 3))
    w.grad = torch.randn(6, 2, 3, 3)
    w.grad[:, :, 0, 0] *= 100  # a huge tap must not dominate the others' step sizes
    before = w.detach().clone()
    eta = AGD([w]).step()
    step = before - w.detach()
    per_tap = step.norm(dim=(0, 1))
    # Each tap moves by (eta / L) * sqrt(fan_out / fan_in) in Frobenius norm, fan_in = 2 * 9.
    assert torch.allclose(per_tap, torch.full((3, 3), eta * math.sqrt(6 / 18)), rtol=1e-5)


def test_update_multiplier_survives_normalisation():
    from repdeploy.optim import MultiplierMap

    conv = nn.Conv2d(2, 2, 3, bias=False)
    mults = MultiplierMap(conv)
    prior = torch.ones(1, 1, 3, 3)
    prior[0, 0, 1, 1] = 3.0
    mults.set("sgs", "weight", prior)
    conv.weight.grad = torch.ones_like(conv.weight)
    before = conv.weight.detach().clone()
    AGD(conv.parameters(), mults).step()
    step = (before - conv.weight.detach()).norm(dim=(0, 1))
    assert torch.allclose(step[1, 1], 3 * step[0, 0])


def test_init_is_scaled_orthogonal_per_slice():
    w = torch.empty(8, 4, 3, 3)
    agd_init(w, torch.Generator().manual_seed(0))
    scale = math.sqrt(8 / (4 * 9))
    for i in range(3):
        for j in range(3):
            s = w[:, :, i, j] / scale
            assert torch.allclose(s.T @ s, torch.eye(4), atol=1e-5)
    lin = torch.empty(3, 10)
    agd_init(lin)
    assert torch.allclose((lin / math.sqrt(3 / 10)) @ (lin / math.sqrt(3 / 10)).T, torch.eye(3), atol=1e-5)


def test_refuses_biases_and_prepare_freezes_them():
    with pytest.raises(InputError, match="freeze biases"):
        AGD([nn.Parameter(torch.zeros(3))])
    from repdeploy.models import build, get_spec

    model = build(get_spec("RepVGG-mini"), "train")
    trained = prepare_for_agd(model)
    assert "linear.weight" in trained and "linear.bias" not in trained
    assert not model.stage0.rbr_dense.bn.weight.requires_grad
    assert torch.equal(model.stage0.rbr_dense.bn.weight, torch.ones(16))


def test_trains_small_model_on_builtin_data_without_a_learning_rate():
    from repdeploy.data import open_dataset
    from repdeploy.models import get_spec
    from repdeploy.training import train_architecture
    from repdeploy.training import TrainConfig

    data = open_dataset("builtin", split="train", image_size=16)
    subset = data.subset(range(512))
    probe_x, probe_y = next(data.subset(range(512, 768)).batches(256))
    # AGD takes no lr; `lr` here is AGD's gain, left at the published 1.
    model, result = train_architecture(get_spec("RepVGG-mini"), subset, None,
                                       TrainConfig(epochs=4, batch_size=16, weight_decay=0.0, augment="none",
                                                   label_smoothing=0.0),
                                       optimizer="agd")
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0] - 0.15, losses
    with torch.no_grad():
        assert F.cross_entropy(model(probe_x), probe_y).item() < math.log(10) - 0.1
