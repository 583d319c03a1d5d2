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

from .errors import InputError
from .runtime.base import Runner

#: CPU latencies on a shared machine vary; above this coefficient of variation the figures are
#: flagged (trtexec warns for GPU compute time at a much tighter bound, CPUs are noisier).
CV_WARN = 0.10

DEFAULT_WARMUP_S = 0.5
DEFAULT_DURATION_S = 2.0
DEFAULT_ITERATIONS = 20


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
    meta = runner.get_input_metadata()
    size = meta.image_size or image_size
    if size is None:
        raise InputError(f"{runner.name}: input size unknown (shape {meta.shape}); pass image_size")
    shape = (batch, meta.channels or 3, size, size)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    # Warm-up: at least one call, so lazy allocation or compilation never lands in the figures.
    end_warmup = time.perf_counter() + warmup
    runner.infer(x)
    while time.perf_counter() < end_warmup:
        runner.infer(x)

    times: list[float] = []
    infer, last = runner.infer, runner.last_inference_time
    start = time.perf_counter()
    deadline = start + duration
    while True:
        infer(x)
        times.append(last())
        if len(times) >= iterations and time.perf_counter() >= deadline:
            break
    measured = time.perf_counter() - start

    stats = latency_stats(times)
    high = stats.cv > CV_WARN
    if high:
        warnings.warn(
            f"{runner.name} ({runner.engine}, batch {batch}): latency is unstable, coefficient of variation "
            f"{stats.cv:.1%} > {CV_WARN:.0%}; close other programs or run longer (--duration)",
            stacklevel=2,
        )
    return BenchResult(
        model=runner.name, engine=runner.engine, batch=batch, input_shape=shape, warmup_s=warmup,
        min_duration_s=duration, min_iterations=iterations, measured_s=measured, stats=stats,
        throughput_ips=batch * len(times) / measured if measured > 0 else float("nan"), high_variance=high,
        runner=runner.describe(), environment=environment(),
    )


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
