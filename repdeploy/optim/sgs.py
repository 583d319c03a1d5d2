"""Spatial Gradient Scaling (SGS): a spatial gradient multiplier per conv, from its input's statistics.

A multi-branch block (3x3 + 1x1 + identity) trained with SGD moves its merged kernel like one
3x3 kernel whose gradient is scaled more at the centre tap than at the border. SGS keeps the
plain conv and chooses that spatial scaling from data instead of from branches: for each conv
with a kh x kw kernel, the scale of tap (dy, dx) grows with how much a pixel of the conv's input
tells about its neighbour at that displacement, measured as normalised mutual information

    NMI(X; Y) = 2 I(X; Y) / (H(X) + H(Y))      (1 for identical maps, 0 for independent ones)

from a 2-D histogram with Sturges' bin count (ceil(log2 n) + 1) per input channel, averaged over
channels, boosted by f(x) = k x / ((k - 1) x + 1) with k = 5, the centre fixed to 1, and the
matrix normalised to mean 1 (so the global step size is unchanged). It is a producer for the
shared `MultiplierMap` (applied to the gradient for SGD, where it is exact, and to the update
for AdamW/AGD, whose normalisation would cancel it), refreshed every few epochs as the features
change.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data import ImageDataset, calibration_sample
from ..errors import InputError
from .multipliers import MultiplierMap

PRODUCER = "sgs"
BOOST_K = 5.0


def sturges_bins(n: int) -> int:
    """Sturges' rule: ceil(log2 n) + 1 bins for n samples."""
    return int(math.ceil(math.log2(max(2, n)))) + 1


def boost(x: torch.Tensor, k: float = BOOST_K) -> torch.Tensor:
    """f(x) = k x / ((k - 1) x + 1): lifts small dependencies, keeps f(0) = 0 and f(1) = 1."""
    return k * x / ((k - 1) * x + 1)


def _quantise(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bins between each row's min and max (rows are channels)."""
    lo = values.min(dim=1, keepdim=True).values
    hi = values.max(dim=1, keepdim=True).values
    width = (hi - lo).clamp_min(1e-12)
    return ((values - lo) / width * bins).long().clamp_(0, bins - 1)


def _entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=dims)


def normalised_mutual_information(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row NMI of paired samples a[c, j], b[c, j]; NaN for rows where either side is constant."""
    channels, n = a.shape
    bins = sturges_bins(n)
    qa, qb = _quantise(a, bins), _quantise(b, bins)
    offset = torch.arange(channels).view(-1, 1) * bins * bins
    joint = torch.bincount((offset + qa * bins + qb).flatten(), minlength=channels * bins * bins)
    p = joint.view(channels, bins, bins).double() / n
    hx, hy, hxy = _entropy(p.sum(2), (1,)), _entropy(p.sum(1), (1,)), _entropy(p, (1, 2))
    mi = hx + hy - hxy
    denom = hx + hy
    informative = (hx > 1e-12) & (hy > 1e-12)  # a constant channel says nothing either way
    nmi = torch.where(informative, 2 * mi / denom.clamp_min(1e-12), torch.full_like(denom, float("nan")))
    return nmi.clamp(0.0, 1.0).float()


def scaling_matrix(features: torch.Tensor, kernel_size: tuple[int, int] = (3, 3), k: float = BOOST_K) -> torch.Tensor:
    """The SGS matrix (kh, kw) of a conv whose input is `features` (N, C, H, W): positive, mean 1."""
    if features.dim() != 4:
        raise InputError(f"SGS needs (N, C, H, W) features, got shape {tuple(features.shape)}")
    kh, kw = kernel_size
    n, c, h, w = features.shape
    ch, cw = kh // 2, kw // 2
    x = features.detach().float().transpose(0, 1)  # (C, N, H, W): statistics per channel
    matrix = torch.ones(kh, kw)
    for i in range(kh):
        for j in range(kw):
            dy, dx = i - ch, j - cw
            if (dy, dx) == (0, 0) or abs(dy) >= h or abs(dx) >= w:
                continue
            # Pixel (y, x) and its neighbour (y + dy, x + dx), over the positions where both exist.
            centre = x[:, :, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            neighbour = x[:, :, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
            nmi = normalised_mutual_information(centre.reshape(c, -1), neighbour.reshape(c, -1))
            valid = nmi[torch.isfinite(nmi)]
            # All channels constant (e.g. dead ReLUs): no evidence, so no preference.
            matrix[i, j] = boost(valid.mean(), k) if valid.numel() else 1.0
    matrix = matrix.clamp_min(1e-3)  # stays positive even when neighbours are independent
    return matrix / matrix.mean()


def spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every conv with a spatial kernel (SGS leaves 1x1 convs alone: they have one tap)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and (m.kernel_size[0] > 1 or m.kernel_size[1] > 1)]


@torch.no_grad()
def compute_sgs(model: nn.Module, x: torch.Tensor, k: float = BOOST_K) -> dict[str, torch.Tensor]:
    """name of each spatial conv weight -> its (1, 1, kh, kw) SGS multiplier, from one batch x.

    The model runs in eval mode so the statistics pass does not move BN running averages.
    """
    convs = spatial_convs(model)
    captured: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _module, inp, _out, name=name: captured.__setitem__(name, inp[0]))
               for name, m in convs]
    was_training = model.training
    try:
        model.eval()
        first = next(iter(model.parameters()), None)
        model(x.to(first.device) if first is not None else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, m in convs:
        # The histograms run on the CPU: same statistics whichever device ran the forward.
        matrix = scaling_matrix(captured[name].float().cpu(), m.kernel_size, k)
        out[f"{name}.weight" if name else "weight"] = matrix.view(1, 1, *m.kernel_size)
    return out


class SpatialGradientScaling:
    """Training hook: recomputes the SGS multipliers every `refresh_every` epochs.

    The statistics come from a fixed, seeded sample of the training data, so runs and resumes
    are reproducible.
    """

    def __init__(self, data: ImageDataset, refresh_every: int = 5, samples: int = 64, seed: int = 0,
                 k: float = BOOST_K) -> None:
        if refresh_every < 1:
            raise InputError(f"SGS refresh interval must be >= 1 epoch, got {refresh_every}")
        self.batch = next(calibration_sample(data, samples, seed).batches(samples))[0]
        self.refresh_every = refresh_every
        self.k = k
        self.last: dict[str, torch.Tensor] = {}

    def on_epoch_start(self, model: nn.Module, epoch: int, multipliers: MultiplierMap) -> None:
        if epoch % self.refresh_every:
            return
        self.last = compute_sgs(model, self.batch, self.k)
        for name, m in self.last.items():
            multipliers.set(PRODUCER, name, m)


__all__ = [
    "SpatialGradientScaling", "compute_sgs", "scaling_matrix", "normalised_mutual_information",
    "sturges_bins", "boost", "spatial_convs", "PRODUCER",
]
