"""Latency statistics: what a list of timings says, and how sure it is.

Pure functions of the measured numbers (no clock, no runner), so they are tested on known
sequences: the median with a bootstrap 95 % interval, the IQR and p90/p99 (`latency_stats`), and
the speed-up of one model over another as a ratio with an interval over interleaved rounds
(`speedup_interval`) and over fresh sessions (`speedup_over_sessions`, a t-interval over the
sessions' log speed-ups). The harness that produces the timings is repdeploy/bench/harness.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np

from ..errors import InputError

#: a median (or a speed-up) whose 95 % interval reaches further than this fraction from it is noisy
NOISE_TOL = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
MIN_ROUNDS = 5  # interleaved rounds before the speed-up interval is judged


@dataclass(frozen=True)
class LatencyStats:
    """Latency figures in milliseconds over the measured iterations."""

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float  # std / mean (population std); kept for reference, not judged (spikes dominate it)
    median_ms: float = math.nan  # == p50_ms
    median_ci_low_ms: float = math.nan  # bootstrap 95 % interval of the median
    median_ci_high_ms: float = math.nan
    iqr_ms: float = math.nan  # p75 - p25
    noisy: bool = False  # the interval reaches further than NOISE_TOL from the median

    @property
    def ci_halfwidth(self) -> float:
        """The interval's larger distance from the median, as a fraction of it."""
        if not self.median_ms > 0:
            return math.inf
        return max(self.median_ms - self.median_ci_low_ms, self.median_ci_high_ms - self.median_ms) / self.median_ms

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci_halfwidth"] = self.ci_halfwidth
        return d


