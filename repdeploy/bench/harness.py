"""Latency harness, trtexec-style: warm up, then run until both a minimum duration and a minimum
iteration count are met; report percentiles, spread and throughput with the environment.

Latency figures are robust statistics: the median with a bootstrap 95 % interval, the IQR and
p90/p99 (stats.py). A std-based figure (the coefficient of variation) is kept in the record but
not judged: one 40 ms spike among 0.03 ms runs makes it 900 % while the median does not move. A
figure whose interval is wider than +-5 % of the median is `noisy`; with `max_duration` the run
extends until it is not, or the cap is reached. `bench_interleaved` runs several models in
alternating rounds (FP32, INT8, INT8, FP32, ...) so a change in machine load hits both alike;
`bench_sessions` repeats that over fresh runtime sessions, and each model's speed-up over the
first one gets an interval across the sessions (stats.speedup_over_sessions). A runner that times
itself on a device (TensorRT: GPU compute) and also reports `last_host_latency()` gets host
latency figures beside its own (`BenchResult.host_stats`).

The timing loop does nothing but call the runner and append its own timing, so its overhead
over a bare `InferenceSession.run` loop stays small (benchmarks/bench_overhead.py measures it).
Every function takes one frozen `BenchSettings`; its fields also work as keyword shortcuts
(`bench(runner, batch=8, duration=2)`).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np

from .. import defaults
from ..errors import InputError
from ..runtime.base import Runner
from .machine import environment
from .stats import MIN_ROUNDS, NOISE_TOL, LatencyStats, Speedup, latency_stats, speedup_interval, speedup_over_sessions

DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS


@dataclass(frozen=True)
class BenchSettings:
    """How one latency measurement runs; the same for every model it times.

    `duration`, `iterations` and `max_duration` are totals per model, split evenly over the
    `sessions` (bench_sessions); `warmup` is split likewise, with at least one call per session.
    """

    batch: int = defaults.BENCH_BATCH_SIZE
    warmup: float = DEFAULT_WARMUP_S  # seconds per model before anything is measured
    duration: float = DEFAULT_DURATION_S  # minimum measured seconds per model
    iterations: int = DEFAULT_ITERATIONS  # minimum measured runs per model
    max_duration: float | None = None  # keep going while noisy, up to this many seconds per model
    sessions: int = defaults.BENCH_SESSIONS  # fresh runtime sessions (bench_sessions)
    image_size: int | None = None  # for models whose input size is not fixed
    seed: int = 0  # of the random input batch

    def check(self) -> "BenchSettings":
        """Refuse values that would never end (NaN durations) or exhaust memory, before any work."""
        from ..validate import MAX_SECONDS, bench_options, integer, number

        bench_options(batch=self.batch, warmup=self.warmup, duration=self.duration, iterations=self.iterations)
        number("--max-duration", self.max_duration, low=0.0, high=MAX_SECONDS, allow_none=True)
        integer("--sessions", self.sessions, low=1, high=100, allow_none=False)
        return self

    def one_session(self) -> "BenchSettings":
        """The share of one of `sessions` sessions."""
        n = self.sessions
        return replace(self, warmup=self.warmup / n, duration=self.duration / n,
                       iterations=max(1, math.ceil(self.iterations / n)),
                       max_duration=None if self.max_duration is None else self.max_duration / n, sessions=1)


_FIELDS = frozenset(f.name for f in fields(BenchSettings))
SESSION_MIN_ROUNDS = 3  # interleaved rounds in each of several sessions


def bench_settings(settings: BenchSettings | None = None, **shortcuts) -> BenchSettings:
    """`settings` (default: the defaults) with the keyword shortcuts applied, checked."""
    unknown = sorted(set(shortcuts) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown bench setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    return replace(settings or BenchSettings(), **shortcuts).check()


@dataclass
class BenchResult:
    """One benchmark of one model on one engine at one batch size."""

    model: str
    engine: str
    batch: int
    input_shape: tuple[int, ...]
    warmup_s: float
    min_duration_s: float
    min_iterations: int
    measured_s: float  # wall time of the measured loop
    stats: LatencyStats  # the runner's own timing (TensorRT: GPU compute)
    throughput_ips: float  # images per second over the measured loop
    high_variance: bool  # == stats.noisy: the median's interval is wider than +-NOISE_TOL
    runner: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    max_duration_s: float | None = None  # the cap runs may extend to while noisy
    rounds: int | None = None  # interleaved rounds (bench_interleaved, bench_sessions)
    host_stats: LatencyStats | None = None  # host latency of the whole call, where the runner reports it apart
    speedup: Speedup | None = None  # over the first model timed with it (bench_interleaved, bench_sessions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = self.stats.to_dict()
        d["host_stats"] = None if self.host_stats is None else self.host_stats.to_dict()
        d["speedup"] = None if self.speedup is None else self.speedup.to_dict()
        d["input_shape"] = list(self.input_shape)
        return d


def _input_for(runner: Runner, s: BenchSettings) -> tuple[tuple[int, ...], np.ndarray]:
    meta = runner.get_input_metadata()
    size = meta.image_size or s.image_size
    if size is None:
        raise InputError(f"{runner.name}: input size unknown (shape {meta.shape}); export the model with a fixed "
                         "height and width (`repdeploy export --input-size N`) or, from Python, give bench() an image_size")
    shape = (s.batch, meta.channels or 3, size, size)
    return shape, np.random.default_rng(s.seed).standard_normal(shape).astype(np.float32)


def _warm_up(runner: Runner, x: np.ndarray, seconds: float) -> None:
    # At least one call, so lazy allocation or compilation never lands in the figures.
    end = time.perf_counter() + seconds
    runner.infer(x)
    while time.perf_counter() < end:
        runner.infer(x)


def _host_clock(runner: Runner) -> Callable[[], float | None] | None:
    """The runner's host latency of its last call, where it times itself on a device (TensorRT)."""
    return getattr(runner, "last_host_latency", None) if runner.times_itself else None


