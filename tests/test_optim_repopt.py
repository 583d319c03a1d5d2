"""RepOptimizer: branch training with constant scales == one merged kernel with multipliers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repdeploy import CheckpointError, InputError
from repdeploy.models import build, get_spec
from repdeploy.optim import (
    AdamWWithMultipliers,
    MultiplierMap,
    SGDWithMultipliers,
    load_scales,
    merged_kernel,
    repopt_initialize,
    repopt_multiplier,
    save_scales,
    scales_from_search_model,
    set_repopt_multipliers,
)
from repdeploy.optim.repopt import expected_scale_keys

STEPS = 20


class Branches(nn.Module):
    """CSLA block without BN: s*conv3x3 + t*conv1x1 (+ trainable identity diag d), s and t constant."""

    def __init__(self, c_in, c_out, identity, s, t):
        super().__init__()
        self.w3 = nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 0.2)
        self.w1 = nn.Parameter(torch.randn(c_out, c_in, 1, 1) * 0.2)
        self.d = nn.Parameter(torch.ones(c_out)) if identity else None
        self.s, self.t = s, t

    def forward(self, x):
        y = self.s.view(1, -1, 1, 1) * F.conv2d(x, self.w3, padding=1)
        y = y + self.t.view(1, -1, 1, 1) * F.conv2d(x, self.w1)
        if self.d is not None:
            y = y + self.d.view(1, -1, 1, 1) * x
        return y

    def merged(self):
        k = merged_kernel(self.w3, self.w1, self.s, self.t, has_identity=False)
        if self.d is not None:
            idx = torch.arange(k.shape[0])
            k = k.clone()
            k[idx, idx, 1, 1] += self.d
        return k


class Plain(nn.Module):
    def __init__(self, kernel):
        super().__init__()
        self.weight = nn.Parameter(kernel.detach().clone())

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


def _loss(out, target):
    # Non-linear in the weights so the gradients change from step to step.
    return ((torch.tanh(out) - target) ** 2).mean()


def _run(kind, identity):
    torch.manual_seed(1)
    c_in, c_out = (4, 4) if identity else (3, 5)
    s = torch.tensor([1.3, -0.7, 0.4, 0.9, 1.1][:c_out])  # a negative scale, as searches produce
    t = torch.tensor([0.5, 1.2, -0.3, 0.8, 0.6][:c_out])
    branches = Branches(c_in, c_out, identity, s, t)
    # Initialisation rule: the plain kernel starts at the merged branches.
    plain = Plain(merged_kernel(branches.w3, branches.w1, s, t, identity))
    assert torch.allclose(plain.weight, branches.merged())
    mults = MultiplierMap(plain)
    mults.set("repopt", "weight", repopt_multiplier(plain.weight.shape, s, t, identity, kind))
    if kind == "sgd":
        opt_b = torch.optim.SGD(branches.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
        opt_p = SGDWithMultipliers(plain.parameters(), mults, lr=0.05, momentum=0.9, weight_decay=1e-2)
    else:
        opt_b = torch.optim.AdamW(branches.parameters(), lr=1e-2, weight_decay=5e-2)
        opt_p = AdamWWithMultipliers(plain.parameters(), mults, lr=1e-2, weight_decay=5e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        x = torch.randn(4, c_in, 6, 6, generator=g)
        target = torch.randn(4, c_out, 6, 6, generator=g) * 0.5
        for model, opt in ((branches, opt_b), (plain, opt_p)):
            opt.zero_grad()
            _loss(model(x), target).backward()
            opt.step()
    moved = (branches.merged() - merged_kernel(*_initial(c_in, c_out, identity, s, t))).abs().max()
    return (branches.merged() - plain.weight).abs().max().item(), moved.item()


def _initial(c_in, c_out, identity, s, t):
    torch.manual_seed(1)
    b = Branches(c_in, c_out, identity, s, t)
    return b.w3, b.w1, s, t, identity


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("identity", [True, False])
def test_branch_training_equals_repoptimizer(kind, identity):
    diff, moved = _run(kind, identity)
    assert moved > 0.05  # the weights really trained
    assert diff <= 1e-5, f"{kind} identity={identity}: merged weights differ by {diff}"


def test_multiplier_values():
    s, t = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    m = repopt_multiplier((2, 2, 3, 3), s, t, True, "sgd")
    assert m[0, 1, 0, 0] == 4.0 and m[1, 0, 2, 2] == 1.0
    assert m[0, 0, 1, 1] == 4.0 + 0.25 + 1.0 and m[0, 1, 1, 1] == 4.25 and m[1, 1, 1, 1] == 1 + 9 + 1
    a = repopt_multiplier((2, 2, 3, 3), s, t, False, "adamw")
    assert a[1, 0, 0, 0] == 1.0 and a[1, 1, 1, 1] == 4.0
    with pytest.raises(InputError):
        repopt_multiplier((2, 2, 3, 3), s, t, True, "lamb")


def test_weight_decay_is_not_multiplied():
    plain = Plain(torch.ones(1, 1, 3, 3))
    mults = MultiplierMap(plain)
    mults.set("repopt", "weight", torch.full((1, 1, 3, 3), 10.0))
    opt = SGDWithMultipliers(plain.parameters(), mults, lr=0.1, weight_decay=0.5)
    plain.weight.grad = torch.zeros(1, 1, 3, 3)
    opt.step()
    assert torch.allclose(plain.weight, torch.full((1, 1, 3, 3), 1 - 0.1 * 0.5))


def _searched_scales(spec, seed=0):
    torch.manual_seed(seed)
    hs = build(spec, "hs")
    with torch.no_grad():
        for name, p in hs.named_parameters():
            if ".scale_" in name:
                p.copy_(torch.randn_like(p))
    return scales_from_search_model(hs)


def test_scales_file_roundtrip_and_model_multipliers(tmp_path):
    spec = get_spec("RepOpt-VGG-mini")
    scales = _searched_scales(spec)
    assert set(scales) == set(expected_scale_keys(spec))
    assert "stage0.scale_conv.weight" in scales and "stage2.1.scale_identity.weight" in scales
    save_scales(scales, tmp_path / "s.pth")
    raw = torch.load(tmp_path / "s.pth", weights_only=True)  # upstream format: plain dict of 1-D tensors
    assert all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in raw.values())
    loaded = load_scales(tmp_path / "s.pth", spec)
    assert all(torch.equal(loaded[k], scales[k]) for k in scales)

    model = build(spec, "target")
    mults = MultiplierMap(model)
    set_repopt_multipliers(mults, spec, loaded, "sgd")
    assert len(mults) == len(spec.layers())
    m = mults.combined()["stage2.1.conv.weight"]
    s, t = scales["stage2.1.scale_conv.weight"], scales["stage2.1.scale_1x1.weight"]
    assert torch.allclose(m[:, :, 0, 0], (s**2).view(-1, 1).expand(32, 32))
    assert torch.allclose(m[3, 3, 1, 1], s[3] ** 2 + t[3] ** 2 + 1)

    before = model.stage2[1].conv.weight.clone()
    repopt_initialize(model, loaded, torch.Generator().manual_seed(0))
    w = model.stage2[1].conv.weight
    # Border taps are s * W3x3 exactly; the centre adds the 1x1 draw and the identity.
    assert torch.allclose(w[:, :, 0, 0], before[:, :, 0, 0] * s.view(-1, 1))
    assert not torch.allclose(w[:, :, 1, 1], before[:, :, 1, 1] * s.view(-1, 1))


def test_bad_scales_files_are_refused(tmp_path):
    spec = get_spec("RepOpt-VGG-mini")
    scales = _searched_scales(spec)
    del scales["stage2.1.scale_identity.weight"]
    save_scales(scales, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing.*hypersearch"):
        load_scales(tmp_path / "partial.pth", spec)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_scales(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_scales(tmp_path / "nope.pth")
    torch.save(build(spec, "target").state_dict(), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="model checkpoint rather than a scales file"):
        load_scales(tmp_path / "model.pth")
    wide = _searched_scales(get_spec("RepOpt-VGG-mini"))
    wide["stage0.scale_conv.weight"] = torch.ones(7)
    with pytest.raises(CheckpointError, match="1-D tensor of 16"):
        set_repopt_multipliers(MultiplierMap(build(spec, "target")), spec, wide)


def test_gradient_clipping_is_refused_with_multipliers():
    from repdeploy.data import open_dataset
    from repdeploy.training import TrainConfig, train

    spec = get_spec("RepOpt-VGG-mini")
    model = build(spec, "target")
    mults = MultiplierMap(model)
    set_repopt_multipliers(mults, spec, _searched_scales(spec))
    data = open_dataset("builtin", split="val", image_size=32)
    with pytest.raises(InputError, match="gradient clipping breaks"):
        train(model, lambda g, m: SGDWithMultipliers(g, m, lr=0.1), data, config=TrainConfig(clip_grad_norm=1.0),
              multipliers=mults)
