"""Calibration: activation ranges from sample data, and the calibration cache that carries them.

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

The ranges leave this module as plain data: a `CalibrationCache` (JSON) holding each tensor's
amax and observed min/max, plus the identity of the model it belongs to (ArchSpec and a
fingerprint of the weights), so a cache for another model is refused instead of silently used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from ..errors import CalibrationError, DataError, InputError
from ..io import write_json_atomic
from ..models.plain import PlainNet
from ..models.specs import ArchSpec
from ..progress import track

METHODS = ("max", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.99
CACHE_FORMAT = "repdeploy-calib/1"
MODEL_INPUT = "stage0.conv.input"  # the quantizer that sees the image itself


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


# ---------------------------------------------------------------------------------- the cache


def weights_fingerprint(plain: PlainNet) -> str:
    """sha256 over the fused weights (names, shapes and float32 bytes), in key order."""
    h = hashlib.sha256()
    for key, value in sorted(plain.state_dict().items()):
        t = value.detach().to(torch.float32).contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class TensorRange:
    """One activation's range: the amax used for quantization and the observed extremes."""

    amax: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return {"amax": self.amax, "min": self.min, "max": self.max}


@dataclass
class CalibrationCache:
    """Calibrated activation ranges plus the identity of the model they belong to.

    Saved as JSON; a user may edit any `amax` and feed the file back with --calib-cache.
    """

    arch: dict
    weights_sha256: str
    method: str
    samples: int
    tensors: dict[str, TensorRange]
    percentile: float | None = None
    bins: int | None = None
    target: str | None = None
    data: dict = field(default_factory=dict)
    # Seconds per calibration stage of the run that made this cache (not saved in calib.json,
    # which holds ranges only; the quantize report records them).
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def amax(self) -> dict[str, float]:
        return {name: r.amax for name, r in self.tensors.items()}

    def to_dict(self) -> dict:
        return {
            "format": CACHE_FORMAT,
            "model": {"arch": self.arch, "weights_sha256": self.weights_sha256},
            "method": self.method, "percentile": self.percentile, "bins": self.bins,
            "samples": self.samples, "target": self.target, "data": self.data,
            "tensors": {name: r.to_dict() for name, r in self.tensors.items()},
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "calibration cache") -> "CalibrationCache":
        if not isinstance(d, Mapping) or d.get("format") != CACHE_FORMAT:
            raise CalibrationError(f"{source} is not a repdeploy calibration cache (format {CACHE_FORMAT})")
        try:
            tensors = {}
            for name, r in d["tensors"].items():
                tr = TensorRange(float(r["amax"]), float(r.get("min", -r["amax"])), float(r.get("max", r["amax"])))
                if not math.isfinite(tr.amax) or tr.amax < 0:
                    raise CalibrationError(f"{source}: amax of {name} must be finite and >= 0, got {r['amax']}")
                tensors[name] = tr
            return cls(arch=dict(d["model"]["arch"]), weights_sha256=str(d["model"]["weights_sha256"]),
                       method=str(d["method"]), samples=int(d["samples"]), tensors=tensors,
                       percentile=d.get("percentile"), bins=d.get("bins"), target=d.get("target"),
                       data=dict(d.get("data") or {}))
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(f"{source} is malformed ({type(exc).__name__}: {exc}); re-run calibration") from exc

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationCache":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise CalibrationError(f"calibration cache {p} does not exist; drop --calib-cache to calibrate") from exc
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"calibration cache {p} is not readable JSON ({exc}); re-run calibration") from exc
        return cls.from_dict(d, source=str(p))

    def check_model(self, plain: PlainNet, source: str = "calibration cache") -> None:
        """Refuse a cache made for another architecture or other weights."""
        spec: ArchSpec = plain.spec
        if self.arch != spec.to_dict():
            other = self.arch.get("name", "?") if isinstance(self.arch, dict) else "?"
            raise CalibrationError(
                f"{source} was made for {other}, not for this {spec.name}; drop --calib-cache to recalibrate"
            )
        if self.weights_sha256 != weights_fingerprint(plain):
            raise CalibrationError(
                f"{source} was made for other weights of {spec.name} (fingerprint differs); "
                "drop --calib-cache to recalibrate"
            )