def _warn_if_noisy(name: str, engine: str, batch: int, stats: LatencyStats, capped: bool) -> None:
    if stats.noisy:
        warnings.warn(
            f"{name} ({engine}, batch {batch}): latency is noisy, the 95 % interval of the median reaches "
            f"{stats.ci_halfwidth:.1%} from it (> {NOISE_TOL:.0%})"
            + (" even at the --max-duration cap" if capped else "") + "; close other programs or run longer",
            stacklevel=3,
        )


def bench(runner: Runner, settings: BenchSettings | None = None, **shortcuts) -> BenchResult:
    """Benchmark an active runner on a fixed random batch.

    Runs until both `duration` and `iterations` are met; with `max_duration`, it then keeps
    going while the median's interval is wider than +-NOISE_TOL, up to that many seconds.

    >>> with open_runner("model.onnx", "ort", threads=2) as r:      # doctest: +SKIP
    ...     print(bench(r, batch=8).stats.median_ms)
    """
    s = bench_settings(settings, **shortcuts)
    shape, x = _input_for(runner, s)
    _warm_up(runner, x, s.warmup)

    times: list[float] = []
    host_times: list[float] = []
    infer, last, host = runner.infer, runner.last_inference_time, _host_clock(runner)
    start = time.perf_counter()
    deadline = start + s.duration
    cap = start + max(s.duration, s.max_duration or 0.0)
    while True:
        infer(x)
        times.append(last())
        if host is not None:
            host_times.append(host())
        if len(times) >= s.iterations and time.perf_counter() >= deadline:
            # judge the interval now and then, not per call: every doubling of the runs
            if time.perf_counter() >= cap or not latency_stats(times).noisy:
                break
            deadline = time.perf_counter() + max(0.05, time.perf_counter() - start)
    measured = time.perf_counter() - start
    session = _Session([shape], [times], [[]], [measured], 0, [runner.describe()], [host_times])
    [result] = _results([runner], [session], s)
    result.rounds = None
    return result


def bench_interleaved(runners: Sequence[Runner], settings: BenchSettings | None = None,
                      **shortcuts) -> tuple[list[BenchResult], Speedup | None]:
    """Benchmark active runners in alternating rounds; the speed-up of runners[1] over runners[0].

    Each round runs every model for a slice of time (order reversed every other round, so
    neither always follows the other). It stops once every model has `duration` seconds and
    `iterations` runs and MIN_ROUNDS rounds are done, and then, with `max_duration`, keeps
    adding rounds while a median or the speed-up is noisy, up to `max_duration` seconds per
    model. Per-round medians give the speed-up's interval (speedup_interval); every result
    carries its own speed-up over runners[0].

    >>> (fp32, int8), speedup = bench_interleaved([fp32_runner, int8_runner])   # doctest: +SKIP
    >>> speedup.ratio, speedup.ci_low, speedup.ci_high, speedup.noisy             # doctest: +SKIP
    """
    s = replace(bench_settings(settings, **shortcuts), sessions=1)
    if len(runners) == 1:  # nothing to alternate with: the plain harness, which meets the minimums exactly
        return [bench(runners[0], s)], None
    results = _results(runners, [_interleaved_rounds(runners, s)], s)
    return results, results[1].speedup


