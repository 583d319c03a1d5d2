"""Latency statistics on a known sequence, and the harness's stopping rules on a real runner."""

import math
import time
import warnings

import numpy as np
import pytest

from conftest import trained_like
from repdeploy.bench import (NOISE_TOL, bench, bench_interleaved, bench_sessions, bootstrap_median_ci, environment,
                             latency_stats, speedup_interval, speedup_over_sessions, t_quantile)
from repdeploy.errors import InputError
from repdeploy.fuse import fuse
from repdeploy.runtime import InputMetadata, Runner, open_runner


def test_stats_of_1_to_100_ms():
    # 1, 2, ..., 100 ms: closed forms for a uniform grid, computed by hand, not by numpy.
    s = latency_stats([i / 1000 for i in range(1, 101)])
    assert s.count == 100
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(100.0)
    assert s.mean_ms == pytest.approx(50.5)
    # linear interpolation: position q*(n-1) in the sorted list, value = position + 1
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    std = math.sqrt((100**2 - 1) / 12)  # population std of 1..n
    assert s.std_ms == pytest.approx(std)
    assert s.cv == pytest.approx(std / 50.5)


def test_stats_order_does_not_matter_and_outliers_show_in_the_tail():
    seq = [0.002] * 98 + [0.050, 0.003]
    s = latency_stats(list(reversed(seq)))
    assert s.p50_ms == pytest.approx(2.0) and s.min_ms == pytest.approx(2.0)
    assert s.max_ms == pytest.approx(50.0)
    assert s.p99_ms == pytest.approx(3.0 + 0.01 * (50.0 - 3.0))
    with pytest.raises(InputError):
        latency_stats([])
    with pytest.raises(InputError):
        latency_stats([0.001, float("nan")])


@pytest.fixture(scope="module")
def ort_runner():
    plain = fuse(trained_like("RepVGG-mini")).plain
    runner = open_runner(plain, "ort", threads=1)
    with runner:
        yield runner


@pytest.mark.filterwarnings("ignore:.*latency is noisy")
def test_harness_meets_both_minimums(ort_runner):
    few = bench(ort_runner, batch=2, warmup=0, duration=0, iterations=7)
    assert few.stats.count == 7 and few.input_shape == (2, 3, 32, 32)
    long = bench(ort_runner, batch=1, warmup=0.05, duration=0.3, iterations=3)
    assert long.measured_s >= 0.3 and long.stats.count >= 3
    assert long.throughput_ips == pytest.approx(long.stats.count / long.measured_s)
    # per-iteration times cannot add up to more than the loop's wall time
    assert long.stats.mean_ms * long.stats.count <= long.measured_s * 1e3 * 1.001
    d = long.to_dict()
    assert d["stats"]["p99_ms"] >= d["stats"]["p50_ms"] and d["environment"]["onnxruntime"]
    assert d["runner"]["intra_op_threads"] == 1


class Alternating(Runner):
    """A runner whose latency alternates 1 ms / 12 ms: a known, very unstable timing."""

    engine = "sleep"

    def activate_impl(self):
        self.calls = 0

    def infer_impl(self, x):
        self.calls += 1
        time.sleep(0.001 if self.calls % 2 else 0.012)
        return np.zeros((len(x), 10), np.float32)

    def get_input_metadata_impl(self):
        return InputMetadata("x", (None, 3, 8, 8))


def test_alternating_latency_is_noisy_and_extends_to_the_cap():
    with Alternating("alternating") as r, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        short = bench(r, warmup=0, duration=0, iterations=10)
        assert short.stats.count == 10  # no cap given: no extension
        capped = bench(r, warmup=0, duration=0, iterations=10, max_duration=0.4)
    # half the runs at 1 ms, half at 12 ms: the median is anywhere in between, however long it runs
    assert short.stats.noisy and short.high_variance and capped.stats.noisy
    assert capped.measured_s >= 0.4 and capped.stats.count > 10
    assert any("latency is noisy" in str(w.message) and "cap" in str(w.message) for w in caught)
    assert 1.0 <= short.stats.min_ms < 5 and short.stats.max_ms >= 12.0


def spiky(n, seed=0, median=1.0, spikes=0.01):
    """Timings in seconds: a tight log-normal around `median` ms plus rare 40x spikes, as a
    shared machine gives them."""
    rng = np.random.default_rng(seed)
    ms = median * np.exp(rng.normal(0.0, 0.02, n))
    hit = rng.random(n) < spikes
    ms[hit] *= 40.0
    return ms / 1e3


