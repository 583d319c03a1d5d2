"""QDQ ONNX export: ORT really runs integer kernels, TensorRT rules hold, torch and ORT agree."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from helpers_quant import batches, calibrated, fused
from repdeploy import export_onnx
from repdeploy.export.onnx import ort_parity
from repdeploy.export.qdq import check_tensorrt_qdq, count_fused_nodes, export_qdq, qdq_layout
from repdeploy.quant.calib_cache import CalibrationCache
from repdeploy.quant.quantizer import QuantPlainNet

CONVS_MINI = 7  # RepVGG-mini: stage0 + depths 1,2,2,1


@pytest.fixture(scope="module")
def plain():
    return fused("RepVGG-mini")


@pytest.fixture(scope="module")
def fp32(plain, tmp_path_factory):
    return export_onnx(plain, tmp_path_factory.mktemp("fp32") / "fp32.onnx", input_size=32)


@pytest.fixture(scope="module")
def x_val():
    return batches(200, split="val", batch=200)[0]


@pytest.fixture(scope="module", params=["ort", "tensorrt"])
def exported(request, plain, fp32, tmp_path_factory):
    qnet, cache = calibrated(plain, target=request.param, method="percentile", n=128)
    path = export_qdq(qnet, fp32, tmp_path_factory.mktemp(request.param) / "int8.onnx")
    return request.param, qnet, cache, path


def test_ort_and_torch_fake_quant_agree(exported, x_val):
    target, qnet, _, path = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    parity = ort_parity(qnet, path, x_val)
    assert parity.top1_agreement >= 0.99
    # Same grids and rounded weights/bias: differences come only from where float rounding
    # (ORT's requantization multiplier, its float conv kernels for the tensorrt layout) flips an
    # activation by one step somewhere.
    assert parity.max_rel_diff < (0.01 if target == "ort" else 0.05), parity


def test_ort_layout_runs_as_integer_convs(exported):
    target, _, _, path = exported
    counts = count_fused_nodes(path)
    if target == "ort":
        assert counts.get("QLinearConv") == CONVS_MINI, counts
        assert counts.get("QGemm") == 1, counts
        assert not {"Conv", "FusedConv", "Gemm"} & set(counts), counts  # nothing left in float
        assert counts.get("DequantizeLinear", 0) <= 1  # only the logits leave the integer domain
    else:
        # The TensorRT layout is not fused by ORT: it runs float convs on dequantized tensors.
        assert "QLinearConv" not in counts and counts.get("FusedConv", 0) + counts.get("Conv", 0) == CONVS_MINI


def test_ort_layout_feeds_the_stem_four_channels_exactly(exported, plain, fp32, x_val, tmp_path):
    import numpy as np
    from onnx import numpy_helper

    from repdeploy.export.onnx import ort_session

    target, qnet, _, path = exported
    model = onnx.load(str(path))
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if target == "tensorrt":
        assert not pads  # the TensorRT layout keeps its 3-channel stem
        assert weights["stage0.conv.weight_quantized"].shape[1] == 3
        return
    # Q -> Pad (with the zero point) -> DQ on the image; the stem's int8 weight gets a zero slice.
    (pad,) = pads
    assert pad.input[0] == "stage0.conv.input.quantized" and pad.input[2] == "stage0.conv.input.zero_point"
    w = weights["stage0.conv.weight_quantized"]
    assert w.shape[1] == 4 and not w[:, 3].any()
    # Padding changes nothing: the same graph without the pad gives bit-identical logits.
    unpadded = onnx.load(str(path))
    for n in unpadded.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] == pad.output[0]:
            n.input[0] = pad.input[0]
    keep = [n for n in unpadded.graph.node if n.op_type != "Pad"]
    del unpadded.graph.node[:]
    unpadded.graph.node.extend(keep)
    for t in unpadded.graph.initializer:
        if t.name == "stage0.conv.weight_quantized":
            t.CopyFrom(numpy_helper.from_array(w[:, :3].copy(), t.name))
    other = tmp_path / "unpadded.onnx"
    onnx.save(unpadded, str(other))
    x = x_val[:16].numpy()
    a = ort_session(path).run(None, {"input": x})[0]
    b = ort_session(other).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    assert count_fused_nodes(path).get("QLinearConv") == CONVS_MINI


def test_tensorrt_rules(exported):
    target, _, _, path = exported
    model = onnx.load(str(path))
    violations = check_tensorrt_qdq(model)
    if target == "tensorrt":
        assert violations == []
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        # One Q/DQ pair per conv/gemm input and one DQ per weight: 3 nodes per layer, no more.
        assert len(qdq) == 3 * (CONVS_MINI + 1)
    else:
        assert any("zero point must be int8 0" in v for v in violations)  # uint8 activations
        assert any("bias" in v for v in violations)


def test_layout_is_recognised(exported, fp32):
    target, _, _, path = exported
    assert qdq_layout(onnx.load(str(path))) == target
    assert qdq_layout(onnx.load(str(fp32))) == "fp32"


def test_checker_finds_each_broken_rule(plain, fp32, tmp_path):
    qnet, _ = calibrated(plain, target="tensorrt", method="max", n=32)
    path = export_qdq(qnet, fp32, tmp_path / "trt.onnx")  # compliant: the mutations below break it
    assert any("input is not quantized" in v for v in check_tensorrt_qdq(onnx.load(str(fp32))))

    model = onnx.load(str(path))
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("weight.DQ"))
    dq.attribute[0].i = 1  # per-channel axis no longer 0
    assert any("axis 0" in v for v in check_tensorrt_qdq(model))

    model = onnx.load(str(path))
    model.opset_import[0].version = 12
    assert any("opset 12" in v for v in check_tensorrt_qdq(model))

    # A Q/DQ on the output of a Relu that feeds a pool (not a conv/gemm input) is forbidden.
    model = onnx.load(str(path))
    g = model.graph
    pool = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    s, z = "stage0.conv.input.scale", "stage0.conv.input.zero_point"
    g.node.append(helper.make_node("QuantizeLinear", [pool.input[0], s, z], ["extra_q"], name="extra.Q"))
    g.node.append(helper.make_node("DequantizeLinear", ["extra_q", s, z], ["extra_dq"], name="extra.DQ"))
    g.node.append(helper.make_node("Relu", ["extra_dq"], ["extra_out"], name="extra.Relu"))
    assert any("outside a conv/gemm" in v for v in check_tensorrt_qdq(model))


def test_cache_round_trip_gives_identical_onnx(exported, plain, fp32, tmp_path):
    target, _, cache, path = exported
    saved = cache.save(tmp_path / "calib.json")
    reloaded = CalibrationCache.load(saved)
    reloaded.check_model(plain)
    qnet = QuantPlainNet(plain, target)
    qnet.set_weight_ranges()
    qnet.load_ranges(reloaded.amax)
    again = export_qdq(qnet, fp32, tmp_path / "again.onnx")
    assert again.read_bytes() == path.read_bytes()


def test_float_layers_stay_float_in_onnx(plain, fp32, tmp_path, x_val):
    qnet, _ = calibrated(plain, target="ort", method="max", n=64)
    qnet.disable("stage0.conv")
    path = export_qdq(qnet, fp32, tmp_path / "mixed.onnx")
    counts = count_fused_nodes(path)
    assert counts.get("QLinearConv") == CONVS_MINI - 1
    assert ort_parity(qnet, path, x_val).top1_agreement >= 0.99


@pytest.mark.parametrize("variant", ["RepVGG-mini-se", "RepVGG-mini-g2"])
def test_se_and_grouped_variants_export(variant, tmp_path, x_val):
    plain = fused(variant)
    fp32 = export_onnx(plain, tmp_path / "v.onnx", input_size=32)
    for target in ("ort", "tensorrt"):
        qnet, _ = calibrated(plain, target=target, method="max", n=64)
        path = export_qdq(qnet, fp32, tmp_path / f"v_{target}.onnx")
        parity = ort_parity(qnet, path, x_val)
        assert parity.top1_agreement >= 0.99 and parity.max_rel_diff < 0.05
        if target == "tensorrt":
            assert check_tensorrt_qdq(onnx.load(str(path))) == []
        else:
            counts = count_fused_nodes(path)
            if variant.endswith("g2"):  # grouped convs fuse like dense ones
                assert counts.get("QLinearConv") == CONVS_MINI and "Conv" not in counts, counts
            else:
                # The main conv (quantized output before the SE multiply) and the SE `down` conv
                # fuse; the SE `up` conv feeds a Sigmoid and stays float (a 1x1 on one pixel).
                assert counts.get("QLinearConv") == 2 * CONVS_MINI and "Conv" not in counts, counts


def test_mismatched_fp32_graph_is_an_export_error(tmp_path):
    from repdeploy import ExportError

    other = export_onnx(fused("RepOpt-VGG-mini"), tmp_path / "other.onnx", input_size=32)
    qnet, _ = calibrated(fused("RepVGG-mini-g2"), method="max", n=32)
    with pytest.raises(ExportError):
        export_qdq(qnet, other, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_ort_layout_records_its_session_config_and_runs_it_bit_identically(exported, x_val):
    # The scheduling settings the ort layout was measured with go into the file, so bench, eval
    # and API users get them; they must change no logit (verification runs with them too).
    import numpy as np

    from repdeploy.export.qdq import ORT_SESSION_CONFIG
    from repdeploy import open_runner
    from repdeploy.runtime.ort import OrtRunner, recorded_session_config

    target, _, _, path = exported
    recorded = recorded_session_config(path)
    if target == "tensorrt":
        assert recorded == {}  # for TensorRT; ORT settings would be noise in its file
        return
    assert recorded == ORT_SESSION_CONFIG and recorded
    x = x_val[:8].numpy()
    with open_runner(path, "ort", threads=2) as tuned:
        options = tuned._session.get_session_options()
        assert {k: options.get_session_config_entry(k) for k in recorded} == recorded
        a = tuned.infer(x)
    with OrtRunner(path, intra_op_threads=2, session_config={}) as plain_defaults:
        b = plain_defaults.infer(x)
    np.testing.assert_array_equal(a, b)
