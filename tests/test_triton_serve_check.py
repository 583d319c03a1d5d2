"""The parts of `make serve-check` (tools/triton_serve_check.py) that run without a server: the
python-backend repository it serves is a valid Triton repository made from the emitted one, and
its hand-made uint8 stand-in computes what host preprocessing plus the FP32 graph computes.
The server itself runs in `make serve-check` (its own venv: docs/triton.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from repdeploy import preprocess, preprocessing_of
from repdeploy.triton import package_models
from repdeploy.triton.check import _schema, cross_check, parse_config
from repdeploy.triton.signature import read_onnx

TOOL = Path(__file__).resolve().parents[1] / "tools" / "triton_serve_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("triton_serve_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._schema = _schema  # the plain tritonclient wheel here: the schema loaded by path
    return module


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """The zoo RepVGG-mini fused and exported as FP32 ONNX with a preprocessing record."""
    from repdeploy import load, export_onnx, fuse, Preprocessing
    from repdeploy.zoo import zoo_entry

    plain = fuse(load(zoo_entry("repvgg").file).model).plain
    record = Preprocessing(input_size=32, resize=32, mean=(0.3,) * 3, std=(0.4,) * 3)
    out = tmp_path_factory.mktemp("fp32") / "model_fp32.onnx"
    return export_onnx(plain, out, input_size=32, preprocessing=record)


def test_uint8_stand_in_matches_host_preprocessing(tool, fp32, tmp_path):
    u8 = tmp_path / "model_uint8_nhwc.onnx"
    tool.uint8_nhwc_input(fp32, u8)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    served = ort.InferenceSession(str(u8)).run(None, {"pixels": pixels})[0]
    host = ort.InferenceSession(str(fp32)).run(None, {"input": preprocess(pixels, preprocessing_of(fp32))})[0]
    assert np.abs(served - host).max() <= 1e-5 * max(1.0, np.abs(host).max())
    sig = read_onnx(u8)
    assert sig.inputs[0].triton_type == "TYPE_UINT8" and sig.inputs[0].shape == (None, 32, 32, 3)


def test_python_backend_repository_is_the_emitted_one_with_its_backend_switched(tool, fp32, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"d{i}\n" for i in range(10)))
    repo = tmp_path / "repo"
    package_models([f"mini_fp32={fp32}"], repo, labels=labels)
    configs = tool.python_backend_repository(repo, tmp_path / "served")
    served = tmp_path / "served" / "mini_fp32"
    config = parse_config(served / "config.pbtxt")
    assert (config.backend, config.platform) == ("python", "")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    emitted = configs["mini_fp32"]
    # Everything else is the emitted config: names, types, dims, batching, warm-up, labels, parameters.
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "model_warmup", "parameters"):
        assert getattr(config, field) == getattr(emitted, field), field
    assert cross_check(config, read_onnx(served / "1" / "model.onnx"), served) == [
        "backend 'python' / platform '' is not ONNX Runtime's"]
    source = (served / "1" / "model.py").read_text()
    compile(source, "model.py", "exec")
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"json", "os", "sys", "numpy", "onnxruntime", "triton_python_backend_utils"}
