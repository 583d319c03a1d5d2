"""What a real GPU and real TensorRT enforce, which the double now enforces too (issue 18).

Each test here failed before the fix it guards: GPU compute time timed around Polygraphy's whole
`infer()`, a batch range put on a static batch dimension, cached plans returned for another GPU
or TensorRT version, availability decided by torch's CUDA build, FP16 engines computing in FP32.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import onnx
import pytest

from conftest import trained_like
from repdeploy import BackendMissingError, InputError, fuse

EXECUTE_S = 0.01  # the "kernel": what execute_async_v3 takes
COPY_S = 0.2  # each host<->device copy: far longer, so a timing that includes one cannot pass


@pytest.fixture(scope="module")
def plain():
    return fuse(trained_like("RepVGG-mini")).plain


@pytest.fixture
def onnx_path(plain, tmp_path):
    from repdeploy import export_onnx

    return export_onnx(plain, tmp_path / "m.onnx", input_size=32)


def _slow_copies_and_kernel(monkeypatch, trt):
    cudart = trt.cudart
    copy, execute = cudart.memcpy, trt.IExecutionContext.execute_async_v3

    def slow_copy(*args, **kwargs):
        time.sleep(COPY_S)
        return copy(*args, **kwargs)

    def slow_execute(self, stream_handle):
        time.sleep(EXECUTE_S)
        return execute(self, stream_handle)

    monkeypatch.setattr(cudart, "memcpy", slow_copy)
    monkeypatch.setattr(trt.IExecutionContext, "execute_async_v3", slow_execute)


def test_gpu_compute_time_is_execute_async_v3_alone_and_host_latency_is_apart(fake_tensorrt, onnx_path, tmp_path,
                                                                             monkeypatch):
    """trtexec's GPU compute time: CUDA events on the runner's stream around execute_async_v3 only.
    Polygraphy's infer() also copies the batch in and the logits out and synchronizes the host:
    that is host latency, reported on its own."""
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import open_runner

    engine = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 4, 8)).engine
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runner(engine, "trt") as t:
        t.infer(x)  # warm: the first inference allocates
        _slow_copies_and_kernel(monkeypatch, fake_tensorrt)
        t.infer(x)
        gpu, host = t.last_inference_time(), t.last_host_latency()
        described = t.describe()
    assert EXECUTE_S <= gpu < COPY_S, f"GPU compute time {gpu:.3f} s includes the copies"
    assert host >= EXECUTE_S + 2 * COPY_S, f"host latency {host:.3f} s misses the copies"
    assert "execute_async_v3" in described["timing"]
    assert described["host_latency_ms"]["last"] >= 1e3 * (EXECUTE_S + 2 * COPY_S)
    assert fake_tensorrt.cudart.handle.live_events == 0  # the runner's events are destroyed with it


def _static(onnx_file, tmp_path, batch: int):
    model = onnx.load(str(onnx_file))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        fixed = [batch, 3, 32, 32] if value in model.graph.input else [batch, 10]
        for d, v in zip(dims, fixed):
            d.ClearField("dim_param")
            d.dim_value = v
    path = tmp_path / f"static{batch}.onnx"
    onnx.save(model, str(path))
    return path


def test_a_static_input_gets_min_opt_max_equal_to_its_shape(fake_tensorrt, onnx_path, tmp_path):
    """TensorRT refuses a batch range on a batch the ONNX fixes ("dimension number 0 in profile 0
    does not match network definition")."""
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.export.trt_profiles import parse_shapes
    from repdeploy import open_runner

    static = _static(onnx_path, tmp_path, batch=2)
    build = build_engine(static, tmp_path / "s.engine")
    assert [(r.min, r.opt, r.max) for r in build.profiles] == [((2, 3, 32, 32),) * 3]
    assert fake_tensorrt.VIOLATIONS == []
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with open_runner(onnx_path, "ort") as o, open_runner(build.engine, "trt") as t:
        np.testing.assert_allclose(t.infer(x), o.infer(x), atol=1e-5)
    with pytest.raises(InputError, match="does not fit the ONNX input"):
        build_engine(static, tmp_path / "bad.engine", profiles=parse_shapes("input:8x3x32x32"))
    # and the double refuses it too, as TensorRT does, when asked directly
    trt = fake_tensorrt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(static))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is None
    assert "dimension number 0 in profile 0 does not match network definition" in trt.VIOLATIONS[-1]


