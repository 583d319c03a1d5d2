"""Latency statistics on a known sequence, and the harness's stopping rules on a real runner."""

import math
import time
import warnings

import numpy as np
import pytest

from conftest import trained_like
from repdeploy.bench import CV_WARN, bench, environment, latency_stats
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


@pytest.mark.filterwarnings("ignore:.*coefficient of variation")
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


def test_high_coefficient_of_variation_warns():
    with Alternating("alternating") as r, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bench(r, warmup=0, duration=0, iterations=10)
    assert result.stats.cv > CV_WARN and result.high_variance
    assert any("coefficient of variation" in str(w.message) for w in caught)
    assert 1.0 <= result.stats.min_ms < 5 and result.stats.max_ms >= 12.0


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