# ------------------------------------------------------------------------------ calibration


class BackgroundCollector:
    """Feeds a calibrator from a worker thread, so histograms are built while the model runs on.

    The observer only queues a reference to the activation; the worker computes its extremes and
    histogram (torch releases the GIL inside its ops) while the main thread runs the next layers.
    On 2 cores that hid the histogram cost almost entirely (conv + histc in series 1.47 s,
    overlapped 0.82-0.86 s, conv alone 0.95-0.99 s). One worker keeps the order of the batches, so
    the result is the serial one exactly. At most `pending` activations wait at any time, and
    `drain` (called after every batch) empties the queue, so memory stays flat in the number of
    images and no activation outlives its batch, which the data loader may then reuse.
    """

    def __init__(self, calibrator: Calibrator, pending: int = 4) -> None:
        import queue
        import threading

        self.calibrator = calibrator
        self.busy_s = 0.0  # worker time spent collecting (overlapped with the forward pass)
        self.wait_s = 0.0  # main-thread time spent waiting for the worker
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=pending)
        self._threads = torch.get_num_threads()
        self._worker = threading.Thread(target=self._run, name="repdeploy-calibration", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        # A new thread starts from the default intra-op thread count, not the one the caller set.
        torch.set_num_threads(self._threads)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure, only drain so that nobody blocks
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        self.calibrator.collect(*item)
                    self.busy_s += time.perf_counter() - t0
            except BaseException as exc:  # re-raised in the main thread by `drain`
                self._error = exc
            finally:
                self._queue.task_done()

    def __call__(self, name: str, x: torch.Tensor) -> None:
        t0 = time.perf_counter()
        self._queue.put((name, x))
        self.wait_s += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every queued activation is collected; raise what the worker raised."""
        t0 = time.perf_counter()
        self._queue.join()
        self.wait_s += time.perf_counter() - t0
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()


@torch.no_grad()
def calibrate(qnet, batches: Iterable[torch.Tensor] | None = None, *, forward_loop: Callable | None = None,
              method: str = "entropy", percentile: float = DEFAULT_PERCENTILE, bins: int = DEFAULT_BINS,
              total_batches: int | None = None, data: dict | None = None,
              keep_inputs: list[torch.Tensor] | None = None, keep_limit: int = 0) -> CalibrationCache:
    """Run float inference, compute activation ranges, load them into `qnet`; return the cache.

    `qnet` is a QuantPlainNet; every activation quantizer (for both targets) is calibrated, so
    the cache serves either export flavour. The images come from `batches` (NCHW tensors) or
    from `forward_loop(qnet)`, a callable that runs the model over the user's data itself, as
    ModelOpt's `forward_loop` does. With `keep_inputs`, the first `keep_limit` images seen are
    appended to it (the caller verifies the INT8 model on them). Activations are collected in a
    worker thread while the forward pass goes on (`BackgroundCollector`); `cache.timings` records
    the seconds spent reading data, in the forward pass, waiting for collection, collecting
    (overlapped) and in the threshold search (with `forward_loop`, data reading counts as forward).

    >>> cache = calibrate(qnet, forward_loop=lambda m: [m(x) for x, _ in loader])  # doctest: +SKIP
    """
    from ..devices import to_device
    from ..devices import module_device

    if (batches is None) == (forward_loop is None):
        raise InputError("calibrate needs exactly one of `batches` or `forward_loop`")
    calibrator = make_calibrator(method, percentile=percentile, bins=bins)
    qnet.eval()
    device = module_device(qnet)  # calibration runs where the model is; ranges leave as floats
    was_enabled = [(q, q.enabled) for q in qnet.quantizers()]
    qnet.disable()
    collector = BackgroundCollector(calibrator)
    qnet.observe(collector)
    seen = {"images": 0, "kept": 0, "lo": None, "hi": None}  # per-channel extremes: flat images calibrate nothing

    # The checks run as hooks on the model, so a user's forward_loop gets them as batches do.
    def check_input(module, args) -> None:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise DataError(f"calibration input must be an NCHW float tensor, got "
                            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        if not torch.isfinite(x).all():
            raise DataError("calibration data holds NaN or Inf values; clean the images or arrays")
        b_lo, b_hi = x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3))
        seen["lo"] = b_lo if seen["lo"] is None else torch.minimum(seen["lo"], b_lo)
        seen["hi"] = b_hi if seen["hi"] is None else torch.maximum(seen["hi"], b_hi)
        seen["images"] += int(x.shape[0])
        if keep_inputs is not None and seen["kept"] < keep_limit:
            part = x[: keep_limit - seen["kept"]].detach().to("cpu", copy=True)  # verified on the CPU
            keep_inputs.append(part)
            seen["kept"] += int(part.shape[0])

    def drain(module, args, output) -> None:
        collector.drain()  # no activation outlives its batch (the data loader may reuse it)

    hooks = [qnet.register_forward_pre_hook(check_input), qnet.register_forward_hook(drain)]
    data_s = loop_s = 0.0
    try:
        if forward_loop is not None:
            t0 = time.perf_counter()
            forward_loop(qnet)
            loop_s = time.perf_counter() - t0
        else:
            started = time.perf_counter()
            for x in track(batches, f"calibrating ({method})", total=total_batches):
                t0 = time.perf_counter()
                data_s += t0 - started  # reading and preprocessing the batch (the iterator's work)
                qnet(to_device(x, device))
                started = time.perf_counter()
                loop_s += started - t0
    finally:
        for hook in hooks:
            hook.remove()
        qnet.observe(None)
        collector.close()
        for q, on in was_enabled:
            q.enabled = on
    lo, hi = seen["lo"], seen["hi"]
    if seen["images"] == 0:
        raise DataError("no calibration images were read; give calibration data with at least one image"
                        + (" (forward_loop never called the model)" if forward_loop is not None else ""))
    if bool((hi == lo).all()):
        raise DataError(
            "calibration images are all identical and flat (e.g. all zero): they have no range to "
            "calibrate; use real images"
        )
    images = seen["images"]
    qnet.set_weight_ranges()  # the weights' own ranges (after the data checks, which name a NaN's tensor)
    unsigned = {q.name: 255 if q.unsigned else 127 for q in qnet.quantizers() if not q.per_channel}
    unsigned.setdefault("features", 255)
    t0 = time.perf_counter()
    amax = calibrator.compute(unsigned)
    search_s = time.perf_counter() - t0
    # The model input is the preprocessed image, whose range preprocessing already bounds;
    # clipping it throws away pixels. Histogram methods do clip it on images with a dominant
    # background value (entropy cut the built-in digits at the background level and lost 15
    # top-1 points on the zoo), so the input always keeps its observed range.
    amax[MODEL_INPUT] = calibrator.absmax(MODEL_INPUT)
    tensors = {n: TensorRange(amax[n], calibrator.minimum[n], calibrator.maximum[n]) for n in amax}
    cache = CalibrationCache(
        arch=qnet.spec.to_dict(), weights_sha256=weights_fingerprint(_plain_of(qnet)), method=method,
        samples=images, tensors=tensors, percentile=percentile if method == "percentile" else None,
        bins=bins if method != "max" else None, target=qnet.target, data=data or {},
        timings={"data_s": data_s, "forward_s": loop_s - collector.wait_s, "collect_wait_s": collector.wait_s,
                 "collect_overlapped_s": collector.busy_s, "search_s": search_s},
    )
    qnet.load_ranges(cache.amax)
    return cache


def _plain_of(qnet) -> PlainNet:
    # The fingerprint must be of the float weights the user handed in, which the wrappers hold.
    return qnet.float_model()
