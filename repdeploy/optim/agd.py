"""Automatic Gradient Descent (AGD, Bernstein et al. 2023): an optimizer without a learning rate.

For L weight matrices W_k of shape d_k x d_{k-1}:

    G   = (1/L) sum_k sqrt(d_k / d_{k-1}) ||grad W_k||_F
    eta = log((1 + sqrt(1 + 4 G)) / 2)
    W_k <- W_k - (eta / L) sqrt(d_k / d_{k-1}) grad W_k / ||grad W_k||_F

with orthogonal initialisation scaled by sqrt(d_k / d_{k-1}). A conv kernel (o, i, kh, kw) is
treated as kh*kw matrices of o x i (one per spatial tap), each normalised by its own Frobenius
norm, with the factor sqrt(o / (i kh kw)) = sqrt(fan_out / fan_in) so that a kernel counts as one
layer. Because each tap is normalised separately, a spatial gradient multiplier (SGS, RepOpt)
would cancel; multipliers are therefore applied to the update.

What AGD does not train, and why: its derivation covers weight matrices only. Biases and BN
affine parameters (gamma, beta) are frozen at their initial values (0 and 1, 0), which makes each
BN the affine-free normalisation the reference uses while keeping the usual checkpoint keys;
`prepare_for_agd` does this and applies the initialisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from .multipliers import UPDATE, MultiplierMap


def _matrix_scale(p: torch.Tensor) -> float:
    """sqrt(fan_out / fan_in) of a linear (out, in) or conv (out, in/groups, kh, kw) weight."""
    fan_out, fan_in = p.shape[0], p.shape[1]
    area = p.shape[2] * p.shape[3] if p.dim() == 4 else 1
    return math.sqrt(fan_out / (fan_in * area))


def _slice_norms(g: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each (out, in) matrix: one for a linear layer, kh*kw for a conv."""
    return g.norm(dim=(0, 1), keepdim=True)


class AGD(torch.optim.Optimizer):
    """AGD over weight matrices and conv kernels (2-D and 4-D parameters only).

    `gain` scales every update (1 = the published method). `step()` returns eta.
    """

    position = UPDATE

    def __init__(self, params, multipliers: MultiplierMap | None = None, gain: float = 1.0) -> None:
        super().__init__(params, dict(gain=gain))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() not in (2, 4):
                    raise InputError(
                        f"AGD trains weight matrices and conv kernels only, got a {p.dim()}-D parameter; "
                        "freeze biases and BN affine parameters (see repdeploy.optim.agd.prepare_for_agd)"
                    )
        self.multipliers = multipliers
        self.depth = sum(len(g["params"]) for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure=None) -> float:  # type: ignore[override]
        if closure is not None:
            raise InputError("AGD does not take a closure")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return 0.0
        depth = self.depth
        total = sum(_matrix_scale(p) * _slice_norms(p.grad).sum() for p in params)
        g_sum = float(total) / depth
        eta = math.log(0.5 * (1 + math.sqrt(1 + 4 * g_sum)))
        by_param = self.multipliers.by_param() if self.multipliers else {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad / _slice_norms(p.grad).clamp_min(1e-30) * (_matrix_scale(p) * eta / depth)
                m = by_param.get(id(p))
                if m is not None:
                    update = update * m
                p.sub_(update, alpha=group["gain"])
        return eta


@torch.no_grad()
def agd_init(p: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Orthogonal initialisation of each (out, in) slice, scaled by sqrt(fan_out / fan_in)."""
    if p.dim() == 2:
        slices = [p]
    elif p.dim() == 4:
        slices = [p[:, :, i, j] for i in range(p.shape[2]) for j in range(p.shape[3])]
    else:
        raise InputError(f"AGD initialises 2-D and 4-D weights only, got {p.dim()}-D")
    for s in slices:
        tmp = torch.empty_like(s)
        # nn.init.orthogonal_ has no generator argument: draw the Gaussian ourselves, then QR.
        a = torch.randn(max(s.shape), min(s.shape), generator=generator)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r)).view(1, -1)
        tmp.copy_(q if s.shape[0] >= s.shape[1] else q.T)
        s.copy_(tmp)
    p.mul_(_matrix_scale(p))


@torch.no_grad()
def prepare_for_agd(model: nn.Module, seed: int = 0) -> list[str]:
    """Freeze biases and BN affine parameters at their neutral values and AGD-initialise the rest.

    Returns the names of the parameters AGD will train.
    """
    g = torch.Generator().manual_seed(seed)
    trained = []
    for name, p in model.named_parameters():
        if p.dim() in (2, 4):
            agd_init(p, g)
            p.requires_grad_(True)
            trained.append(name)
        else:
            p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.zero_()
    return trained


__all__ = ["AGD", "agd_init", "prepare_for_agd"]