def test_spikes_inflate_the_cv_but_not_the_median_interval():
    s = latency_stats(spiky(2000))
    assert s.cv > 1.0  # the old std-based warning would have cried wolf
    assert not s.noisy and s.ci_halfwidth < 0.01
    assert s.median_ci_low_ms <= s.median_ms <= s.median_ci_high_ms
    assert s.median_ci_low_ms == pytest.approx(1.0, rel=0.01) and s.median_ci_high_ms == pytest.approx(1.0, rel=0.01)
    assert s.max_ms > 30 and s.iqr_ms < 0.05  # the spikes are still there, in the tail


def test_median_interval_covers_the_true_median_at_its_nominal_rate():
    # Log-normal with median exactly 1 ms: a 95 % interval must cover 1.0 in about 95 % of runs.
    covered = 0
    for seed in range(200):
        ms = np.exp(np.random.default_rng(seed).normal(0.0, 0.3, 201))
        lo, hi = bootstrap_median_ci(ms, seed=seed)
        covered += lo <= 1.0 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_beta_draw_matches_an_explicit_bootstrap():
    ms = np.exp(np.random.default_rng(1).normal(0.0, 0.3, 301))
    idx = np.random.default_rng(2).integers(0, ms.size, size=(4000, ms.size))
    explicit = np.percentile(np.median(ms[idx], axis=1), [2.5, 97.5])
    fast = bootstrap_median_ci(ms, resamples=4000)
    width = explicit[1] - explicit[0]
    assert abs(fast[0] - explicit[0]) < 0.1 * width and abs(fast[1] - explicit[1]) < 0.1 * width


def test_noisy_flag_is_raised_on_few_runs_and_cleared_by_more():
    rng = np.random.default_rng(0)
    few = latency_stats(rng.uniform(1e-3, 2e-3, 12))
    many = latency_stats(rng.uniform(1e-3, 2e-3, 20000))
    assert few.noisy and few.ci_halfwidth > NOISE_TOL
    assert not many.noisy and many.ci_halfwidth < NOISE_TOL


def test_speedup_interval_over_rounds():
    rng = np.random.default_rng(0)
    load = 1.0 + 0.5 * rng.random(40)  # machine load drifts, and hits both models of a round alike
    steady = speedup_interval(2.0 * load, 1.0 * load)
    assert steady.ratio == pytest.approx(2.0) and steady.ci_low == pytest.approx(2.0) and not steady.noisy
    independent = speedup_interval(2.0 * load, rng.permutation(load))
    assert independent.noisy and independent.ci_low < 2.0 < independent.ci_high
    assert speedup_interval([2.0] * 3, [1.0] * 3).noisy  # too few rounds to judge
    with pytest.raises(InputError):
        speedup_interval([1.0, 2.0], [1.0])


def test_speedup_over_sessions_widens_when_sessions_disagree():
    rng = np.random.default_rng(1)

    def session(level):  # 20 rounds whose ratio sits tightly at `level`
        ref = 1.0 + 0.1 * rng.random(20)
        return ref * level, ref * (1.0 + 0.002 * rng.standard_normal(20))

    agreeing = speedup_over_sessions([session(1.30), session(1.31), session(1.30)])
    assert not agreeing.noisy and agreeing.sessions == 3 and agreeing.ci_low <= 1.30 <= agreeing.ci_high
    assert agreeing.session_ratios == pytest.approx((1.30, 1.31, 1.30), abs=0.01)
    # each session alone is precise (+-1 %), but their levels are 0.88x .. 1.11x apart, as seen
    # between repeated demo runs: the figure must not claim a +-1 % agreement
    levels = [0.88, 1.0, 1.11]
    for r, c in (session(v) for v in levels):
        assert not speedup_interval(r, c).noisy
    disagreeing = speedup_over_sessions([session(v) for v in levels])
    assert disagreeing.noisy and disagreeing.ci_low < 0.95 and disagreeing.ci_high > 1.05
    one = speedup_over_sessions([session(1.2)])
    assert one.sessions == 1 and not one.noisy
    with pytest.raises(InputError):
        speedup_over_sessions([([1.0, 2.0], [1.0])])