def bootstrap_median_ci(values: Sequence[float], *, confidence: float = CONFIDENCE,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values`.

    Drawn without materialising resamples: the median of n draws with replacement from the
    sorted values is the value at index floor(n U), U the m-th smallest of n uniforms, which is
    Beta(m, n - m + 1) distributed (m = ceil(n / 2), the lower median). So each resample costs
    one Beta draw, not n, and a 50,000-run figure is judged in microseconds.

    >>> lo, hi = bootstrap_median_ci([1.0] * 50 + [2.0] * 50)
    """
    srt = np.sort(np.asarray(values, dtype=np.float64))
    n = srt.size
    if n == 0:
        raise InputError("no values to bootstrap")
    if n == 1:
        return float(srt[0]), float(srt[0])
    m = (n + 1) // 2
    u = np.random.default_rng(seed).beta(m, n - m + 1, size=resamples)
    medians = srt[np.minimum((u * n).astype(np.int64), n - 1)]
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def latency_stats(times_s: Sequence[float]) -> LatencyStats:
    """Statistics of per-iteration times given in seconds (pure; no clock involved).

    Percentiles interpolate linearly between order statistics (numpy's default), std is the
    population std, as benchmark tools report the spread of the runs they made.

    >>> latency_stats([0.001, 0.002, 0.003]).p50_ms
    2.0
    """
    if len(times_s) == 0:
        raise InputError("no timings to summarise; run at least one iteration")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    if not np.all(np.isfinite(ms)) or np.any(ms < 0):
        raise InputError("timings must be finite and non-negative")
    p25, p50, p75, p90, p95, p99 = np.percentile(ms, [25, 50, 75, 90, 95, 99])
    mean = float(ms.mean())
    std = float(ms.std())
    lo, hi = bootstrap_median_ci(ms)
    stats = LatencyStats(
        count=int(ms.size), min_ms=float(ms.min()), mean_ms=mean, p50_ms=float(p50), p90_ms=float(p90),
        p95_ms=float(p95), p99_ms=float(p99), max_ms=float(ms.max()), std_ms=std,
        cv=std / mean if mean > 0 else 0.0, median_ms=float(p50), median_ci_low_ms=lo, median_ci_high_ms=hi,
        iqr_ms=float(p75 - p25),
    )
    return replace(stats, noisy=not stats.ci_halfwidth <= NOISE_TOL)


@dataclass(frozen=True)
class Speedup:
    """reference time / candidate time (above 1: the candidate is faster) with its 95 % interval: over
    fresh sessions when there are several (speedup_over_sessions), else over interleaved rounds."""

    ratio: float
    ci_low: float
    ci_high: float
    rounds: int
    noisy: bool
    sessions: int = 1  # independent runtime sessions the interval spans (bench_sessions)
    session_ratios: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["session_ratios"] = list(self.session_ratios)
        return d


def speedup_interval(reference_round_ms: Sequence[float], candidate_round_ms: Sequence[float], *,
                     ratio: float | None = None, confidence: float = CONFIDENCE,
                     resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Speedup:
    """Speed-up of `candidate` over `reference` from per-round medians measured in the same rounds.

    Rounds are resampled as pairs (a round's load hits both models), and the ratio of the medians
    of the resampled round medians gives the interval. `ratio` is the point figure (default: the
    same statistic on all rounds; the pipeline passes the ratio of the pooled medians).
    """
    ref = np.asarray(reference_round_ms, dtype=np.float64)
    cand = np.asarray(candidate_round_ms, dtype=np.float64)
    if ref.shape != cand.shape or ref.size == 0:
        raise InputError("speed-up needs the same, non-zero number of rounds for both models")
    point = float(np.median(ref) / np.median(cand)) if ratio is None else float(ratio)
    idx = np.random.default_rng(seed).integers(0, ref.size, size=(resamples, ref.size))
    ratios = np.median(ref[idx], axis=1) / np.median(cand[idx], axis=1)
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    lo, hi = min(lo, point), max(hi, point)
    noisy = ref.size < MIN_ROUNDS or not max(point - lo, hi - point) <= NOISE_TOL * point
    return Speedup(point, lo, hi, int(ref.size), noisy)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t quantile: P(|T| <= q) = confidence for T with `df` degrees of freedom.

    For integer df, P(|T| <= q) has a closed form in theta = atan(q / sqrt(df)) (Abramowitz and
    Stegun 26.7.3-4, a finite series); bisection inverts it. Written here so the runtime needs no
    scipy for one quantile.

    >>> round(t_quantile(0.95, 1), 3), round(t_quantile(0.95, 4), 3), round(t_quantile(0.95, 9), 3)
    (12.706, 2.776, 2.262)
    """
    if df < 1 or not 0.0 < confidence < 1.0:
        raise InputError(f"t quantile needs df >= 1 and 0 < confidence < 1 (got df {df}, confidence {confidence})")

    def covered(q: float) -> float:
        theta = math.atan(q / math.sqrt(df))
        c, s = math.cos(theta), math.sin(theta)
        if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
            term, total = c, 0.0 if df == 1 else c
            for k in range(2, df - 1, 2):
                term *= c * c * k / (k + 1)
                total += term
            return 2 / math.pi * (theta + s * total)
        term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        for k in range(1, df - 2, 2):
            term *= c * c * k / (k + 1)
            total += term
        return s * total

    lo, hi = 0.0, 1.0
    while covered(hi) < confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if covered(mid) < confidence else (lo, mid)
    return (lo + hi) / 2


def speedup_over_sessions(session_rounds: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                          confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = 0) -> Speedup:
    """Speed-up from several independent sessions, each a (reference, candidate) pair of per-round
    medians measured in the same rounds.

    A session's level can differ from the next one's by more than its own rounds vary: on the
    shared 2-core machine, five bench runs whose intervals came from their rounds (a bootstrap)
    gave 4.16x [4.05-4.28] beside intervals it missed (docs/benchmarks.md). Each session is one
    draw of that level, so the sessions are the sample: a session's speed-up is the ratio of its
    median round latencies, and the interval is a Student-t interval over the sessions' log
    speed-ups (log: a ratio's errors are multiplicative, and 2x faster and 2x slower are the same
    distance apart). The point figure is their geometric mean, the interval's centre: each session
    pairs the two models under one load, which the ratio of medians pooled over all sessions does
    not (on the loaded machine that pooled ratio sat at the top edge of this interval, 5.9-7.5x
    against sessions mostly at 3-5x; docs/benchmarks.md). A session
    whose level moved widens the interval by its full deviation, divided only by sqrt(sessions),
    and few sessions pay through the t quantile (12.7 at two sessions, 2.36 at eight). One
    session has no between-session spread to measure: its interval is the bootstrap over its
    rounds (speedup_interval), which says nothing about a rerun.
    """
    sessions = [(np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64)) for r, c in session_rounds]
    if not sessions or any(r.shape != c.shape or r.size == 0 for r, c in sessions):
        raise InputError("speed-up needs, per session, the same non-zero number of rounds for both models")
    if len(sessions) == 1:
        return speedup_interval(*sessions[0], confidence=confidence, resamples=resamples, seed=seed)
    per_session = np.array([np.median(r) / np.median(c) for r, c in sessions])
    if not np.all(np.isfinite(per_session)) or np.any(per_session <= 0):
        raise InputError("speed-up needs positive, finite latencies in every session")
    logs = np.log(per_session)
    n = logs.size
    centre = float(logs.mean())
    half = t_quantile(confidence, n - 1) * float(logs.std(ddof=1)) / math.sqrt(n)
    point, lo, hi = math.exp(centre), math.exp(centre - half), math.exp(centre + half)
    rounds = sum(r.size for r, _ in sessions)
    noisy = rounds < MIN_ROUNDS or not max(point - lo, hi - point) <= NOISE_TOL * point
    return Speedup(point, lo, hi, rounds, noisy, sessions=n, session_ratios=tuple(float(v) for v in per_session))
