"""The TensorRT path (Polygraphy builder and runner, CLI, pipeline) against the tensorrt test double.

The double (tests/fake_tensorrt) checks names, argument types and the rules TensorRT enforces,
and runs engines through ONNX Runtime, so these tests check that our calls are well formed and
that the numbers make it through Polygraphy's runner unchanged. They say nothing about TensorRT's
kernels; tests/test_trt.py runs real engines where TensorRT and a GPU exist.
"""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import trained_like
from repdeploy.cli import main
from repdeploy import InputError, fuse

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "repdeploy" / "assets" / "zoo"


@pytest.fixture(scope="module")
def plain():
    return fuse(trained_like("RepVGG-mini")).plain


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)


def test_fp32_engine_builds_and_runs_like_onnxruntime(fake_tensorrt, plain, tmp_path, x):
    from repdeploy import export_onnx
    from repdeploy.export.tensorrt import build_engine
    from repdeploy import open_runner

    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    build = build_engine(onnx_path, tmp_path / "m.engine", batch_sizes=(1, 4, 8), input_size=32)
    assert build.engine.is_file() and build.strongly_typed and not build.cached
    with open_runner(onnx_path, "ort") as o, open_runner(build.engine, "trt") as t:
        ref, out = o.infer(x), t.infer(x)
        assert t.last_inference_time() > 0
        assert "execute_async_v3" in t.describe()["timing"]  # CUDA events, through the CUDA double
        assert t.get_input_metadata().image_size == 32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert fake_tensorrt.VIOLATIONS == []
    calls = [name for name, _ in fake_tensorrt.CALLS]
    # strongly typed: no precision flag, TF32 cleared, one profile with our batch range
    assert "IBuilderConfig.set_flag" not in calls and ("IBuilderConfig.clear_flag", "TF32") in fake_tensorrt.CALLS
    profile = next(d for n, d in fake_tensorrt.CALLS if n == "IOptimizationProfile.set_shape")
    assert profile == ("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    # the documented order: shapes, then addresses, then execute
    first = {n: calls.index(n) for n in ("IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
                                         "IExecutionContext.execute_async_v3")}
    assert first["IExecutionContext.set_input_shape"] < first["IExecutionContext.set_tensor_address"] \
        < first["IExecutionContext.execute_async_v3"]


def test_profiles_from_trtexec_shapes_and_the_caches(fake_tensorrt, plain, tmp_path, x):
    from repdeploy import export_onnx
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.export.trt_profiles import parse_shapes
    from repdeploy import open_runner

    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    profiles = parse_shapes(min_shapes="input:1x3x32x32", opt_shapes="input:2x3x32x32", max_shapes="input:4x3x64x64")
    cache = tmp_path / "run" / "trt_cache"
    first = build_engine(onnx_path, tmp_path / "a.engine", profiles=profiles, cache_dir=cache)
    assert not first.cached and (cache / "timing.cache").is_file()
    assert json.loads((cache / "timing.cache").read_bytes().split(b"\n", 1)[1])  # tactics were recorded
    second = build_engine(onnx_path, tmp_path / "b.engine", profiles=profiles, cache_dir=cache)
    assert second.cached and second.engine.read_bytes() == first.engine.read_bytes()
    assert len(list((cache / "engines").glob("*.engine"))) == 1

    # Every plan, built or taken from the cache, carries its stamp beside it, the one `package`
    # reads: Triton's per-GPU config needs no flags for an engine repdeploy built.
    from repdeploy.export.plan_stamp import read_stamp
    from repdeploy.triton.stamp import engine_stamp

    for build in (first, second):
        doc = read_stamp(build.engine)
        assert doc["compute_capability"] == "8.6" and doc["tensorrt_version"] == fake_tensorrt.__version__
        assert doc["onnx"] == "m.onnx" and doc["profiles"][0]["max"] == [4, 3, 64, 64]
        stamp = engine_stamp(build.engine)
        assert (stamp.sm, stamp.onnx, stamp.profiles["input"][2]) == ("sm86", onnx_path, (4, 3, 64, 64))
    with open_runner(second.engine, "trt") as t:
        t.infer(x[:2])
        t.infer(np.zeros((1, 3, 64, 48), np.float32))  # dynamic H x W inside the profile
        with pytest.raises(InputError, match="outside the engine's optimization profile"):
            t.infer(np.zeros((8, 3, 32, 32), np.float32))


def test_fp16_and_int8_engines_are_strongly_typed_from_their_onnx(fake_tensorrt, plain, tmp_path, x):
    import torch

    from repdeploy import export_onnx
    from repdeploy.export.qdq import export_qdq
    from repdeploy.export.tensorrt import build_engine
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet
    from repdeploy import open_runner

    fp32 = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    fp16 = export_onnx(plain, tmp_path / "m16.onnx", input_size=32, precision="fp16")
    flagged = build_engine(fp32, tmp_path / "flag16.engine", precision="fp16", batch_sizes=(1, 4, 8))
    assert not flagged.strongly_typed and ("IBuilderConfig.set_flag", "FP16") in fake_tensorrt.CALLS
    assert ("IBuilderConfig.set_flag", "TF32") not in fake_tensorrt.CALLS  # fp16 asked, not tf32
    with pytest.raises(InputError, match="build it with --precision fp16"):
        build_engine(fp16, tmp_path / "bad.engine", precision="fp32")
    half = build_engine(fp16, tmp_path / "m16.engine", precision="fp16", batch_sizes=(1, 4, 8), input_size=32)
    with open_runner(fp32, "ort") as o, open_runner(half.engine, "trt") as t:
        ref, out = o.infer(x), t.infer(x)
        assert t.get_input_metadata().dtype == "float16"
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()

    qnet = QuantPlainNet(plain, "tensorrt")
    qnet.set_weight_ranges()
    calibrate(qnet, [torch.from_numpy(x)], method="max")
    qdq = export_qdq(qnet, fp32, tmp_path / "int8.onnx", target="tensorrt")
    with pytest.raises(InputError, match="QDQ"):
        build_engine(qdq, tmp_path / "bad.engine", precision="fp32")
    int8 = build_engine(qdq, tmp_path / "int8.engine", precision="int8", batch_sizes=(1, 4, 8), input_size=32)
    assert int8.strongly_typed
    with open_runner(qdq, "ort") as o, open_runner(int8.engine, "trt") as t:
        np.testing.assert_allclose(t.infer(x), o.infer(x), atol=1e-5)
    assert fake_tensorrt.VIOLATIONS == []


def test_best_precision_uses_builder_flags_on_a_weakly_typed_network(fake_tensorrt, plain, tmp_path):
    from repdeploy import export_onnx
    from repdeploy.export.tensorrt import build_engine

    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    build = build_engine(onnx_path, tmp_path / "m.engine", precision="best", batch_sizes=(1, 1, 2))
    assert not build.strongly_typed
    assert ("IBuilderConfig.set_flag", "FP16") in fake_tensorrt.CALLS
    assert ("IBuilderConfig.set_flag", "TF32") in fake_tensorrt.CALLS


def test_the_double_enforces_what_tensorrt_enforces(fake_tensorrt, plain, tmp_path):
    """The double would catch the mistakes it exists to catch (else the tests above prove little)."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    from repdeploy import export_onnx

    trt = fake_tensorrt
    onnx_path = str(export_onnx(plain, tmp_path / "m.onnx", input_size=32))
    # a precision flag on a strongly typed network
    with pytest.raises(PolygraphyException):
        EngineBytesFromNetwork(NetworkFromOnnxPath(onnx_path, strongly_typed=True), config=CreateConfig(fp16=True))()
    assert any("strongly typed" in v for v in trt.VIOLATIONS)
    # a dynamic input with no profile for it (Polygraphy's default profile fixes it, so go direct)
    trt.reset()
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(onnx_path)
    config = builder.create_builder_config()
    assert builder.build_serialized_network(network, config) is None
    assert "no optimization profile" in trt.VIOLATIONS[-1]
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    # execute before addresses are set, a shape outside the profile, wrong argument types
    assert context.set_input_shape("input", (2, 3, 32, 32))
    assert context.execute_async_v3(0) is False and "set_tensor_address first" in trt.VIOLATIONS[-1]
    assert context.set_input_shape("input", (3, 3, 32, 32)) is False
    with pytest.raises(TypeError, match="incompatible function arguments"):
        context.set_tensor_address("input", "0x10")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit("WORKSPACE", 1 << 20)
    with pytest.raises(TypeError):
        trt.Builder(object())
    assert trt.Runtime(logger).deserialize_cuda_engine(b"not an engine") is None


def _attribute_chains(tree: ast.AST, root: str) -> set[tuple[str, ...]]:
    chains = set()
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == root and parts:
            chains.add(tuple(reversed(parts)))
    return chains


def test_every_tensorrt_and_polygraphy_name_we_use_is_known_to_the_double(fake_tensorrt):
    import importlib

    trt = fake_tensorrt
    sources = [ROOT / "repdeploy" / "export" / "tensorrt.py", ROOT / "repdeploy" / "runtime" / "trt.py"]
    used_trt, used_poly, engine_methods = set(), set(), set()
    for path in sources:
        tree = ast.parse(path.read_text())
        used_trt |= _attribute_chains(tree, "trt")
        used_trt |= {tuple(c[1:]) for c in _attribute_chains(tree, "tensorrt") if len(c) > 1}
        engine_methods |= {c[0] for c in _attribute_chains(tree, "engine")}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polygraphy"):
                used_poly |= {(node.module, a.name) for a in node.names}
    assert used_trt and used_poly and engine_methods  # the scan found our uses
    for chain in used_trt:
        obj = trt
        for part in chain:
            if part == "__version__" and obj is trt:
                break
            assert hasattr(obj, part), f"trt.{'.'.join(chain)} is unknown to the tensorrt double"
            obj = getattr(obj, part)
    for module, name in used_poly:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} is not in Polygraphy"
    for method in engine_methods:
        assert hasattr(trt.ICudaEngine, method), f"ICudaEngine.{method} is unknown to the tensorrt double"


def test_cli_export_bench_and_eval_through_the_double(fake_tensorrt, tmp_path):
    runner = CliRunner()
    engine = tmp_path / "m.engine"
    r = runner.invoke(main, ["export", str(ZOO / "repvgg_mini.pth"), "-o", str(engine), "--format", "trt",
                             "--min-shapes", "1x3x32x32", "--opt-shapes", "8x3x32x32", "--max-shapes",
                             "64x3x32x32", "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.output)
    assert record["precision"] == "fp32" and Path(record["engine"]).is_file()
    assert (tmp_path / "trt_cache" / "timing.cache").is_file() and (tmp_path / "m.onnx").is_file()
    r = runner.invoke(main, ["bench", str(engine), "--engine", "trt", "--batch", "1,8", "--duration", "0.05",
                             "--iterations", "3", "--warmup", "0"])
    assert r.exit_code == 0 and "&&&& PASSED" in r.output, r.output
    r = runner.invoke(main, ["eval", str(engine), "--json", "--eval-limit", "64"])
    assert r.exit_code == 0, r.output
    onnx_acc = runner.invoke(main, ["eval", str(tmp_path / "m.onnx"), "--json", "--eval-limit", "64"])
    assert json.loads(r.output)["top1"] == json.loads(onnx_acc.output)["top1"]
    half = runner.invoke(main, ["export", str(ZOO / "repvgg_mini.pth"), "-o", str(tmp_path / "h.engine"),
                                "--format", "trt", "--precision", "fp16", "--json"])
    assert half.exit_code == 0, half.output
    assert json.loads(half.output)["precision"] == "fp16" and json.loads(half.output)["strongly_typed"]
    int8 = runner.invoke(main, ["export", str(ZOO / "repvgg_mini.pth"), "-o", str(tmp_path / "i.engine"),
                                "--format", "trt", "--precision", "int8"])
    assert int8.exit_code == 2 and "quantize --int8" in int8.output
    bad = runner.invoke(main, ["export", str(ZOO / "repvgg_mini.pth"), "-o", str(tmp_path / "x.engine"),
                               "--format", "trt", "--min-shapes", "1x3x32x32"])
    assert bad.exit_code == 2 and "go together" in bad.output
    assert fake_tensorrt.VIOLATIONS == []


def test_pipeline_engine_trt_builds_engines_in_the_run_directory(fake_tensorrt, tmp_path):
    from repdeploy import run_pipeline

    result = run_pipeline([str(ZOO / "repoptvgg_mini.pth")], output_dir=tmp_path / "out", engine="trt",
                          calib_samples=32, eval_limit=64, warmup=0.0, duration=0.05, iterations=3)
    row = result.rows[0]
    assert row.status == "PASSED", row.error
    run_dir = Path(row.run_dir)
    assert (run_dir / "model_fp32.engine").is_file() and (run_dir / "model_int8_tensorrt.engine").is_file()
    assert (run_dir / "trt_cache" / "timing.cache").is_file()
    assert row.fp32_ms > 0 and row.int8_ms > 0 and row.int8_top1 is not None
    assert fake_tensorrt.VIOLATIONS == []


TRT11_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt
assert tensorrt.IS_FAKE and tensorrt.__version__.startswith("11.")
import cuda_runtime, polygraphy.cuda.cuda as poly_cuda
poly_cuda.G_CUDA = cuda_runtime.FakeCudaRuntime()
import repdeploy.export.tensorrt as t
from repdeploy.errors import InputError
from repdeploy.models import build, get_spec
from repdeploy.fuse import fuse
from repdeploy.export.onnx import export_onnx
from repdeploy.runtime import open_runner
import numpy as np
plain = fuse(build(get_spec("RepVGG-mini"), "train").eval()).plain
onnx_path = export_onnx(plain, sys.argv[2] + "/m.onnx", input_size=32)
b = t.build_engine(onnx_path, sys.argv[2] + "/m.engine", batch_sizes=(1, 2, 4))
x = np.ones((2, 3, 32, 32), np.float32)
with open_runner(onnx_path, "ort") as o, open_runner(b.engine, "trt") as r:
    diff = float(np.abs(o.infer(x) - r.infer(x)).max())
try:
    t.build_engine(onnx_path, sys.argv[2] + "/best.engine", precision="best")
    best = "built"
except InputError as exc:
    best = str(exc)
try:
    t.build_engine(onnx_path, sys.argv[2] + "/f16.engine", precision="fp16")
    fp16 = "built"
except InputError as exc:
    fp16 = str(exc)
print(json.dumps({"fp16": fp16, "strongly_typed_flag": b.strongly_typed and "STRONGLY_TYPED" not in dir(tensorrt.NetworkDefinitionCreationFlag), "diff": diff, "best": best,
                  "violations": tensorrt.VIOLATIONS}))
"""


def test_tensorrt_11_surface_builds_without_the_removed_flags(tmp_path):
    """11.x removed the precision builder flags and the STRONGLY_TYPED flag (always strongly typed)."""
    import os
    import subprocess
    import sys

    from conftest import FAKE_TENSORRT_DIR

    env = {**os.environ, "FAKE_TENSORRT_VERSION": "11.0.0"}
    r = subprocess.run([sys.executable, "-c", TRT11_SCRIPT, str(FAKE_TENSORRT_DIR), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["strongly_typed_flag"] is True and out["diff"] < 1e-5 and out["violations"] == []
    assert "TensorRT 11.0.0 removed" in out["best"]
    assert "TensorRT 11.0.0 removed" in out["fp16"] and "export --precision fp16" in out["fp16"]
