"""The TensorRT path (Polygraphy builder and runner) exercised against the tensorrt test double."""

import numpy as np
import pytest

from conftest import trained_like
from repdeploy.fuse import fuse


@pytest.fixture(scope="module")
def plain():
    return fuse(trained_like("RepVGG-mini")).plain


def test_fp32_engine_builds_and_runs_like_onnxruntime(fake_tensorrt, plain, tmp_path):
    from repdeploy.export.onnx import export_onnx
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.runtime import open_runner

    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    build = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 4, 8), input_size=32)
    assert build.engine.is_file() and build.strongly_typed and not build.cached
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runner(onnx_path, "ort") as o, open_runner(build.engine, "trt") as t:
        ref, out = o.infer(x), t.infer(x)
        assert t.last_inference_time() > 0
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert fake_tensorrt.VIOLATIONS == []