class Scripted(Runner):
    """Reports the latency it is told (no sleeping): the timings are injected, so what the harness
    makes of them does not depend on the machine's load. A seeded +-1 % jitter keeps them real
    numbers rather than one repeated value."""

    engine = "scripted"
    times_itself = True

    def __init__(self, name, seconds, seed=0):
        super().__init__(name)
        self.seconds, self.rng = seconds, np.random.default_rng(seed)

    def activate_impl(self):
        pass

    def infer_impl(self, x):
        self._last_time = self.seconds * (1.0 + 0.01 * self.rng.uniform(-1, 1))
        return np.zeros((len(x), 10), np.float32)

    def get_input_metadata_impl(self):
        return InputMetadata("x", (None, 3, 8, 8))


def test_bench_sessions_opens_fresh_runners_and_flags_a_level_that_moves():
    opened = []

    def pair(levels):
        def open_pair():
            k = len(opened) // 2
            runners = [Scripted("fp32", 0.002, seed=k), Scripted("int8", levels[k], seed=100 + k)]
            opened.extend(runners)
            return runners
        return open_pair

    kwargs = dict(sessions=3, warmup=0.0, duration=0.06, iterations=6)
    (a, b), steady = bench_sessions(pair([0.001] * 3), **kwargs)
    assert len(opened) == 6 and not any(r.is_active for r in opened)  # each session closed after use
    assert steady.sessions == 3 and steady.ratio == pytest.approx(2.0, rel=0.01) and not steady.noisy
    assert steady.session_ratios == pytest.approx((2.0, 2.0, 2.0), rel=0.01) and b.speedup == steady
    assert a.stats.count >= 6 and a.rounds == b.rounds >= 9 and a.speedup is None  # 3 rounds a session
    opened.clear()
    _, moving = bench_sessions(pair([0.001, 0.002, 0.004]), **kwargs)  # 2x, 1x, 0.5x
    assert moving.session_ratios == pytest.approx((2.0, 1.0, 0.5), rel=0.01)
    assert moving.ratio == pytest.approx(1.0, rel=0.01)  # the geometric mean, the interval's centre
    assert moving.noisy and moving.ci_low < 0.5 and moving.ci_high > 2.0  # t(2 df) = 4.30: wider than the sessions


def test_t_quantile_matches_the_tables():
    # Student-t two-sided 95 % and 99 % points, from printed tables.
    for df, q95, q99 in ((1, 12.706, 63.657), (2, 4.303, 9.925), (5, 2.571, 4.032), (11, 2.201, 3.106),
                         (30, 2.042, 2.750)):
        assert t_quantile(0.95, df) == pytest.approx(q95, abs=1e-3)
        assert t_quantile(0.99, df) == pytest.approx(q99, abs=1e-3)
    with pytest.raises(InputError):
        t_quantile(0.95, 0)


def simulated_run(rng, sessions=12, rounds=10, level_sd=0.08, true=4.0):
    """One bench run as the shared machine gives it: every fresh session's speed-up sits at its own
    level (log-normal around `true`, sd `level_sd`), and its rounds vary +-2 % around that level."""
    out = []
    for level in true * np.exp(rng.normal(0.0, level_sd, sessions)):
        ref = 16.0 * (1.0 + 0.3 * rng.random(rounds))  # load hits both models of a round alike
        out.append((ref, ref / level * np.exp(rng.normal(0.0, 0.02, rounds))))
    return out


def test_session_interval_covers_the_true_speedup_and_five_runs_overlap():
    """The interval must cover what a rerun shows. Over simulated runs whose sessions sit at
    levels 8 % apart, the t-interval over sessions covers the true speed-up at about its nominal
    95 %, and sets of five runs overlap. Planted faults: intervals blind to the sessions, over the
    pooled rounds of all sessions or over one session's rounds (`--sessions 1`), cover it in far
    fewer runs, and their five-run sets often (or always) fail to overlap. Seeded: deterministic."""
    rng = np.random.default_rng(0)
    runs = [simulated_run(rng) for _ in range(200)]
    honest = [speedup_over_sessions(r) for r in runs]
    pooled = [speedup_interval(np.concatenate([a for a, _ in r]), np.concatenate([b for _, b in r]), resamples=400)
              for r in runs[:60]]
    one_session = [speedup_interval(*r[0], resamples=400) for r in runs[:60]]

    def cover(intervals):
        return np.mean([s.ci_low <= 4.0 <= s.ci_high for s in intervals])

    def overlap_rate(intervals):
        sets = [intervals[i:i + 5] for i in range(0, len(intervals) - 4, 5)]
        return np.mean([max(s.ci_low for s in five) <= min(s.ci_high for s in five) for five in sets])

    assert 0.90 <= cover(honest) <= 0.99 and overlap_rate(honest) >= 0.9  # measured 0.955 and 0.95
    assert cover(pooled) < 0.8 and overlap_rate(pooled) < 0.7  # 0.65 and 0.5
    assert cover(one_session) < 0.5 and overlap_rate(one_session) < 0.2  # 0.23 and 0.0
    widths = [max(s.ratio - s.ci_low, s.ci_high - s.ratio) / s.ratio for s in honest]
    assert 0.03 < np.median(widths) < 0.08  # still says something: about +-5 % at 12 sessions


