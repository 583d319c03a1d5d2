"""TensorRT path: lazy imports, exit code 4 with the install hint here, a real build where possible."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repdeploy import BackendMissingError
from repdeploy.export.tensorrt import INSTALL_HINT, tensorrt_available

NO_TRT = "TensorRT and an NVIDIA GPU are not available on this machine"


def test_modules_import_without_tensorrt():
    # importing the builder and runner must not import tensorrt (or touch CUDA)
    code = ("import sys, repdeploy.export.tensorrt, repdeploy.runtime.trt, repdeploy.runtime;"
            "print('tensorrt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is present: the missing-backend path cannot be shown")
def test_cli_trt_without_tensorrt_exits_4_with_hint(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"unused: the backend check comes first")
    for args in (["bench", str(onnx_file), "--engine", "trt"], ["eval", str(tmp_path / "m.engine")],
                 ["pipeline", "--engine", "trt", "-o", str(tmp_path / "out")]):
        if args[0] == "eval":
            (tmp_path / "m.engine").write_bytes(b"x")
        r = subprocess.run([sys.executable, "-m", "repdeploy", *args], capture_output=True, text=True)
        assert r.returncode == 4, (args, r.stderr)
        assert "pip install 'repdeploy[trt]'" in r.stderr and "NVIDIA GPU" in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is present: the missing-backend path cannot be shown")
def test_export_format_trt_without_tensorrt_exits_4_not_importerror(tmp_path):
    from click.testing import CliRunner

    from repdeploy.cli import main

    zoo = str(Path(__file__).resolve().parents[1] / "repdeploy" / "assets" / "zoo" / "repvgg_mini.pth")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"unused: the backend check comes first")
    for source in (zoo, str(onnx_file)):
        for precision in ("fp32", "fp16", "best"):
            r = CliRunner().invoke(main, ["export", source, "-o", str(tmp_path / "out" / "m.engine"), "--format",
                                          "trt", "--precision", precision])
            assert r.exit_code == 4, (source, precision, r.output)
            assert "pip install 'repdeploy[trt]'" in r.output and not isinstance(r.exception, ImportError)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is present")
def test_builder_and_runner_raise_backend_missing(tmp_path):
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.runtime.trt import TrtRunner

    with pytest.raises(BackendMissingError, match=r"repdeploy\[trt\]"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
    with pytest.raises(BackendMissingError) as info:
        TrtRunner(tmp_path / "m.engine").activate()
    assert info.value.exit_code == 4 and INSTALL_HINT in str(info.value)


@pytest.mark.skipif(not tensorrt_available(), reason=NO_TRT)
def test_real_engine_matches_onnxruntime(tmp_path):
    from conftest import trained_like
    from repdeploy import export_onnx
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import fuse, open_runner

    plain = fuse(trained_like("RepVGG-mini")).plain
    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    engine = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 4, 8)).engine
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runner(onnx_path, "ort") as o, open_runner(engine, "trt") as t:
        ref, out = o.infer(x), t.infer(x)
        assert t.last_inference_time() > 0
    assert np.abs(ref - out).max() < 1e-2 * max(1.0, np.abs(ref).max())


def test_trt_engine_with_the_ort_layout_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "repdeploy", "pipeline", "--engine", "trt", "--target", "ort",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "use --target tensorrt" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not tensorrt_available(), reason=NO_TRT)
def test_real_int8_qdq_engine_agrees_with_onnxruntime(tmp_path):
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.zoo import builtin_zoo
    from repdeploy import quantize, open_runner

    zoo = next(e for e in builtin_zoo() if e.name == "repoptvgg_mini")
    result = quantize(str(zoo.file), output_dir=tmp_path, calib_data="builtin", calib_samples=64, target="tensorrt")
    engine = build_engine(result.int8_onnx, tmp_path / "int8.engine", precision="int8", batch_sizes=(1, 8, 16)).engine
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with open_runner(result.int8_onnx, "ort") as o, open_runner(engine, "trt") as t:
        ref, out = o.infer(x), t.infer(x)
    # same INT8 graph on two runtimes: rounding may differ by a step, the decision should not
    assert (ref.argmax(1) == out.argmax(1)).mean() >= 0.875
