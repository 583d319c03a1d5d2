"""Calibrators: activation statistics in, one clip threshold (amax) per tensor out.

Calibrators share one interface (like ONNX Runtime's calibrate.py): `collect(name, tensor)` is
fed every observed activation batch, `compute(qmax)` returns `name -> amax`. Histogram-based
methods keep one fixed-size histogram of |x| per tensor whose range doubles when a larger value
arrives (adjacent bins are merged), so memory does not grow with the number of images.

Methods:
- `max`: the largest |x| seen. Never clips, so one outlier spends the whole int8 range.
- `percentile`: the |x| below which `percentile` % of the values fall.
- `entropy`: TensorRT's KL-divergence search: the clip threshold whose `qmax + 1`-level
  quantized distribution is closest to the observed one (>= 2048 histogram bins).
- `mse`: the threshold minimising the mean squared quantization error (clipping + rounding)
  estimated from the histogram; `mse_error` reports that error for any threshold.

This module is the maths only (histograms and threshold searches, numpy and torch ops); driving
the model's forward pass is `quant.calib`, and the ranges leave as a `quant.calib_cache` record.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from ..errors import CalibrationError, DataError

METHODS = ("max", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.99


class StreamingHistogram:
    """Histogram of |x| over [0, range) with a fixed bin count; the range grows by doubling."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.range = 0.0

    def add(self, x: torch.Tensor, lo: float | None = None, hi: float | None = None) -> None:
        """Count |x| into the histogram; `lo`/`hi` are x's extremes when the caller has them.

        With the extremes known, a non-negative tensor (every ReLU output) is binned as it is:
        no |x| copy and no second max pass, which were half the cost of collecting a histogram.
        """
        x = x.detach()
        if x.numel() == 0:
            return
        if lo is None or hi is None:
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = float(lo_t), float(hi_t)
        a = (x if lo >= 0.0 else x.abs()).float().flatten()
        top = max(abs(lo), abs(hi))
        if self.range == 0.0:
            if top == 0.0:
                self.counts[0] += a.numel()  # all zero so far: keep the count, no range yet
                return
            self.range = top
        elif top > self.range:
            self._grow(math.ceil(math.log2(top / self.range)))
        counts = torch.histc(a, bins=self.bins, min=0.0, max=self.range)
        self.counts += counts.double().cpu().numpy()

    def _grow(self, doublings: int) -> None:
        factor = 2 ** doublings
        if factor >= self.bins:
            total = self.counts.sum()
            self.counts[:] = 0.0
            self.counts[0] = total
        else:
            merged = self.counts.reshape(-1, factor).sum(1)
            self.counts = np.concatenate([merged, np.zeros(self.bins - merged.size)])
        self.range *= factor

    @property
    def width(self) -> float:
        return self.range / self.bins

    @property
    def total(self) -> float:
        return float(self.counts.sum())


class Calibrator:
    """Base: collect activations batch by batch, then compute one amax per tensor."""

    method = "base"

    def __init__(self) -> None:
        self.minimum: dict[str, float] = {}
        self.maximum: dict[str, float] = {}

    def collect(self, name: str, x: torch.Tensor) -> None:
        """Record one batch of the tensor `name`."""
        # One pass: torch's min/max propagate NaN, so finite extremes mean a finite tensor.
        lo_t, hi_t = torch.aminmax(x)
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError(f"tensor {name} holds NaN or Inf during calibration; check the calibration data")
        self.minimum[name] = min(lo, self.minimum.get(name, lo))
        self.maximum[name] = max(hi, self.maximum.get(name, hi))
        self._collect(name, x, lo, hi)

    def _collect(self, name: str, x: torch.Tensor, lo: float, hi: float) -> None:
        pass

    def names(self) -> list[str]:
        return list(self.maximum)

    def absmax(self, name: str) -> float:
        return max(abs(self.minimum[name]), abs(self.maximum[name]))

    def compute(self, qmax: Mapping[str, int] | None = None) -> dict[str, float]:
        """amax per collected tensor; `qmax` gives each tensor's grid (127 signed, 255 unsigned)."""
        qmax = qmax or {}
        return {name: float(self._compute(name, int(qmax.get(name, 127)))) for name in self.names()}

    def _compute(self, name: str, qmax: int) -> float:
        raise NotImplementedError