def test_engine_cache_is_keyed_and_checked_by_gpu_and_exact_tensorrt_version(fake_tensorrt, onnx_path, tmp_path,
                                                                            monkeypatch):
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import open_runner

    trt, cudart = fake_tensorrt, fake_tensorrt.cudart
    cache = tmp_path / "trt_cache"
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)

    def build(name):
        return build_engine(onnx_path, tmp_path / name, batch_sizes=(1, 2, 4), cache_dir=cache)

    first = build("a.engine")
    assert not first.cached and build("a2.engine").cached
    assert first.compute_capability == "8.6" and first.tensorrt_version == trt.__version__

    cudart.compute_capability = (9, 0)  # the run directory moved to another GPU
    with pytest.raises(InputError, match=r"compute capability 9\.0\); rebuild it here"):
        open_runner(first.engine, "trt").activate()  # TensorRT refuses the 8.6 plan here
    hopper = build("h.engine")
    assert not hopper.cached and hopper.compute_capability == "9.0"  # "rebuild it here" rebuilds
    with open_runner(hopper.engine, "trt") as t:
        t.infer(x)

    monkeypatch.setattr(trt, "__version__", "10.13.1.2")  # same GPU, another TensorRT
    assert not build("v.engine").cached

    # A cache entry whose plan does not load here (copied from another machine, or stale) is
    # rebuilt, not returned: the stamp and a deserialization are checked on every hit.
    monkeypatch.setattr(trt, "__version__", "10.13.0.35")
    cudart.compute_capability = (8, 6)
    entry = next(p for p in (cache / "engines").glob("*.engine") if p.read_bytes() == first.engine.read_bytes())
    shutil.copyfile(hopper.engine, entry)
    again = build("again.engine")
    assert not again.cached
    with open_runner(again.engine, "trt") as t:
        t.infer(x)
    assert build("once-more.engine").cached  # the rebuilt entry replaced the bad one


def test_availability_is_tensorrt_polygraphy_and_a_cuda_device_not_torch(fake_tensorrt, monkeypatch):
    """The documented install has CPU torch: TensorRT and Polygraphy need no torch, so torch's
    CUDA build must not decide whether TensorRT runs."""
    import polygraphy.cuda.cuda as poly_cuda
    import torch

    from repdeploy.export.tensorrt import import_tensorrt, tensorrt_available

    from repdeploy.doctor import report

    assert not torch.cuda.is_available()
    assert tensorrt_available() and import_tensorrt() is fake_tensorrt
    assert report()["tensorrt"] == {"usable": True, "version": fake_tensorrt.__version__, "compute_capability": "8.6"}
    fake_tensorrt.cudart.device_count = 0
    # as real TensorRT does: Builder() and Runtime() initialise CUDA and fail without a device
    for factory in (fake_tensorrt.Builder, fake_tensorrt.Runtime):
        with pytest.raises(TypeError, match="returned nullptr"):
            factory(fake_tensorrt.Logger())
    with pytest.raises(BackendMissingError, match="no CUDA device is visible") as info:
        import_tensorrt()
    assert info.value.exit_code == 4 and "pip install 'repdeploy[trt]'" in str(info.value)
    fake_tensorrt.cudart.device_count = 1
    # Polygraphy loads the machine's real libcudart: absent, or present with no driver and no GPU
    monkeypatch.setattr(poly_cuda, "G_CUDA", None)
    with pytest.raises(BackendMissingError, match="CUDA runtime, which did not load|no CUDA device is visible"):
        import_tensorrt()


def test_fp16_engines_compute_in_fp16(fake_tensorrt, onnx_path, tmp_path):
    """An FP16 engine's numbers are FP16's: near the FP32 ones, not equal to them."""
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import open_runner

    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    flagged = build_engine(onnx_path, tmp_path / "f16.engine", precision="fp16", batch_sizes=(1, 4, 8))
    fp32 = build_engine(onnx_path, tmp_path / "f32.engine", batch_sizes=(1, 4, 8))
    with open_runner(onnx_path, "ort") as o, open_runner(flagged.engine, "trt") as h, \
            open_runner(fp32.engine, "trt") as f:
        ref, half, full = o.infer(x), h.infer(x), f.infer(x)
        assert h.get_input_metadata().dtype == "float32"  # builder flags keep the engine's I/O types
    np.testing.assert_allclose(full, ref, atol=1e-5)
    deviation = np.abs(half - ref).max() / np.abs(ref).max()
    assert 1e-5 < deviation < 1e-2, deviation


def test_a_refused_engine_leaks_no_cuda_events(fake_tensorrt, onnx_path, tmp_path):
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import open_runner

    engine = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 2, 4)).engine
    fake_tensorrt.cudart.compute_capability = (7, 5)
    with pytest.raises(InputError, match="compute capability 7.5"):
        open_runner(engine, "trt").activate()
    assert fake_tensorrt.cudart.handle.live_events == 0 and fake_tensorrt.cudart.live_allocations == 0
