"""Calibrators on known distributions, the streamed histogram, and the calibration cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_quant import batches, calibrated, fused
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy import CalibrationError, DataError
from repdeploy.quant.calib_cache import CalibrationCache, weights_fingerprint
from repdeploy.quant.calibrators import EntropyCalibrator, MseCalibrator, StreamingHistogram, make_calibrator, mse_error


def _feed(method: str, data: torch.Tensor, qmax: int = 127, **kw) -> float:
    c = make_calibrator(method, **kw)
    for chunk in data.split(10_000):
        c.collect("t", chunk)
    return c.compute({"t": qmax})["t"]


@pytest.fixture(scope="module")
def gaussian() -> torch.Tensor:
    return torch.randn(200_000, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def laplace_outliers() -> torch.Tensor:
    torch.manual_seed(2)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    x[torch.randperm(x.numel())[:40]] = 50.0  # 0.02 % outliers far out in the tail
    return x


def test_max_keeps_every_value(gaussian, laplace_outliers):
    assert _feed("max", gaussian) == pytest.approx(float(gaussian.abs().max()))
    assert _feed("max", laplace_outliers) == pytest.approx(50.0)


def test_percentile_and_entropy_clip_outliers(laplace_outliers):
    p = _feed("percentile", laplace_outliers, percentile=99.9)
    e = _feed("entropy", laplace_outliers)
    # The exact 99.9 % quantile of |Laplace(1)| is ln(1000) = 6.9; histogram bins are 50/2048 wide.
    assert p == pytest.approx(np.log(1000.0), abs=0.1)
    assert 3.0 < e < 20.0, e


def test_entropy_on_gaussian_clips_the_tail_but_not_the_bulk(gaussian):
    e = _feed("entropy", gaussian)
    assert 2.5 < e < float(gaussian.abs().max())


def test_percentile_is_monotonic(gaussian):
    values = [_feed("percentile", gaussian, percentile=p) for p in (99.0, 99.9, 99.99, 100.0)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(float(gaussian.abs().max()), rel=1e-3)


def test_mse_minimises_the_error_it_reports(laplace_outliers):
    x = laplace_outliers.clone()
    x[x == 50.0] = 12.0  # outliers close enough that clipping them is worth it
    c = MseCalibrator()
    for chunk in x.split(10_000):
        c.collect("t", chunk)
    amax = c.compute({"t": 127})["t"]
    h = c.histograms["t"]
    edges = h.width * np.arange(1, h.bins + 1)
    assert c.errors["t"] == pytest.approx(mse_error(h.counts, h.width, edges, 127).min())
    off_grid = np.linspace(0.5, 12.0, 301)
    assert c.errors["t"] <= mse_error(h.counts, h.width, off_grid, 127).min() * 1.01
    assert amax < 12.0  # it clips the outliers, unlike max

    # The reported (histogram) error matches the error of really quantizing the data.
    def real_error(a: float) -> float:
        step = a / 127
        return float(((x.abs() - torch.clamp(torch.round(x.abs().clamp(max=a) / step), max=127) * step) ** 2).mean())

    assert c.errors["t"] == pytest.approx(real_error(amax), rel=0.1)
    assert real_error(amax) < real_error(12.0)


def test_unsigned_grid_changes_the_search():
    relu = torch.relu(torch.randn(100_000, generator=torch.Generator().manual_seed(3)))
    assert _feed("mse", relu, qmax=255) >= _feed("mse", relu, qmax=127) * 0.95


def test_streamed_histogram_memory_is_fixed_and_counts_are_kept():
    h = StreamingHistogram(2048)
    g = torch.Generator().manual_seed(4)
    n = 0
    for k in range(30):  # growing ranges force repeated re-binning
        x = torch.randn(5000, generator=g) * (1 + k)
        h.add(x)
        n += x.numel()
    assert h.counts.shape == (2048,)
    assert h.total == n
    # Every value lies below the (doubled) range, and the range covers the max seen.
    assert h.range >= 30 * 3.0


def test_streamed_percentile_matches_one_shot(gaussian):
    ordered = gaussian.sort().values  # ascending magnitudes arrive last: worst case for re-binning
    streamed = _feed("percentile", ordered[torch.argsort(ordered.abs())], percentile=99.0)
    exact = float(gaussian.abs().quantile(0.99))
    assert streamed == pytest.approx(exact, rel=0.03)


def test_entropy_refuses_coarse_histograms_and_bad_percentiles():
    with pytest.raises(CalibrationError, match="2048"):
        EntropyCalibrator(bins=1024)
    with pytest.raises(CalibrationError, match="percentile"):
        make_calibrator("percentile", percentile=0.0)
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        make_calibrator("kl")


def test_nan_activation_is_a_data_error():
    c = make_calibrator("max")
    with pytest.raises(DataError, match="NaN"):
        c.collect("t", torch.tensor([1.0, float("nan")]))


# ------------------------------------------------------------------------------------ cache


@pytest.fixture(scope="module")
def mini_cache():
    plain = fused("RepVGG-mini")
    qnet, cache = calibrated(plain, method="percentile", n=64)
    return plain, qnet, cache


def test_cache_round_trip_and_edit(tmp_path, mini_cache):
    plain, qnet, cache = mini_cache
    path = cache.save(tmp_path / "calib.json")
    back = CalibrationCache.load(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert back.amax == cache.amax
    assert set(back.amax) >= set(qnet.activation_quantizers())
    back.check_model(plain)
    # A user edits one range by hand; the edit is what gets used.
    d = json.loads(path.read_text())
    d["tensors"]["stage1.0.conv.input"]["amax"] = 0.5
    path.write_text(json.dumps(d))
    assert CalibrationCache.load(path).amax["stage1.0.conv.input"] == 0.5


def test_cache_of_another_model_is_refused(mini_cache):
    plain, _, cache = mini_cache
    with pytest.raises(CalibrationError, match="RepVGG-mini.*not for this RepOpt-VGG-mini"):
        cache.check_model(fused("RepOpt-VGG-mini"))
    other_weights = fused("RepVGG-mini", seed=1)
    assert weights_fingerprint(other_weights) != weights_fingerprint(plain)
    with pytest.raises(CalibrationError, match="other weights"):
        cache.check_model(other_weights)


def test_malformed_cache_is_refused(tmp_path, mini_cache):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="not readable JSON"):
        CalibrationCache.load(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CalibrationError, match="not a repdeploy calibration cache"):
        CalibrationCache.load(bad)
    d = mini_cache[2].to_dict()
    d["tensors"]["linear.input"]["amax"] = float("nan")
    bad.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="finite"):
        CalibrationCache.load(bad)
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationCache.load(tmp_path / "missing.json")


def test_model_input_keeps_its_observed_range():
    # Digits-like images: most pixels sit at one background value. Entropy alone clips the image
    # right after that spike; the model input must keep its full observed range instead.
    from helpers_quant import fused
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet

    g = torch.Generator().manual_seed(5)
    x = torch.full((32, 3, 32, 32), -0.8)
    strokes = torch.rand(32, 1, 32, 32, generator=g) > 0.9
    x = torch.where(strokes, torch.rand(32, 3, 32, 32, generator=g) * 2.0, x)
    q = QuantPlainNet(fused("RepVGG-mini"), "ort")
    q.set_weight_ranges()
    cache = calibrate(q, [x], method="entropy")
    assert cache.amax["stage0.conv.input"] == pytest.approx(float(x.abs().max()))
    c = make_calibrator("entropy")
    c.collect("t", x)
    assert c.compute()["t"] < 0.9 * float(x.abs().max())  # what entropy alone would have done


# ----------------------------------------------------------------- the vectorised searches


def _entropy_bins_by_loop(counts: np.ndarray, levels: int) -> tuple[int, float]:
    """The search written out candidate by candidate (the slow form it replaced): the oracle."""
    counts = np.array(counts, dtype=np.float64)
    counts[0] = counts[1]
    n = counts.size
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])
    best_kl, best_i = np.inf, n
    for i in range(levels, n + 1):
        ref = counts[:i]
        p = ref.copy()
        p[-1] += tail[i]
        group = (np.arange(i) * levels) // i
        nonzero = ref > 0
        mass = np.bincount(group, weights=ref, minlength=levels)
        size = np.bincount(group, weights=nonzero, minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(size[group], 1.0), 0.0)
        if p.sum() == 0 or q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        q = np.where((q == 0) & (p > 0), 1e-4, q)
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        if kl < best_kl - 1e-12:
            best_kl, best_i = kl, i
    return best_i, best_kl


def _histograms(seed: int = 0):
    rng = np.random.default_rng(seed)
    samples = [
        np.abs(rng.standard_normal(200_000)),
        np.maximum(rng.standard_normal(100_000) * 2 + 0.3, 0),  # ReLU output
        np.abs(rng.laplace(size=50_000)),
        rng.exponential(size=3000),  # sparse: many empty bins
        np.abs(rng.standard_cauchy(20_000)),  # heavy tail: most mass in the first bins
        rng.integers(0, 5, size=1000).astype(float),  # a few discrete values: tied candidates
    ]
    samples[2][:20] = 50.0
    for x in samples:
        yield np.histogram(x, bins=2048, range=(0, x.max() * 1.0001))[0].astype(np.float64)


@pytest.mark.parametrize("levels", [128, 256])
def test_vectorised_entropy_search_matches_the_loop(levels):
    from repdeploy.quant.calibrators import _kl_per_candidate, entropy_threshold_bins

    for counts in _histograms():
        expected, expected_kl = _entropy_bins_by_loop(counts, levels)
        assert entropy_threshold_bins(counts, levels) == expected
        flattened = counts.copy()
        flattened[0] = flattened[1]
        kl = _kl_per_candidate(flattened, levels)
        assert kl[expected - levels] == pytest.approx(expected_kl, rel=1e-9, abs=1e-12)


def test_entropy_search_on_real_activations_matches_the_loop():
    # Histograms of a real calibration run (RepVGG-mini on the digits), every tensor.
    plain = fused("RepVGG-mini")
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()
    c = EntropyCalibrator()
    q.disable()
    q.observe(c.collect)
    with torch.no_grad():
        for x in batches(128):
            q(x)
    q.observe(None)
    from repdeploy.quant.calibrators import entropy_threshold_bins

    grid = {qz.name: 256 if qz.unsigned else 128 for qz in q.activation_quantizers().values()}
    assert len(c.histograms) >= 8
    for name, h in c.histograms.items():
        levels = grid.get(name, 256)  # the grid each tensor is calibrated for
        assert entropy_threshold_bins(h.counts, levels) == _entropy_bins_by_loop(h.counts, levels)[0], name


def test_entropy_search_of_an_empty_histogram_keeps_everything():
    from repdeploy.quant.calibrators import entropy_threshold_bins

    assert entropy_threshold_bins(np.zeros(2048), 128) == 2048


# -------------------------------------------------------------- background collection


def _serial_cache(plain, method: str, xs):
    """Ranges collected in the calling thread, one activation at a time: what the worker must reproduce."""
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()
    c = make_calibrator(method)
    q.disable()
    q.observe(c.collect)
    with torch.no_grad():
        for x in xs:
            q(x)
    q.observe(None)
    qmax = {qz.name: 255 if qz.unsigned else 127 for qz in q.quantizers() if not qz.per_channel}
    return c, c.compute(qmax)


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile", "max"])
def test_background_collection_equals_serial_collection(method):
    import threading

    from repdeploy.quant.calib import MODEL_INPUT, calibrate

    plain = fused("RepVGG-mini")
    xs = batches(96, batch=32)
    threads_before = threading.active_count()
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()
    cache = calibrate(q, xs, method=method)
    assert threading.active_count() == threads_before  # the worker is gone
    c, serial = _serial_cache(plain, method, xs)
    for name, amax in serial.items():
        expected = c.absmax(name) if name == MODEL_INPUT else amax
        assert cache.amax[name] == expected, name  # bit-identical: same data, same order
        assert cache.tensors[name].min == c.minimum[name]
        assert cache.tensors[name].max == c.maximum[name]
    stages = cache.timings
    assert set(stages) == {"data_s", "forward_s", "collect_wait_s", "collect_overlapped_s", "search_s"}
    assert all(v >= 0 for v in stages.values())
    assert stages["collect_overlapped_s"] > 0


def test_nan_inside_the_model_fails_from_the_worker_thread():
    import threading

    from repdeploy.quant.calib import calibrate

    plain = fused("RepVGG-mini")
    with torch.no_grad():
        plain.stage1[0].conv.weight[0, 0, 0, 0] = float("nan")  # finite images, NaN activations after it
    q = QuantPlainNet(plain, "ort")  # no weight ranges: calibration runs the float model
    threads_before = threading.active_count()
    with pytest.raises(DataError, match=r"tensor stage2\.0\.conv\.input holds NaN"):
        calibrate(q, batches(64), method="entropy")
    assert threading.active_count() == threads_before
    assert all(qz.observer is None for qz in q.activation_quantizers().values())