def bench_sessions(open_runners: Callable[[], Sequence[Runner]], settings: BenchSettings | None = None,
                   **shortcuts) -> tuple[list[BenchResult], Speedup | None]:
    """bench_interleaved over `sessions` independent runtime sessions, opened one after another.

    `open_runners()` returns fresh, not yet active runners (e.g. `[open_runner(fp32), open_runner(int8)]`);
    each session is activated, measured for its share (1/sessions) of the settings, then closed.
    Medians pool every session's runs; each speed-up's interval is a t-interval over the
    sessions' own speed-ups (speedup_over_sessions), so a level that a fresh session does not
    reproduce widens it instead of hiding behind a precise figure.

    >>> results, speedup = bench_sessions(lambda: [open_runner(a, "ort"), open_runner(b, "ort")], sessions=8)  # doctest: +SKIP
    """
    s = bench_settings(settings, **shortcuts)
    if s.sessions == 1:  # one session is bench_interleaved (for one model, the plain harness)
        with contextlib.ExitStack() as stack:
            return bench_interleaved([stack.enter_context(r) for r in open_runners()], s)
    share = s.one_session()
    measured, runners = [], []
    for _ in range(s.sessions):
        with contextlib.ExitStack() as stack:
            runners = [stack.enter_context(r) for r in open_runners()]
            # Each session is one draw of the level; the interval is over sessions, so a session
            # needs only a few rounds (ABBAAB order) for its own ratio, and the sessions together
            # still exceed MIN_ROUNDS.
            measured.append(_interleaved_rounds(runners, share, min_rounds=SESSION_MIN_ROUNDS))
    results = _results(runners, measured, s)
    return results, results[1].speedup if len(results) > 1 else None


@dataclass
class _Session:
    """What one interleaved session measured, per runner."""

    shapes: list[tuple[int, ...]]
    times: list[list[float]]  # every run's seconds
    round_medians: list[list[float]]  # ms
    spent: list[float]
    rounds: int
    descriptions: list[dict]
    host_times: list[list[float]]  # seconds, for runners that report host latency apart; else empty


def _interleaved_rounds(runners: Sequence[Runner], s: BenchSettings, min_rounds: int = MIN_ROUNDS) -> _Session:
    if not runners:
        raise InputError("bench_interleaved needs at least one runner")
    inputs = [_input_for(r, s) for r in runners]
    if len({shape for shape, _ in inputs}) > 1:  # a speed-up between different inputs says nothing about the models
        shapes = ", ".join(f"{r.name} {shape}" for r, (shape, _) in zip(runners, inputs))
        raise InputError(f"the models take different inputs ({shapes}); compare latency at one input shape: "
                         "pass image_size, or models exported at the same size")
    for r, (_, x) in zip(runners, inputs):
        _warm_up(r, x, s.warmup)
    slice_s = max(0.02, s.duration / 10)
    times: list[list[float]] = [[] for _ in runners]
    host_times: list[list[float]] = [[] for _ in runners]
    round_medians: list[list[float]] = [[] for _ in runners]
    spent = [0.0 for _ in runners]
    cap = max(s.duration, s.max_duration or 0.0)
    rounds = 0

    def settled() -> bool:
        if any(latency_stats(t).noisy for t in times):
            return False
        if len(runners) > 1:
            return not speedup_interval(round_medians[0], round_medians[1]).noisy
        return True

    while True:
        order = range(len(runners)) if rounds % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            r, (_, x) = runners[i], inputs[i]
            infer, last, host = r.infer, r.last_inference_time, _host_clock(r)
            mine: list[float] = []
            start = time.perf_counter()
            end = start + slice_s
            while True:
                infer(x)
                mine.append(last())
                if host is not None:
                    host_times[i].append(host())
                if time.perf_counter() >= end:
                    break
            spent[i] += time.perf_counter() - start
            times[i] += mine
            round_medians[i].append(float(np.median(mine)) * 1e3)
        rounds += 1
        if rounds < min_rounds or min(spent) < s.duration or min(len(t) for t in times) < s.iterations:
            continue
        # judge after every doubling of the rounds, so the check stays cheap next to the runs
        if max(spent) >= cap or ((rounds & (rounds - 1)) == 0 or rounds % 16 == 0) and settled():
            break
    return _Session([shape for shape, _ in inputs], times, round_medians, spent, rounds,
                    [r.describe() for r in runners], host_times)


def _results(runners: Sequence[Runner], sessions: Sequence[_Session], s: BenchSettings) -> list[BenchResult]:
    results = []
    rounds = sum(m.rounds for m in sessions)
    for i, r in enumerate(runners):
        t = [v for m in sessions for v in m.times[i]]
        host = [v for m in sessions for v in m.host_times[i]]
        spent = sum(m.spent[i] for m in sessions)
        stats = latency_stats(t)
        _warn_if_noisy(r.name, r.engine, s.batch, stats, capped=s.max_duration is not None)
        speedup = None
        if i > 0 and rounds:  # this model against the first, from the rounds they shared
            speedup = speedup_over_sessions([(m.round_medians[0], m.round_medians[i]) for m in sessions])
        results.append(BenchResult(
            model=r.name, engine=r.engine, batch=s.batch, input_shape=sessions[-1].shapes[i], warmup_s=s.warmup,
            min_duration_s=s.duration, min_iterations=s.iterations, measured_s=spent, stats=stats,
            throughput_ips=s.batch * len(t) / spent if spent > 0 else float("nan"), high_variance=stats.noisy,
            runner=sessions[-1].descriptions[i], environment=environment(), max_duration_s=s.max_duration,
            rounds=rounds, host_stats=latency_stats(host) if host else None, speedup=speedup))
    return results
