"""INT8 QDQ ONNX export of a calibrated QuantPlainNet, in two layouts, with their checks.

The QDQ graph is built from the FP32 ONNX of the same PlainNet (export/onnx.py) and the
quantizers' ranges: each Conv/Gemm gets DequantizeLinear on its int8 per-channel weight and a
QuantizeLinear -> DequantizeLinear pair on its input. Building it ourselves (rather than
exporting the fake-quant module) keeps full control of the tensor types and zero points, which
decide whether a runtime really executes integer kernels:

- target "ort": uint8 activations (zero point 0 on ReLU outputs, 128 on signed tensors, which
  is the same grid as symmetric int8), int8 per-channel weights, int32 bias, and a Q/DQ on the
  last block's output, so ONNX Runtime CPU fuses every conv (with its ReLU) into QLinearConv and
  the classifier into QGemm.
- target "tensorrt": TensorRT explicit quantization: signed int8, zero point 0, scale amax/127,
  Q/DQ on every conv/gemm input and weight and nowhere else, float bias, opset >= 13. ONNX
  Runtime does not fuse this layout: it runs it in float and is slower than FP32 there.

The torch fake-quant module computes exactly what these graphs compute (same scales, same
rounded weights and bias), so `ort_parity(qnet, path, x)` measures the export, not the method.

The two layouts share their node writers here; the rules they are checked by (`check_tensorrt_qdq`,
the fused-node count, `qdq_layout`) are export/qdq_checks.py's, re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from .onnx_graph import GraphConstants, module_of, saved_and_checked, without_dead_ends
from .qdq_checks import (INTEGER_OPS, MIN_TRT_OPSET, QDQ_OPS, TENSORRT_ON_ORT_WARNING, WEIGHTED_OPS,  # noqa: F401
                         check_tensorrt_qdq, count_fused_nodes, integer_node_count, node_attribute, qdq_layout)

PADDED_STEM_CHANNELS = 4  # the ort layout feeds a 3-channel image to its first conv as 4 channels
#: ORT session config entries the ort layout is recorded with (runtime/ort.py applies them).
#: ORT's idle pool threads spin long before they sleep; with other work on the cores the spinning
#: thread takes the CPU from the one that has the work, and A0 (batch 1, 2 threads) ran 1.5-1.6x
#: slower than with spinning bounded to 100 us. The bound cost nothing on a quiet machine
#: (0.99-1.00 in four runs), where no spinning cost 12-18 % and a 20 us bound 2.5-4 % (a sleeping
#: thread is woken for each parallel section). docs/benchmarks.md, "INT8 latency against
#: onnxruntime's quantize_static", has the runs.
ORT_SESSION_CONFIG: dict[str, str] = {"session.intra_op.spin_duration_us": "100"}


def export_qdq(qnet, fp32_onnx: str | Path, path: str | Path, *, target: str | None = None) -> Path:
    """Write the INT8 QDQ ONNX of calibrated `qnet` (a QuantPlainNet), derived from `fp32_onnx`.

    `fp32_onnx` must be the FP32 export of `qnet.float_model()` (same weight names).

    >>> export_qdq(qnet, "model_fp32.onnx", "model_int8_ort.onnx")   # doctest: +SKIP
    """
    import onnx

    target = target or qnet.target
    if target != qnet.target:
        raise ExportError(f"QuantPlainNet was built for target {qnet.target!r}, not {target!r}; rebuild it")
    model = onnx.load(str(fp32_onnx))
    _QdqBuilder(model, qnet, target, Path(fp32_onnx).name).build()
    from ..metadata import stamp

    # The FP32 file's metadata (preprocessing, class names, input size) carries over; the precision
    # is this graph's own.
    stamp(model, precision=f"int8-{target}")
    if target == "ort":
        from ..runtime.ort import record_session_config

        record_session_config(model, ORT_SESSION_CONFIG)
    with saved_and_checked(model, path, f"INT8 {target} ONNX for {qnet.spec.name}") as tmp:
        if target == "tensorrt":
            violations = check_tensorrt_qdq(onnx.load(str(tmp)))
            if violations:
                raise ExportError(f"INT8 tensorrt ONNX breaks TensorRT QDQ rules: {violations[0]}")
    return Path(path)


class _QdqBuilder:
    def __init__(self, model, qnet, target: str, source: str) -> None:
        self.model = model
        self.graph = model.graph
        self.qnet = qnet
        self.target = target
        self.source = source  # the FP32 ONNX's file name, for messages (its directory may be scratch)
        self.constants = GraphConstants(self.graph)
        self.new_inits: list = []
        self.done_pairs: dict[tuple[str, str], str] = {}
        self.quantized: set[str] = set()

    # Names follow the quantizer names, so a QDQ graph reads like the calibration cache.
    def _const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def _constant(self, tensor: str, node) -> np.ndarray:
        """What `node` reads as `tensor`, followed through the graph (export/onnx_graph.py)."""
        value = self.constants.value(tensor)
        if value is None:
            raise ExportError(f"{self.source}: {node.op_type} {node.name} reads {tensor!r}, which is not a constant; "
                              f"export the FP32 ONNX of the same {self.qnet.spec.name} with `repdeploy export`")
        return value

    def _activation_qdq(self, tensor: str, quantizer, out_nodes: list, tag: str = "",
                        pad_channels: int | None = None) -> str:
        """QuantizeLinear -> DequantizeLinear on `tensor`; with `pad_channels`, a Pad between them
        adds zero-point channels up to that count (on the 1-byte tensor, the cheapest place)."""
        from onnx import helper

        key = (tensor, quantizer.name)
        if key in self.done_pairs:
            return self.done_pairs[key]
        scale = np.array(float(quantizer.scale()), dtype=np.float32)
        if quantizer.unsigned:
            zp = np.array(0, dtype=np.uint8)
        elif self.target == "ort":
            zp = np.array(128, dtype=np.uint8)  # symmetric int8 grid, shifted: ORT's fast path is u8
        else:
            zp = np.array(0, dtype=np.int8)
        q = quantizer.name + tag
        s = self._const(f"{q}.scale", scale)
        z = self._const(f"{q}.zero_point", zp)
        out_nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [f"{q}.quantized"], name=f"{q}.Q"))
        quantized = f"{q}.quantized"
        if pad_channels is not None:
            extra = pad_channels - 3
            pads = self._const(f"{q}.channel_pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], dtype=np.int64))
            out_nodes.append(helper.make_node("Pad", [quantized, pads, z], [f"{q}.padded"], name=f"{q}.Pad",
                                              mode="constant"))
            quantized = f"{q}.padded"
        out_nodes.append(helper.make_node("DequantizeLinear", [quantized, s, z], [f"{q}.dequantized"],
                                          name=f"{q}.DQ"))
        self.done_pairs[key] = f"{q}.dequantized"
        return f"{q}.dequantized"

    def build(self) -> None:
        layers = self.qnet.layers()
        nodes = []
        features = self.qnet.features_quantizer
        features_tensor, pooled_tensor = self._head_tensors()
        if not (features.enabled and features.calibrated):
            features_tensor = pooled_tensor = None
        linear = layers["linear"]
        if not (linear.input_quantizer.enabled and linear.weight_quantizer.enabled):
            pooled_tensor = None
        renamed: dict[str, str] = {}  # quantized conv outputs: consumers read the dequantized copy
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
            if features_tensor is not None and node.op_type == "GlobalAveragePool" and node.input[0] == features_tensor:
                node.input[0] = self._activation_qdq(features_tensor, features, nodes)
            if pooled_tensor is not None and node.op_type == "Flatten" and node.input[0] == pooled_tensor:
                # Quantizing the pooled features before Flatten too (same scale; Flatten is exact)
                # lets ORT run the pool as QLinearGlobalAveragePool, as its own quantizer does.
                node.input[0] = self._activation_qdq(pooled_tensor, linear.input_quantizer, nodes, tag=".pooled")
            if node.op_type in WEIGHTED_OPS:
                name = module_of(node, layers)
                layer = layers.get(name)
                if layer is not None and layer.weight_quantizer.enabled and layer.input_quantizer.enabled:
                    if node.op_type == "Gemm" and node_attribute(node, "transB", 0) != 1:
                        raise ExportError(f"Gemm {node.name} without transB=1 is not what a torch Linear exports")
                    self._quantize_layer(node, name, layer, nodes)
                    out_q = getattr(layer, "output_quantizer", None)
                    if out_q is not None and out_q.enabled and out_q.calibrated:
                        nodes.append(node)
                        renamed[node.output[0]] = self._activation_qdq(node.output[0], out_q, nodes)
                        continue
            nodes.append(node)
        wanted = {n for n, q in layers.items() if q.weight_quantizer.enabled and q.input_quantizer.enabled}
        if wanted - self.quantized:
            raise ExportError(f"the FP32 ONNX has no Conv/Gemm for {sorted(wanted - self.quantized)[:3]}; "
                              f"export it from the same {self.qnet.spec.name}")
        del self.graph.node[:]
        self.graph.node.extend(without_dead_ends(nodes, self.graph))
        used = {i for n in self.graph.node for i in n.input}
        # Drop the float weights the quantized ones replaced, wherever they were stored: an
        # initializer another layer still reads (through an Identity) stays.
        kept = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept + [t for t in self.new_inits if t.name in used])

    def _quantize_layer(self, node, name: str, layer, nodes: list) -> None:
        from onnx import helper

        xq, wq = layer.input_quantizer, layer.weight_quantizer
        weight = torch.from_numpy(self._constant(node.input[1], node).copy())
        own = (layer.conv if hasattr(layer, "conv") else layer.linear).weight.detach().to(torch.float32)
        if weight.shape != own.shape or not torch.allclose(weight, own, rtol=1e-5, atol=1e-7):
            # Scales come from the module, integers from the graph: both must be the same weights.
            raise ExportError(f"{self.source} holds other weights for {name} than the quantized model; "
                              "export the FP32 ONNX from the same PlainNet")
        self.quantized.add(name)
        w_scale = wq.scale().to(torch.float32)
        w_int = wq.integers(weight)  # the graph's weights on the module's grid
        if self._pads_input_channels(node, weight):
            # ORT's integer conv runs 3 input channels (K = 27) at a tenth of the efficiency of the
            # other layers; with a fourth channel the same conv took 140 us instead of 294 us (A0's
            # stem, batch 1, 2 threads). The quantized image is padded with its zero point, which
            # dequantizes to exactly 0 and meets an all-zero weight slice: the result is unchanged.
            node.input[0] = self._activation_qdq(node.input[0], xq, nodes, pad_channels=PADDED_STEM_CHANNELS)
            w_int = torch.nn.functional.pad(w_int, (0, 0, 0, 0, 0, PADDED_STEM_CHANNELS - weight.shape[1]))
        else:
            node.input[0] = self._activation_qdq(node.input[0], xq, nodes)
        w_name = self._const(f"{name}.weight_quantized", w_int.numpy())
        ws = self._const(f"{name}.weight_scale", w_scale.numpy().astype(np.float32))
        wz = self._const(f"{name}.weight_zero_point", np.zeros(w_scale.numel(), dtype=np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [w_name, ws, wz], [f"{name}.weight_dequantized"],
                                      name=f"{name}.weight.DQ", axis=0))
        node.input[1] = f"{name}.weight_dequantized"
        if self.target == "ort" and len(node.input) > 2 and node.input[2]:
            # int32 bias at scale s_x * s_w, computed exactly as the torch module rounds it.
            bias = torch.from_numpy(self._constant(node.input[2], node).copy())
            step = (xq.scale() * wq.scale()).to(torch.float32)
            b_int = torch.round(bias / step).to(torch.int32)
            b_name = self._const(f"{name}.bias_quantized", b_int.numpy())
            bs = self._const(f"{name}.bias_scale", step.numpy().astype(np.float32))
            bz = self._const(f"{name}.bias_zero_point", np.zeros(step.numel(), dtype=np.int32))
            nodes.append(helper.make_node("DequantizeLinear", [b_name, bs, bz], [f"{name}.bias_dequantized"],
                                          name=f"{name}.bias.DQ", axis=0))
            node.input[2] = f"{name}.bias_dequantized"

    def _pads_input_channels(self, node, weight: torch.Tensor) -> bool:
        graph_inputs = {i.name for i in self.graph.input}
        return (self.target == "ort" and node.op_type == "Conv" and node.input[0] in graph_inputs
                and weight.dim() == 4 and weight.shape[1] == 3 and node_attribute(node, "group", 1) == 1)

    def _head_tensors(self) -> tuple[str | None, str | None]:
        # The classifier path is GlobalAveragePool -> Flatten -> Gemm(linear.weight): returns the
        # pool's input (the last block's output) and its output.
        producers = {o: n for n in self.graph.node for o in n.output}
        for node in self.graph.node:
            if node.op_type == "Gemm" and node.input[1] == "linear.weight":
                flat = producers.get(node.input[0])
                pool = producers.get(flat.input[0]) if flat is not None and flat.op_type == "Flatten" else None
                if pool is not None and pool.op_type == "GlobalAveragePool":
                    return pool.input[0], pool.output[0]
        return None, None
