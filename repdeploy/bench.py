"""Latency harness, trtexec-style: warm up, then run until both a minimum duration and a minimum
iteration count are met; report percentiles, spread and throughput with the environment.

The timing loop does nothing but call the runner and append its own timing, so its overhead
over a bare `InferenceSession.run` loop stays small (benchmarks/bench_overhead.py measures it).
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from . import defaults
from .errors import InputError
from .runtime.base import Runner

#: CPU latencies on a shared machine vary; above this coefficient of variation the figures are
#: flagged (trtexec warns for GPU compute time at a much tighter bound, CPUs are noisier).
CV_WARN = 0.10

DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS


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
    cv: float  # std / mean (population std)

    def to_dict(self) -> dict:
        return asdict(self)


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
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    mean = float(ms.mean())
    std = float(ms.std())
    return LatencyStats(
        count=int(ms.size), min_ms=float(ms.min()), mean_ms=mean, p50_ms=float(p50), p90_ms=float(p90),
        p95_ms=float(p95), p99_ms=float(p99), max_ms=float(ms.max()), std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
    )


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
    high_variance: bool
    runner: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stats"] = self.stats.to_dict()
        d["input_shape"] = list(self.input_shape)
        return d


def bench(
    runner: Runner,
    *,
    batch: int = 1,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    image_size: int | None = None,
    seed: int = 0,
) -> BenchResult:
    """Benchmark an active runner on a fixed random batch.

    >>> with open_runner("model.onnx", "ort", threads=2) as r:      # doctest: +SKIP
    ...     print(bench(r, batch=8).stats.p50_ms)
    """
    from .validate import bench_options

    bench_options(batch=batch, warmup=warmup, duration=duration, iterations=iterations)  # NaN would never end
    x = _input_batch(runner, batch, image_size, seed)
    _warm_up(runner, x, warmup)
    times, measured = _timed_loop(runner, x, duration, iterations)
    return _result(runner, x.shape, times, measured, warmup, duration, iterations)


def bench_interleaved(
    runners: Sequence[Runner],
    *,
    batch: int = 1,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    rounds: int = 4,
    image_size: int | None = None,
    seed: int = 0,
) -> list[BenchResult]:
    """Benchmark several active runners in one run, alternating between them.

    Each runner is timed in `rounds` slices of duration/rounds (and iterations/rounds), taken in
    turn, so a change of load on a shared machine falls on every model alike and the ratios
    between them hold even when the absolute figures drift. One result per runner, in order.

    >>> results = bench_interleaved([fp32_runner, int8_runner], batch=8)      # doctest: +SKIP
    >>> results[1].stats.p50_ms / results[0].stats.p50_ms                     # doctest: +SKIP
    0.31
    """
    from .validate import bench_options

    bench_options(batch=batch, warmup=warmup, duration=duration, iterations=iterations)  # NaN would never end
    if rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {rounds}")
    if len(runners) == 1:
        return [bench(runners[0], batch=batch, warmup=warmup, duration=duration, iterations=iterations,
                      image_size=image_size, seed=seed)]
    inputs = [_input_batch(r, batch, image_size, seed) for r in runners]
    for r, x in zip(runners, inputs):
        _warm_up(r, x, warmup)
    times: list[list[float]] = [[] for _ in runners]
    measured = [0.0] * len(runners)
    slice_iterations = max(1, -(-iterations // rounds))  # ceil: the total meets the minimum
    for _ in range(rounds):
        for i, (r, x) in enumerate(zip(runners, inputs)):
            t, m = _timed_loop(r, x, duration / rounds, slice_iterations)
            times[i] += t
            measured[i] += m
    return [_result(r, x.shape, t, m, warmup, duration, iterations)
            for r, x, t, m in zip(runners, inputs, times, measured)]


def _input_batch(runner: Runner, batch: int, image_size: int | None, seed: int) -> np.ndarray:
    meta = runner.get_input_metadata()
    size = meta.image_size or image_size
    if size is None:
        raise InputError(f"{runner.name}: input size unknown (shape {meta.shape}); pass image_size")
    shape = (batch, meta.channels or 3, size, size)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _warm_up(runner: Runner, x: np.ndarray, warmup: float) -> None:
    # At least one call, so lazy allocation or compilation never lands in the figures.
    end_warmup = time.perf_counter() + warmup
    runner.infer(x)
    while time.perf_counter() < end_warmup:
        runner.infer(x)


def _timed_loop(runner: Runner, x: np.ndarray, duration: float, iterations: int) -> tuple[list[float], float]:
    """Per-iteration times (s) of a loop that stops once both minimums are met, and its wall time."""
    times: list[float] = []
    infer, last = runner.infer, runner.last_inference_time
    start = time.perf_counter()
    deadline = start + duration
    while True:
        infer(x)
        times.append(last())
        if len(times) >= iterations and time.perf_counter() >= deadline:
            break
    return times, time.perf_counter() - start


def _result(runner: Runner, shape: tuple[int, ...], times: list[float], measured: float, warmup: float,
            duration: float, iterations: int) -> BenchResult:
    batch = int(shape[0])
    stats = latency_stats(times)
    high = stats.cv > CV_WARN
    if high:
        warnings.warn(
            f"{runner.name} ({runner.engine}, batch {batch}): latency is unstable, coefficient of variation "
            f"{stats.cv:.1%} > {CV_WARN:.0%}; close other programs or run longer (--duration)",
            stacklevel=3,
        )
    return BenchResult(
        model=runner.name, engine=runner.engine, batch=batch, input_shape=tuple(shape), warmup_s=warmup,
        min_duration_s=duration, min_iterations=iterations, measured_s=measured, stats=stats,
        throughput_ips=batch * len(times) / measured if measured > 0 else float("nan"), high_variance=high,
        runner=runner.describe(), environment=environment(),
    )


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


def physical_cores() -> int | None:
    """Physical cores (ONNX Runtime's default intra-op thread count), from /proc/cpuinfo on Linux."""
    try:
        cores = set()
        physical = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    cores.add((physical, value.strip()))
        return len(cores) or None
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a latency figure depends on: CPU, core counts, thread settings, library versions."""
    import onnxruntime
    import torch

    from . import __version__

    env = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        # other work on the machine is the commonest reason for noisy figures; record it
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "repdeploy": __version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:  # only report TensorRT when it is importable; never fail the environment block over it
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
