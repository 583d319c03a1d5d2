"""The sharpness of a loss, and the largest SGD learning rate it leaves stable.

Gradient descent on a quadratic diverges once lr x (the Hessian's top eigenvalue) exceeds 2.
A fine-tune's default lr that suits one model can therefore send another to chance: QAT with
distillation from a model with large logits has a loss far sharper than its training had
(docs/benchmarks.md, stress case). `sharpness` measures it on one batch by power iteration
on Hessian-vector products (double backward; torch's fake-quant ops support it), and
`stable_lr` caps a default lr below the edge.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

# 2 is the edge for full-batch descent on a quadratic; 1.5 leaves a margin for batch noise and
# for a sharpness estimated on one batch (measured: docs/benchmarks.md, stress case).
STABLE_LR_FACTOR = 1.5


def sharpness(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
              x: torch.Tensor, y: torch.Tensor, multipliers=None, *, params: Sequence[nn.Parameter] | None = None,
              iterations: int = 20, seed: int = 0) -> float:
    """Largest eigenvalue of the loss Hessian in `params` (default: every trainable one) on (x, y).

    With gradient multipliers M (a MultiplierMap) it is the top eigenvalue of M H, the curvature
    that SGD's multiplied step sees. Seeded: the same batch and seed give the same figure.

    >>> sharpness(qnet, loss_fn, x, y, multipliers)          # doctest: +SKIP
    873.9
    """
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    mult = multipliers.by_param() if multipliers else {}
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g).to(p.device) for p in params]
    grads = torch.autograd.grad(loss_fn(model, x, y), params, create_graph=True)
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        hv = [h * mult[id(p)] if id(p) in mult else h for h, p in zip(hv, params)]
        eigenvalue = float(sum((a * b).sum() for a, b in zip(hv, v)))
        v = [h.detach() for h in hv]
    return eigenvalue


def stable_lr(default: float, curvature: float) -> float:
    """`default`, capped at STABLE_LR_FACTOR / sharpness (below gradient descent's edge, 2 / sharpness)."""
    return default if curvature <= 0 else min(default, STABLE_LR_FACTOR / curvature)


__all__ = ["sharpness", "stable_lr", "STABLE_LR_FACTOR"]
