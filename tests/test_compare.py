"""compare: two runners on the same inputs, tolerances with an exit code; plus FP16 and dynamic-size ONNX."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import trained_like
from repdeploy.cli import main
from repdeploy import compare, DataError, ToleranceError, export_onnx, fuse
from repdeploy.compare import compare_logits


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from repdeploy import save_fused
    from repdeploy.export.qdq import export_qdq
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet

    d = tmp_path_factory.mktemp("compare")
    plain = fuse(trained_like("RepVGG-mini")).plain
    fused = save_fused(plain, d / "fused.pt")
    fp32 = export_onnx(plain, d / "fp32.onnx", input_size=32)
    fp16 = export_onnx(plain, d / "fp16.onnx", input_size=32, precision="fp16")
    qnet = QuantPlainNet(plain, "ort")
    qnet.set_weight_ranges()
    calibrate(qnet, [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))], method="max")
    int8 = export_qdq(qnet, fp32, d / "int8.onnx", target="ort")
    return {"plain": plain, "fused": fused, "fp32": fp32, "fp16": fp16, "int8": int8}


def test_compare_logits_figures():
    a = np.array([[1.0, 2.0, -4.0], [0.5, 0.0, 0.25]])
    b = a + np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 0.5]])
    r = compare_logits(a, b, atol=0.05, rtol=0.0)
    assert r["max_abs_diff"] == pytest.approx(0.5) and r["mismatched"] == 2 and not r["passed"]
    assert r["max_rel_diff"] == pytest.approx(0.5 / np.abs(a).max())  # over the logit scale (tolerance.figures)
    assert r["top1_agreement"] == 0.5  # the second row's argmax moves from 0 to 2
    assert r["sqnr_db"] == pytest.approx(10 * np.log10((a**2).sum() / (0.1**2 + 0.5**2)))
    assert compare_logits(a, b, atol=0.0, rtol=2.0)["passed"]
    assert compare_logits(a, a)["sqnr_db"] is None  # identical: infinite SQNR
    with pytest.raises(DataError, match="shapes"):
        compare_logits(a, a[:, :2])


def test_torch_checkpoint_and_its_onnx_agree(models):
    r = compare(models["fused"], models["fp32"], atol=1e-4, rtol=1e-4, device="cpu")
    assert (r.engine_a, r.engine_b) == ("torch", "ort")
    assert r.passed and r.top1_agreement == 1.0 and r.images == 16 and r.max_abs_diff < 1e-4


def test_int8_against_fp32_fails_tight_tolerances_and_reports_real_figures(models):
    from repdeploy.evaluate import sqnr_db
    from repdeploy import open_runner

    from repdeploy.errors import AccuracyGateError, VerificationError

    # The library returns the verdict; the command line exits 1 on it (test_cli_compare_exit_codes_and_json).
    r = compare(models["fp32"], models["int8"], data="builtin", samples=32)
    assert not r.passed and r.mismatched > 0 and r.top1_a is not None
    # a failed comparison is a failed verification (issue 22), never an accuracy gate
    assert ToleranceError.exit_code == 1 and issubclass(ToleranceError, VerificationError)
    assert not issubclass(ToleranceError, AccuracyGateError)
    from repdeploy.data import open_dataset

    x = torch.cat([b for b, _ in open_dataset("builtin", split="val", image_size=32).batches(32, limit=32)]).numpy()
    with open_runner(models["fp32"], "ort") as a, open_runner(models["int8"], "ort") as b:
        assert r.sqnr_db == pytest.approx(sqnr_db(a.infer(x), b.infer(x)), rel=1e-6)


def test_cli_compare_exit_codes_and_json(models):
    runner = CliRunner()
    ok = runner.invoke(main, ["compare", str(models["fp32"]), str(models["fp16"]), "--atol", "1e-2", "--rtol", "1e-2",
                              "--json"])
    assert ok.exit_code == 0, ok.output
    record = json.loads(ok.output[: ok.output.rindex("}") + 1])
    assert record["passed"] and record["engine_b"] == "ort" and 0 < record["max_abs_diff"] < 1e-2
    bad = runner.invoke(main, ["compare", str(models["fp32"]), str(models["int8"])])
    assert bad.exit_code == 1 and "&&&& FAILED" in bad.output
    same = runner.invoke(main, ["compare", str(models["fused"]), str(models["fused"]), "--engine", "torch",
                                "--engine", "ort", "--atol", "1e-4", "--rtol", "1e-4", "--device", "cpu"])
    assert same.exit_code == 0 and "A: fused.pt (torch)" in same.output and "B: fused.pt (ort)" in same.output
    usage = runner.invoke(main, ["compare", str(models["fp32"]), str(models["fp16"]), "--engine", "ort",
                                 "--engine", "ort", "--engine", "ort"])
    assert usage.exit_code == 2


def test_compare_onnx_with_its_engine_through_the_double(fake_tensorrt, models, tmp_path):
    # two batches: this also catches returning a view of the buffer Polygraphy reuses per inference
    from repdeploy.export.tensorrt import build_engine

    engine = build_engine(models["fp32"], tmp_path / "m.engine", batch_sizes=(1, 8, 8)).engine
    r = compare(models["fp32"], engine)
    assert r.engine_b == "trt" and r.passed and r.max_abs_diff < 1e-5


def test_fp16_onnx_is_fp16_throughout_and_close_in_onnxruntime(models):
    graph = onnx.load(str(models["fp16"]))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    r = compare(models["fp32"], models["fp16"], data="builtin", samples=64, atol=1e-2, rtol=1e-2)
    assert r.top1_agreement == 1.0 and r.sqnr_db > 40  # 11-bit mantissa: about 60 dB on these logits


def test_one_onnx_file_runs_224_and_256(models):
    import onnxruntime as ort

    from repdeploy.export.onnx import META_INPUT_SIZE
    from repdeploy import open_runner

    meta = {p.key: p.value for p in onnx.load(str(models["fp32"])).metadata_props}
    assert meta[META_INPUT_SIZE] == "32"
    session = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for size in (224, 256):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            ref = models["plain"](x).numpy()
        out = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), size
    with open_runner(models["int8"], "ort") as r:  # the QDQ graph inherits the dynamic axes
        assert r.infer(np.zeros((1, 3, 256, 256), np.float32)).shape == (1, 10)
        assert r.get_input_metadata().image_size == 32  # the nominal size, for data and benchmarks