class HostTimed(Scripted):
    """Times its 'GPU' itself and reports the host's whole call apart, as the TensorRT runner does."""

    def last_host_latency(self):
        return self._last_time + 0.0005


def test_host_latency_is_reported_beside_the_runtimes_own_timing():
    with HostTimed("trt-like", 0.001) as gpu, Scripted("ort-like", 0.001) as cpu:
        with_host = bench(gpu, warmup=0.0, duration=0.0, iterations=20)
        (ours, theirs), _ = bench_interleaved([gpu, cpu], warmup=0.0, duration=0.04, iterations=5)
    assert with_host.stats.median_ms == pytest.approx(1.0, rel=0.02)
    assert with_host.host_stats.median_ms == pytest.approx(1.5, rel=0.02) and with_host.host_stats.count == 20
    assert ours.host_stats.median_ms == pytest.approx(1.5, rel=0.02) and ours.host_stats.count == ours.stats.count
    assert theirs.host_stats is None and ours.to_dict()["host_stats"]["p50_ms"] == pytest.approx(1.5, rel=0.02)


def test_environment_names_the_machine():
    env = environment()
    assert env["cpu"] and env["logical_cpus"] >= 1 and env["torch"] and env["numpy"] == np.__version__


def test_bench_cli_reports_and_ends_with_passed(tmp_path):
    import json
    import subprocess
    import sys

    from repdeploy.checkpoints import save_fused

    fused = save_fused(fuse(trained_like("RepVGG-mini")).plain, tmp_path / "fused.pt")
    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", "repdeploy", "bench", str(fused), str(tmp_path / "missing.onnx"), "--engine", "ort",
            "--batch", "1,4", "--threads", "1", "--warmup", "0", "--duration", "0", "--iterations", "5", "--json", str(out)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr  # the missing model is an input error; the good one still ran
    assert r.stdout.strip().splitlines()[-1].startswith("&&&& FAILED repdeploy bench")
    assert "missing.onnx" in r.stderr
    doc = json.loads(out.read_text())
    assert [x["batch"] for x in doc["results"]] == [1, 4] and doc["results"][1]["stats"]["count"] == 5
    assert doc["failures"][0]["path"].endswith("missing.onnx") and doc["environment"]["cpu"]
    r = subprocess.run(args[:5] + args[6:], capture_output=True, text=True)
    assert r.returncode == 0 and "&&&& PASSED repdeploy bench" in r.stdout
    assert "p99" in r.stdout and "throughput" in r.stdout


class SizedSleeper(Scripted):
    def __init__(self, name, size):
        super().__init__(name, 0.001)
        self.size = size

    def get_input_metadata_impl(self):
        return InputMetadata("x", (None, 3, self.size, self.size))


def test_a_pair_with_different_input_shapes_is_refused_not_timed():
    """Planted fault: an INT8 file recording 224 px beside its 96-px FP32 twin gave a speed-up of
    1.02x that compared 224-px INT8 against 96-px FP32 (found while building the demo's A0)."""
    from repdeploy.bench import bench_interleaved

    with SizedSleeper("fp32", 96) as a, SizedSleeper("int8", 224) as b:
        with pytest.raises(InputError, match="different inputs"):
            bench_interleaved([a, b], warmup=0.0, duration=0.01, iterations=1)
    with SizedSleeper("fp32", 96) as a, SizedSleeper("int8", 96) as b:
        results, speedup = bench_interleaved([a, b], warmup=0.0, duration=0.01, iterations=1)
    assert [r.input_shape for r in results] == [(1, 3, 96, 96)] * 2 and speedup is not None


