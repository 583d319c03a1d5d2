"""Latency measurement, one module per step: `harness` times runners (warm-up, minimums, interleaved
rounds, fresh sessions), `stats` says what the timings show and how sure it is (medians with
intervals, speed-ups with intervals across sessions), `machine` records what the figures depend on,
`models` is `repdeploy bench` as a library call over model files (`bench_models`), and `processes`
runs each of its sessions in a fresh process on request (`--fresh-processes`)."""

from __future__ import annotations

from .harness import (DEFAULT_DURATION_S, DEFAULT_ITERATIONS, DEFAULT_WARMUP_S, BenchResult, BenchSettings, bench,
                      bench_interleaved, bench_sessions, bench_settings)
from .machine import cpu_model, environment, physical_cores
from .models import BenchModelsSettings, BenchReport, bench_models, unique_labels
from .stats import (BOOTSTRAP_RESAMPLES, CONFIDENCE, MIN_ROUNDS, NOISE_TOL, LatencyStats, Speedup, bootstrap_median_ci,
                    latency_stats, speedup_interval, speedup_over_sessions, t_quantile)

__all__ = [
    "BenchResult", "BenchSettings", "bench", "bench_interleaved", "bench_sessions", "bench_settings",
    "BenchModelsSettings", "BenchReport", "bench_models", "unique_labels",
    "DEFAULT_WARMUP_S", "DEFAULT_DURATION_S", "DEFAULT_ITERATIONS",
    "LatencyStats", "Speedup", "latency_stats", "bootstrap_median_ci", "speedup_interval", "speedup_over_sessions",
    "t_quantile", "NOISE_TOL", "CONFIDENCE", "BOOTSTRAP_RESAMPLES", "MIN_ROUNDS", "environment", "cpu_model",
    "physical_cores",
]