class MaxCalibrator(Calibrator):
    method = "max"

    def _compute(self, name: str, qmax: int) -> float:
        return self.absmax(name)


class HistogramCalibrator(Calibrator):
    """Shared streaming-histogram collection of the percentile, entropy and mse methods."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.histograms: dict[str, StreamingHistogram] = {}

    def _collect(self, name: str, x: torch.Tensor, lo: float, hi: float) -> None:
        self.histograms.setdefault(name, StreamingHistogram(self.bins)).add(x, lo, hi)

    def _compute(self, name: str, qmax: int) -> float:
        h = self.histograms[name]
        if h.range == 0.0:
            return 0.0
        return min(self._threshold(h, qmax), self.absmax(name))

    def _threshold(self, h: StreamingHistogram, qmax: int) -> float:
        raise NotImplementedError


class PercentileCalibrator(HistogramCalibrator):
    method = "percentile"

    def __init__(self, percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS) -> None:
        if not 0.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = percentile

    def _threshold(self, h: StreamingHistogram, qmax: int) -> float:
        cdf = np.cumsum(h.counts) / h.total
        index = int(np.searchsorted(cdf, self.percentile / 100.0 - 1e-12))
        return (min(index, h.bins - 1) + 1) * h.width


class EntropyCalibrator(HistogramCalibrator):
    """TensorRT-style KL-divergence calibration over a >= 2048-bin histogram of |x|."""

    method = "entropy"

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 2048:
            raise CalibrationError(f"entropy calibration needs at least 2048 bins, got {bins}")
        super().__init__(bins)

    def _threshold(self, h: StreamingHistogram, qmax: int) -> float:
        return (entropy_threshold_bins(h.counts, qmax + 1)) * h.width


def entropy_threshold_bins(counts: np.ndarray, levels: int) -> int:
    """Number of leading bins to keep so that KL(P || Q) is smallest (TensorRT's search).

    P is the histogram cut at i bins with the clipped tail folded into its last bin; Q is the
    first i bins merged into `levels` groups and spread back over each group's non-empty bins.

    Every candidate i is scored at once. Within one group Q is constant over the non-empty bins,
    so a group's share of KL needs only its mass, its number of non-empty bins and its sum of
    r log r, which are differences of prefix sums over the bins: the search costs
    O(candidates x levels) array work instead of a Python loop over candidates with an
    O(bins) pass each (0.5 s per tensor before). Masses and bin counts are sums of integer
    counts, hence exact; only the r log r sums round, far below the KL gaps between candidates.
    """
    r = np.array(counts, dtype=np.float64)
    # ReLU outputs put a large spike of exact zeros in bin 0; it says nothing about where to clip
    # and would dominate P, so it is flattened to its neighbour (as TensorRT's tools do).
    r[0] = r[1]
    n = r.size
    if n <= levels:
        return n
    kl = _kl_per_candidate(r, levels)
    best = float(kl.min())
    if not math.isfinite(best):
        return n  # no usable cut (an empty histogram): keep everything
    # Candidates whose KL equals the minimum up to rounding (e.g. data on a few discrete values,
    # where several cuts lose nothing) are ties: take the first, the smallest clipping threshold
    # that is as good, as a loop keeping the first strict minimum does.
    return int(levels + np.flatnonzero(kl <= best + KL_TIE)[0])


KL_EPS = 1e-4  # Q's value where it is empty but P is not (the folded-in tail), as TensorRT and ORT smooth
KL_TIE = 1e-12  # KL differences below this are rounding, not a better threshold


def _kl_per_candidate(r: np.ndarray, levels: int) -> np.ndarray:
    """KL(P_i || Q_i) for every cut i = levels .. len(r) (see `entropy_threshold_bins`).

    With P = total mass and Q = mass of the first i bins, a non-empty bin j of group g adds
    (r_j / P) (log r_j - log P - log(m_g / s_g) + log Q). Summed over a group that is
    (h_g - m_g log(m_g / s_g)) / P plus its mass times (log Q - log P) / P; the last bin, which
    also holds the clipped tail, is then swapped for its folded value.
    """
    n = r.size
    nonzero = r > 0
    safe_r = np.where(nonzero, r, 1.0)
    zero = np.zeros(1)
    R = np.concatenate([zero, np.cumsum(r)])  # R[k] = r[:k].sum()
    Z = np.concatenate([zero, np.cumsum(nonzero)])  # non-empty bins before k
    H = np.concatenate([zero, np.cumsum(np.where(nonzero, r * np.log(safe_r), 0.0))])
    cuts = np.arange(levels, n + 1)
    # Group g of cut i holds bins ceil(g*i/levels) .. ceil((g+1)*i/levels) - 1.
    edges = (np.arange(levels + 1)[None, :] * cuts[:, None] + levels - 1) // levels
    mass, size, rlogr = np.diff(R[edges], axis=1), np.diff(Z[edges], axis=1), np.diff(H[edges], axis=1)
    filled = size > 0  # an empty group has no mass either, and adds nothing
    log_q = np.where(filled, np.log(np.where(filled, mass, 1.0) / np.maximum(size, 1.0)), 0.0)
    total = R[n]  # P: the tail is folded in, so nothing is lost
    kept = R[cuts]  # Q: every group spreads its own mass back
    if kept[-1] == 0:
        return np.full(cuts.size, math.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_kept, log_total = np.log(kept), np.log(total)
        kl = (rlogr - mass * log_q).sum(1) + kept * (log_kept - log_total)
        # The last bin (group levels - 1): out with its plain term, in with the tail folded in.
        last = r[cuts - 1]
        folded = last + (total - kept)
        log_qn_last = np.where(last > 0, log_q[:, -1] - log_kept, math.log(KL_EPS))
        plain_term = np.where(last > 0, last * (np.log(np.where(last > 0, last, 1.0)) - log_total - log_qn_last), 0.0)
        folded_term = np.where(folded > 0,
                               folded * (np.log(np.where(folded > 0, folded, 1.0)) - log_total - log_qn_last), 0.0)
        kl = (kl - plain_term + folded_term) / total
    return np.where(kept > 0, kl, math.inf)


class MseCalibrator(HistogramCalibrator):
    """The threshold with the smallest mean squared quantization error over the histogram."""

    method = "mse"

    def __init__(self, bins: int = DEFAULT_BINS, candidates: int | None = None) -> None:
        super().__init__(bins)
        self.candidates = candidates
        self.errors: dict[str, float] = {}

    def _threshold(self, h: StreamingHistogram, qmax: int) -> float:
        # Every bin edge is a candidate unless told otherwise; the error curve is flat and bumpy
        # near its minimum, so a coarse grid can miss it.
        steps = np.arange(1, h.bins + 1) if not self.candidates else np.unique(np.linspace(1, h.bins, self.candidates).round())
        thresholds = h.width * steps
        errors = mse_error(h.counts, h.width, thresholds, qmax)
        best = int(np.argmin(errors))
        return float(thresholds[best])

    def _compute(self, name: str, qmax: int) -> float:
        amax = super()._compute(name, qmax)
        h = self.histograms[name]
        if h.range > 0:
            self.errors[name] = float(mse_error(h.counts, h.width, np.array([amax]), qmax)[0])
        return amax


def mse_error(counts: np.ndarray, width: float, thresholds: np.ndarray, qmax: int) -> np.ndarray:
    """Mean squared error of quantizing the histogrammed |x| with each threshold (bin centres)."""
    centres = (np.arange(len(counts)) + 0.5) * width
    counts = np.asarray(counts, dtype=np.float64)
    total = max(float(np.sum(counts)), 1.0)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = np.empty(thresholds.size)
    for start in range(0, thresholds.size, 256):  # blocks keep the candidates x bins matrix small
        t = thresholds[start : start + 256, None]
        step = np.maximum(t, 1e-12) / qmax
        recon = np.minimum(np.round(np.minimum(centres[None, :], t) / step), qmax) * step
        out[start : start + 256] = ((centres[None, :] - recon) ** 2 * counts[None, :]).sum(1) / total
    return out


def make_calibrator(method: str, *, percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS) -> Calibrator:
    """The calibrator for a method name (one of METHODS)."""
    if method == "max":
        return MaxCalibrator()
    if method == "percentile":
        return PercentileCalibrator(percentile, bins)
    if method == "entropy":
        return EntropyCalibrator(bins)
    if method == "mse":
        return MseCalibrator(bins)
    raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
