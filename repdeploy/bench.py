"""Latency harness, trtexec-style: warm up, then run until both a minimum duration and a minimum
iteration count are met; report percentiles, spread and throughput with the environment.

Latency figures are robust statistics: the median with a bootstrap 95 % interval, the IQR and
p90/p99. A std-based figure (the coefficient of variation) is kept in the record but no longer
judged: one 40 ms spike among 0.03 ms runs makes it 900 % while the median does not move. A
figure whose interval is wider than +-5 % of the median is `noisy`; with `max_duration` the run
extends until it is not, or the cap is reached. `bench_interleaved` runs several models in
alternating rounds (FP32, INT8, INT8, FP32, ...) so a change in machine load hits both alike, and
gives their speed-up as a ratio with its own interval.

The timing loop does nothing but call the runner and append its own timing, so its overhead
over a bare `InferenceSession.run` loop stays small (benchmarks/bench_overhead.py measures it).

The statistics (intervals, the speed-up) are repdeploy/bench_stats.py and the environment block is
repdeploy/machine.py; both are re-exported here, where callers have always imported them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import defaults
from .bench_stats import (BOOTSTRAP_RESAMPLES, CONFIDENCE, MIN_ROUNDS, NOISE_TOL, LatencyStats, Speedup,
                          bootstrap_median_ci, latency_stats, speedup_interval, speedup_over_sessions)
from .errors import InputError
from .machine import cpu_model, environment, physical_cores
from .runtime.base import Runner

DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS

__all__ = [
    "BenchResult", "bench", "bench_interleaved", "bench_sessions", "unique_labels",
    "DEFAULT_WARMUP_S", "DEFAULT_DURATION_S", "DEFAULT_ITERATIONS",
    # statistics and environment, from bench_stats.py and machine.py
    "LatencyStats", "Speedup", "latency_stats", "bootstrap_median_ci", "speedup_interval", "speedup_over_sessions",
    "NOISE_TOL", "CONFIDENCE", "BOOTSTRAP_RESAMPLES", "MIN_ROUNDS", "environment", "cpu_model", "physical_cores",
]


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
    stats: LatencyStats
    throughput_ips: float  # images per second over the measured loop
    high_variance: bool  # == stats.noisy: the median's interval is wider than +-NOISE_TOL
    runner: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    max_duration_s: float | None = None  # the cap runs may extend to while noisy
    rounds: int | None = None  # interleaved rounds (bench_interleaved)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = self.stats.to_dict()
        d["input_shape"] = list(self.input_shape)
        return d



def _input_for(runner: Runner, batch: int, image_size: int | None, seed: int) -> tuple[tuple[int, ...], np.ndarray]:
    meta = runner.get_input_metadata()
    size = meta.image_size or image_size
    if size is None:
        raise InputError(f"{runner.name}: input size unknown (shape {meta.shape}); export the model with a fixed "
                         "height and width (`repdeploy export --input-size N`) or, from Python, give bench() an image_size")
    shape = (batch, meta.channels or 3, size, size)
    return shape, np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _warm_up(runner: Runner, x: np.ndarray, seconds: float) -> None:
    # At least one call, so lazy allocation or compilation never lands in the figures.
    end = time.perf_counter() + seconds
    runner.infer(x)
    while time.perf_counter() < end:
        runner.infer(x)


def _warn_if_noisy(name: str, engine: str, batch: int, stats: LatencyStats, capped: bool) -> None:
    if stats.noisy:
        warnings.warn(
            f"{name} ({engine}, batch {batch}): latency is noisy, the 95 % interval of the median reaches "
            f"{stats.ci_halfwidth:.1%} from it (> {NOISE_TOL:.0%})"
            + (" even at the --max-duration cap" if capped else "") + "; close other programs or run longer",
            stacklevel=3,
        )


def _check_max_duration(max_duration: float | None) -> None:
    from .validate import MAX_SECONDS, number

    number("--max-duration", max_duration, low=0.0, high=MAX_SECONDS, allow_none=True)  # NaN would never end


def bench(
    runner: Runner,
    *,
    batch: int = 1,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    image_size: int | None = None,
    seed: int = 0,
    max_duration: float | None = None,
) -> BenchResult:
    """Benchmark an active runner on a fixed random batch.

    Runs until both `duration` and `iterations` are met; with `max_duration`, it then keeps
    going while the median's interval is wider than +-NOISE_TOL, up to that many seconds.

    >>> with open_runner("model.onnx", "ort", threads=2) as r:      # doctest: +SKIP
    ...     print(bench(r, batch=8).stats.median_ms)
    """
    from .validate import bench_options

    bench_options(batch=batch, warmup=warmup, duration=duration, iterations=iterations)  # NaN would never end
    _check_max_duration(max_duration)
    shape, x = _input_for(runner, batch, image_size, seed)
    _warm_up(runner, x, warmup)

    times: list[float] = []
    infer, last = runner.infer, runner.last_inference_time
    start = time.perf_counter()
    deadline = start + duration
    cap = start + max(duration, max_duration or 0.0)
    while True:
        infer(x)
        times.append(last())
        if len(times) >= iterations and time.perf_counter() >= deadline:
            # judge the interval now and then, not per call: every doubling of the runs
            if time.perf_counter() >= cap or not latency_stats(times).noisy:
                break
            deadline = time.perf_counter() + max(0.05, time.perf_counter() - start)
    measured = time.perf_counter() - start

    stats = latency_stats(times)
    _warn_if_noisy(runner.name, runner.engine, batch, stats, capped=max_duration is not None)
    return BenchResult(
        model=runner.name, engine=runner.engine, batch=batch, input_shape=shape, warmup_s=warmup,
        min_duration_s=duration, min_iterations=iterations, measured_s=measured, stats=stats,
        throughput_ips=batch * len(times) / measured if measured > 0 else float("nan"), high_variance=stats.noisy,
        runner=runner.describe(), environment=environment(), max_duration_s=max_duration,
    )


def bench_interleaved(
    runners: Sequence[Runner],
    *,
    batch: int = 1,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    max_duration: float | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[list[BenchResult], Speedup | None]:
    """Benchmark active runners in alternating rounds; the speed-up of runners[1] over runners[0].

    Each round runs every model for a slice of time (order reversed every other round, so
    neither always follows the other). It stops once every model has `duration` seconds and
    `iterations` runs and MIN_ROUNDS rounds are done, and then, with `max_duration`, keeps
    adding rounds while a median or the speed-up is noisy, up to `max_duration` seconds per
    model. Per-round medians give the speed-up's interval (speedup_interval).

    >>> (fp32, int8), speedup = bench_interleaved([fp32_runner, int8_runner])   # doctest: +SKIP
    >>> speedup.ratio, speedup.ci_low, speedup.ci_high, speedup.noisy             # doctest: +SKIP
    """
    if len(runners) == 1:  # nothing to alternate with: the plain harness, which meets the minimums exactly
        return [bench(runners[0], batch=batch, warmup=warmup, duration=duration, iterations=iterations,
                      image_size=image_size, seed=seed, max_duration=max_duration)], None
    session = _interleaved_rounds(runners, batch=batch, warmup=warmup, duration=duration, iterations=iterations,
                                  max_duration=max_duration, image_size=image_size, seed=seed)
    return _results(runners, [session], batch=batch, warmup=warmup, duration=duration, iterations=iterations,
                    max_duration=max_duration)


def bench_sessions(
    open_runners: Callable[[], Sequence[Runner]],
    *,
    sessions: int = 3,
    batch: int = 1,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    max_duration: float | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[list[BenchResult], Speedup | None]:
    """bench_interleaved over `sessions` independent runtime sessions, opened one after another.

    `open_runners()` returns fresh, not yet active runners (e.g. `[open_runner(fp32), open_runner(int8)]`);
    each session is activated, measured for its share (1/sessions) of `duration`, `iterations`
    and `max_duration`, then closed. Medians pool every session's runs; the speed-up's interval
    spans the sessions as well as the rounds (speedup_over_sessions), so a level that a fresh
    session does not reproduce shows as noise, not as a precise figure.

    >>> results, speedup = bench_sessions(lambda: [open_runner(a, "ort"), open_runner(b, "ort")])  # doctest: +SKIP
    """
    from .validate import integer

    integer("sessions", sessions, low=1, high=100, allow_none=False)
    if sessions == 1:  # one session is bench_interleaved (for one model, the plain harness)
        with contextlib.ExitStack() as stack:
            return bench_interleaved([stack.enter_context(r) for r in open_runners()], batch=batch, warmup=warmup,
                                     duration=duration, iterations=iterations, max_duration=max_duration,
                                     image_size=image_size, seed=seed)
    measured, runners = [], []
    for _ in range(sessions):
        with contextlib.ExitStack() as stack:
            runners = [stack.enter_context(r) for r in open_runners()]
            measured.append(_interleaved_rounds(
                runners, batch=batch, warmup=warmup, duration=duration / sessions,
                iterations=max(1, math.ceil(iterations / sessions)),
                max_duration=None if max_duration is None else max_duration / sessions,
                image_size=image_size, seed=seed))
    return _results(runners, measured, batch=batch, warmup=warmup, duration=duration, iterations=iterations,
                    max_duration=max_duration)


@dataclass
class _Session:
    """What one interleaved session measured, per runner."""

    shapes: list[tuple[int, ...]]
    times: list[list[float]]  # every run's seconds
    round_medians: list[list[float]]  # ms
    spent: list[float]
    rounds: int
    descriptions: list[dict]


def _interleaved_rounds(runners: Sequence[Runner], *, batch: int, warmup: float, duration: float, iterations: int,
                        max_duration: float | None, image_size: int | None, seed: int) -> _Session:
    from .validate import bench_options

    if not runners:
        raise InputError("bench_interleaved needs at least one runner")
    bench_options(batch=batch, warmup=warmup, duration=duration, iterations=iterations)
    _check_max_duration(max_duration)
    inputs = [_input_for(r, batch, image_size, seed) for r in runners]
    if len({shape for shape, _ in inputs}) > 1:  # a speed-up between different inputs says nothing about the models
        shapes = ", ".join(f"{r.name} {shape}" for r, (shape, _) in zip(runners, inputs))
        raise InputError(f"the models take different inputs ({shapes}); compare latency at one input shape: "
                         "pass image_size, or models exported at the same size")
    for r, (_, x) in zip(runners, inputs):
        _warm_up(r, x, warmup)
    slice_s = max(0.02, duration / 10)
    times: list[list[float]] = [[] for _ in runners]
    round_medians: list[list[float]] = [[] for _ in runners]
    spent = [0.0 for _ in runners]
    cap = max(duration, max_duration or 0.0)
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
            infer, last = r.infer, r.last_inference_time
            mine: list[float] = []
            start = time.perf_counter()
            end = start + slice_s
            while True:
                infer(x)
                mine.append(last())
                if time.perf_counter() >= end:
                    break
            spent[i] += time.perf_counter() - start
            times[i] += mine
            round_medians[i].append(float(np.median(mine)) * 1e3)
        rounds += 1
        if rounds < MIN_ROUNDS or min(spent) < duration or min(len(t) for t in times) < iterations:
            continue
        # judge after every doubling of the rounds, so the check stays cheap next to the runs
        if max(spent) >= cap or ((rounds & (rounds - 1)) == 0 or rounds % 16 == 0) and settled():
            break
    return _Session([shape for shape, _ in inputs], times, round_medians, spent, rounds,
                    [r.describe() for r in runners])


def _results(runners: Sequence[Runner], sessions: Sequence[_Session], *, batch: int, warmup: float, duration: float,
             iterations: int, max_duration: float | None) -> tuple[list[BenchResult], Speedup | None]:
    results = []
    rounds = sum(s.rounds for s in sessions)
    for i, r in enumerate(runners):
        t = [v for s in sessions for v in s.times[i]]
        spent = sum(s.spent[i] for s in sessions)
        stats = latency_stats(t)
        _warn_if_noisy(r.name, r.engine, batch, stats, capped=max_duration is not None)
        results.append(BenchResult(
            model=r.name, engine=r.engine, batch=batch, input_shape=sessions[-1].shapes[i], warmup_s=warmup,
            min_duration_s=duration, min_iterations=iterations, measured_s=spent, stats=stats,
            throughput_ips=batch * len(t) / spent if spent > 0 else float("nan"), high_variance=stats.noisy,
            runner=sessions[-1].descriptions[i], environment=environment(), max_duration_s=max_duration,
            rounds=rounds))
    speedup = None
    if len(runners) > 1:
        ratio = results[0].stats.median_ms / results[1].stats.median_ms if results[1].stats.median_ms > 0 else math.nan
        speedup = speedup_over_sessions([(s.round_medians[0], s.round_medians[1]) for s in sessions], ratio=ratio)
    return results, speedup


def unique_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short row labels for model files: the file name, plus as many parent folders as it takes
    to tell files with the same name apart (run directories: `a/model_int8_ort.onnx`).

    >>> unique_labels(["runs/a/model.onnx", "runs/b/model.onnx", "x.onnx"])
    ['a/model.onnx', 'b/model.onnx', 'x.onnx']
    """
    from pathlib import PurePath

    parts = [PurePath(os.fspath(p)).parts for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = {lab for lab in labels if labels.count(lab) > 1}
        grow = [i for i, lab in enumerate(labels) if lab in clash and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    # The same file named twice (or paths equal up to the root) stays ambiguous: number them.
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out
