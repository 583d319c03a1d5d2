"""Checkpoints whose tensors are identical quantize: QDQ export resolves weights through the graph.

The ONNX exporter stores identical initializers once and feeds the other users through Identity
nodes (RepVGG-D2se's all-zero SE biases: `stage1.0.se.down.bias` becomes `Identity(stage0.se.down.bias)`).
Looking a layer's weight or bias up by its initializer name then fails; issue 18 hit it on D2se.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from conftest import trained_like
from repdeploy import export_onnx, fuse, quantize


def _d2se_like_with_identical_tensors():
    """RepVGG-mini-se (D2se's block: conv -> SE -> ReLU) with every SE bias zero, as in the D2se
    checkpoint, and one SE weight equal to another's, so weights are shared too."""
    model = trained_like("RepVGG-mini-se")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if ".se." in name and name.endswith(".bias"):
                p.zero_()
        params["stage1.0.se.up.weight"].copy_(params["stage0.se.up.weight"])
    return fuse(model).plain


@pytest.fixture(scope="module")
def plain():
    return _d2se_like_with_identical_tensors()


def test_the_exporter_does_share_identical_tensors(plain, tmp_path):
    """The precondition of the test below: without it, the quantize test would prove nothing."""
    graph = onnx.load(str(export_onnx(plain, tmp_path / "m.onnx", input_size=32))).graph
    initializers = {t.name for t in graph.initializer}
    shared = {o: n.input[0] for n in graph.node if n.op_type == "Identity" for o in n.output}
    assert "stage1.0.se.down.bias" not in initializers and shared["stage1.0.se.down.bias"] == "stage0.se.down.bias"
    assert shared["stage1.0.se.up.weight"] == "stage0.se.up.weight"


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_a_d2se_like_model_with_zero_se_biases_quantizes_and_verifies(plain, tmp_path, target):
    result = quantize(plain, output_dir=tmp_path / target, calib_data="builtin", calib_samples=32, target=target)
    assert result.report["status"] == "PASSED", result.report.get("verdicts")
    assert result.ort_parity_passed
    graph = onnx.load(str(result.int8_onnx)).graph
    produced = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    consumed = {i for n in graph.node for i in n.input if i}
    # every input is defined, and nothing the quantized graph replaced is left behind unused
    assert consumed <= produced | {i.name for i in graph.input}
    assert {t.name for t in graph.initializer} <= consumed
    quantized_se = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.name == "stage1.0.se.up.weight.DQ"]
    assert len(quantized_se) == 1


def test_a_node_fed_another_layers_weight_name_is_still_its_own_layer(plain, tmp_path):
    """An exporter may also rewire a node straight to the first copy of a shared weight; the node's
    module scope still says which layer (and which activation scale) it is."""
    from helpers_quant import calibrated
    from repdeploy.export.qdq import export_qdq

    fp32 = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    model = onnx.load(str(fp32))
    node = next(n for n in model.graph.node if n.name == "/stage1.0/se/up/Conv")
    node.input[1] = "stage0.se.up.weight"  # no Identity: the other layer's initializer itself
    rewired = tmp_path / "rewired.onnx"
    onnx.save(model, str(rewired))
    qnet, _ = calibrated(plain, target="tensorrt", method="max", n=32)
    graph = onnx.load(str(export_qdq(qnet, rewired, tmp_path / "int8.onnx"))).graph
    q = next(n for n in graph.node if n.op_type == "Conv" and n.name == "/stage1.0/se/up/Conv")
    assert q.input[1] == "stage1.0.se.up.weight_dequantized"
    assert q.input[0] == qnet.layers()["stage1.0.se.up"].input_quantizer.name + ".dequantized"


def test_a_weight_that_is_not_a_constant_is_named_by_file_not_by_scratch_path(plain, tmp_path):
    """The FP32 ONNX quantize hands to the QDQ export lives in a staging directory that is gone
    when the error is read: the message names the file, the node and the tensor."""
    from helpers_quant import calibrated
    from repdeploy import ExportError
    from repdeploy.export.qdq import export_qdq

    model = onnx.load(str(export_onnx(plain, tmp_path / "m.onnx", input_size=32)))
    node = next(n for n in model.graph.node if n.name == "/stage1.0/conv/Conv")
    node.input[1] = "/stage0/Relu_output_0"  # an activation where the weight should be
    staged = tmp_path / ".set.quantize-scratch" / "model_fp32.onnx"
    staged.parent.mkdir()
    onnx.save(model, str(staged))
    qnet, _ = calibrated(plain, target="ort", method="max", n=32)
    with pytest.raises(ExportError) as info:
        export_qdq(qnet, staged, tmp_path / "int8.onnx")
    message = str(info.value)
    assert message.startswith("model_fp32.onnx: Conv /stage1.0/conv/Conv reads '/stage0/Relu_output_0'")
    assert ".set.quantize" not in message and not (tmp_path / "int8.onnx").exists()
