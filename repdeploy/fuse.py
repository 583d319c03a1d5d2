"""Structural re-parameterization: any trained RepVGG-family module -> PlainNet, verified.

Every fuse is followed by an equivalence check on seeded random input in eval mode; a fused
model that does not reproduce the trained logits is an error, never a warning, because a
silently wrong deployment is the worst outcome for a user.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FusionError
from .models import PlainNet, RepOptVGG, RepOptVGGSearch, RepVGG
from .models.layers import ConvBN, StagedNet
from .models.plain import PlainBlock
from .models.repoptvgg import RepOptVGGBlock, RepOptVGGSearchBlock
from .models.repvgg import RepVGGBlock
from .tolerance import TOLERANCES, figures

# The fusion entry of the one tolerance table (tolerance.py): max |fused - trained| over the logit
# scale, and in absolute logits (float32 fusion of B1g4 with random BN statistics, logit scale 3e3,
# errs by 2e-3; trained models by ~1e-5).
DEFAULT_TOLERANCE = TOLERANCES["fusion"].max_rel
ABSOLUTE_TOLERANCE = TOLERANCES["fusion"].max_abs


def fold_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BN into the conv before it: k * t, beta - mean * t, t = gamma / std."""
    std = (bn.running_var + bn.eps).sqrt()
    t = bn.weight / std
    return kernel * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


def pad_to_3x3(kernel: torch.Tensor) -> torch.Tensor:
    """A 1x1 kernel as a 3x3 kernel with the value at the centre tap."""
    return F.pad(kernel, [1, 1, 1, 1])


def identity_kernel(channels: int, groups: int, like: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel of x -> x for a (grouped) conv: 1 at [i, i mod (C/g), 1, 1].

    The `mod` places each output channel's 1 on its own input inside its group.
    """
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 3, 3, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels)
    kernel[idx, idx % per_group, 1, 1] = 1.0
    return kernel


def _fuse_conv_bn(branch: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = branch.conv.weight
    if kernel.shape[-1] == 1:
        kernel = pad_to_3x3(kernel)
    return fold_bn(kernel, branch.bn)


@torch.no_grad()
def fuse_branches(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The single 3x3 kernel and bias equal to one trained block (before SE and ReLU)."""
    if isinstance(block, RepVGGBlock):
        kernel, bias = _fuse_conv_bn(block.rbr_dense)
        k1, b1 = _fuse_conv_bn(block.rbr_1x1)
        kernel, bias = kernel + k1, bias + b1
        if block.rbr_identity is not None:
            eye = identity_kernel(block.layer.in_channels, block.layer.groups, kernel)
            ki, bi = fold_bn(eye, block.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias
    if isinstance(block, RepOptVGGBlock):
        return fold_bn(block.conv.weight, block.bn)
    if isinstance(block, RepOptVGGSearchBlock):
        # The scales multiply each branch before the shared BN, so merge first, then fold.
        kernel = block.conv.weight * block.scale_conv.weight.view(-1, 1, 1, 1)
        kernel = kernel + pad_to_3x3(block.conv_1x1.weight) * block.scale_1x1.weight.view(-1, 1, 1, 1)
        if block.scale_identity is not None:
            eye = identity_kernel(block.layer.in_channels, 1, kernel)
            kernel = kernel + eye * block.scale_identity.weight.view(-1, 1, 1, 1)
        return fold_bn(kernel, block.bn)
    if isinstance(block, PlainBlock):
        return block.conv.weight.clone(), block.conv.bias.clone()
    raise FusionError(f"cannot fuse block of type {type(block).__name__}")


@torch.no_grad()
def to_plain(model: StagedNet) -> PlainNet:
    """Build the PlainNet of a trained model (any family, any form) without verifying it."""
    if not isinstance(model, (RepVGG, RepOptVGG, RepOptVGGSearch, PlainNet)):
        raise FusionError(f"cannot fuse a {type(model).__name__}; expected a RepVGG-family model")
    model = model.eval()
    plain = PlainNet(model.spec).eval()
    for (name, trained), (_, fused) in zip(model.named_blocks(), plain.named_blocks()):
        kernel, bias = fuse_branches(trained)
        fused.conv.weight.copy_(kernel)
        fused.conv.bias.copy_(bias)
        se = getattr(trained, "se", None)
        if se is not None:
            fused.se.load_state_dict(se.state_dict())
    plain.linear.load_state_dict(model.linear.state_dict())
    return plain


@dataclass
class Equivalence:
    """How closely the fused model reproduces the trained one on seeded random input."""

    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff over the largest |logit| of the trained model
    logit_scale: float
    tolerance: float
    input_shape: tuple[int, ...]
    seed: int

    @property
    def passed(self) -> bool:
        finite = math.isfinite(self.max_abs_diff) and math.isfinite(self.logit_scale)
        return finite and self.max_rel_diff <= self.tolerance and self.max_abs_diff <= ABSOLUTE_TOLERANCE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["passed"] = self.passed
        return d


def check_size(spec) -> int:
    # The check runs every weight whatever the resolution; 64 px keeps it fast for B3/D2se.
    return min(spec.input_size, 64)


@torch.no_grad()
def compare(
    reference: nn.Module,
    candidate: nn.Module,
    input_shape: tuple[int, ...],
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Equivalence:
    """Run both modules in eval mode on the same seeded input and measure the logit error (tolerance.figures)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=generator)
    f = figures(reference.eval()(x).numpy(), candidate.eval()(x).numpy())
    return Equivalence(f["max_abs_diff"], f["max_rel_diff"], f["logit_scale"], tolerance, tuple(input_shape), seed)


@dataclass
class FuseResult:
    plain: PlainNet
    equivalence: Equivalence


def fuse(
    model: StagedNet,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = 2,
    input_size: int | None = None,
    seed: int = 0,
) -> FuseResult:
    """Fuse a trained model into a PlainNet and prove the two compute the same function.

    >>> from repdeploy.models import RepVGG, get_spec
    >>> fuse(RepVGG(get_spec("RepVGG-mini"))).equivalence.passed
    True

    Raises FusionError when the relative logit error exceeds `tolerance`.
    """
    plain = to_plain(model)
    size = input_size or check_size(model.spec)
    shape = (batch, model.spec.in_channels, size, size)
    eq = compare(model, plain, shape, seed=seed, tolerance=tolerance)
    if not eq.passed:
        raise FusionError(
            f"{model.spec.name}: fused model differs from the trained one by {eq.max_abs_diff:.3g} "
            f"({eq.max_rel_diff:.3g} of the logit scale {eq.logit_scale:.3g}; allowed: {tolerance:g} relative and "
            f"{ABSOLUTE_TOLERANCE:g} absolute); check the BN statistics in the checkpoint for extreme values"
        )
    return FuseResult(plain, eq)