def test_bench_cli_shows_host_latency_beside_gpu_compute_for_tensorrt(fake_tensorrt, tmp_path, monkeypatch):
    """Through the TensorRT double: each host<->device copy takes 4 ms, the 'kernel' 1 ms. The GPU
    compute column must leave the copies out and the host column must hold them (ORT rows have
    no host column of their own: their one timing is the host's)."""
    import json

    from click.testing import CliRunner

    from repdeploy.cli import main
    from repdeploy.export.onnx import export_onnx
    from repdeploy.export.tensorrt import build_engine

    onnx_path = export_onnx(fuse(trained_like("RepVGG-mini")).plain, tmp_path / "m.onnx", input_size=32)
    engine = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 4, 8)).engine
    copy, execute = fake_tensorrt.cudart.memcpy, fake_tensorrt.IExecutionContext.execute_async_v3

    def slow_copy(*args, **kwargs):
        time.sleep(0.004)
        return copy(*args, **kwargs)

    def slow_execute(self, stream_handle):
        time.sleep(0.001)
        return execute(self, stream_handle)

    monkeypatch.setattr(fake_tensorrt.cudart, "memcpy", slow_copy)
    monkeypatch.setattr(fake_tensorrt.IExecutionContext, "execute_async_v3", slow_execute)
    args = ["bench", str(engine), "--engine", "trt", "--warmup", "0", "--duration", "0", "--iterations", "5", "-q"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)["results"]
    gpu, host = row["stats"], row["host_stats"]
    assert host["count"] == gpu["count"] >= 5
    assert 1.0 <= gpu["median_ms"] < 8.0 <= host["median_ms"], (gpu["median_ms"], host["median_ms"])
    text = CliRunner().invoke(main, args).stdout
    assert "GPU compute" in text and "host latency ms" in text and "execute_async_v3" in text
    table = CliRunner().invoke(main, [*args[:2], str(engine), *args[2:], "--sessions", "1"]).stdout
    # the same file twice is two rows (its label, once keyed by path, named both `#2`)
    assert "m.engine #1  engine trt" in table and "m.engine #2  engine trt" in table
    header = next(line for line in table.splitlines() if line.startswith("model "))
    assert "p50 ms" in header and "host ms" in header and "host ms the whole call" in header


def test_bench_models_returns_its_status_and_never_exits(tmp_path):
    """The library runs what it can and reports the rest; only the command line turns the report's
    exit code into the process's (issue 20). Bad settings are refused before any model loads."""
    from repdeploy import BenchModelsSettings, BenchReport, BenchSettings, bench_models
    from repdeploy.export.onnx import export_onnx

    good = export_onnx(fuse(trained_like("RepVGG-mini")).plain, tmp_path / "m.onnx", input_size=32)
    timing = BenchSettings(warmup=0.0, duration=0.0, iterations=3, sessions=2)
    report = bench_models([good, tmp_path / "missing.onnx", good], BenchModelsSettings(timing=timing, threads=1))
    assert isinstance(report, BenchReport) and report.status == "FAILED" and report.exit_code == 2
    assert [f["path"] for f in report.failures] == [str(tmp_path / "missing.onnx")]
    assert [r["label"] for r in report.results] == ["m.onnx #1", "m.onnx #2"]  # the two good ones still ran
    [sp] = report.speedups
    assert sp["sessions"] == 2 and sp["interval"] == "t-interval over sessions" and len(sp["session_speedups"]) == 2
    assert report.to_dict()["verdict"] == "FAILED"
    ok = bench_models([good], timing=timing, batches=(1, 2))
    assert ok.status == "PASSED" and ok.exit_code == 0 and [r["batch"] for r in ok.results] == [1, 2]
    # each session in a fresh process: the children time the files and the parent pools their sessions
    fresh = bench_models([good, good], timing=timing, threads=1, fresh_processes=True, ort_spin_us="7")
    assert fresh.status == "PASSED" and [r["stats"]["count"] >= 3 for r in fresh.results] == [True, True]
    assert fresh.speedups[0]["sessions"] == 2 and fresh.results[1]["rounds"] >= 6  # 3 rounds a session
    assert [r["runner"]["session_config"] for r in fresh.results] == [{"session.intra_op.spin_duration_us": "7"}] * 2
    with pytest.raises(InputError, match="--duration"):
        bench_models([tmp_path / "missing.onnx"], timing=BenchSettings(duration=float("nan")))
    with pytest.raises(TypeError, match="unknown"):
        bench_models([good], sesions=3)
