"""The rules a QDQ graph is checked by: TensorRT's explicit-quantization rules, the integer kernels
ONNX Runtime fuses it into, and which layout a graph is (export/qdq.py writes both layouts).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "Gemm")
# Node types that prove ONNX Runtime runs integer kernels after its graph optimisation.
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QGemm", "MatMulInteger", "QLinearMatMul",
               "QLinearGlobalAveragePool", "QLinearAdd", "QLinearMul", "QLinearSigmoid")
MIN_TRT_OPSET = 13


def node_attribute(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------------- checks


def check_tensorrt_qdq(model) -> list[str]:
    """Every way `model` breaks TensorRT explicit-quantization rules (empty list: it complies).

    Rules (docs/facts.md §4): opset >= 13; every Q/DQ signed int8 with zero point 0 and a positive
    scale; every Conv/Gemm input and weight comes from a DequantizeLinear, weights per channel on
    axis 0 from int8 constants; no Q/DQ anywhere else (not on biases, not on outputs).
    """
    from onnx import numpy_helper

    graph = model.graph
    violations: list[str] = []
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_TRT_OPSET:
        violations.append(f"opset {opset} < {MIN_TRT_OPSET}")
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[tuple[object, int]]] = {}
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    for n in graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        scale = inits.get(n.input[1])
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            violations.append(f"{n.name}: no explicit zero point (defaults to uint8)")
        elif zp.dtype != np.int8 or np.any(zp != 0):
            violations.append(f"{n.name}: zero point must be int8 0, got {zp.dtype} {np.unique(zp)[:3].tolist()}")
        if scale is None or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            violations.append(f"{n.name}: scale must be a positive constant")
        if n.op_type == "QuantizeLinear":
            for c, _ in consumers.get(n.output[0], []):
                if c.op_type != "DequantizeLinear":
                    violations.append(f"{n.name}: QuantizeLinear feeds {c.op_type}, not DequantizeLinear")
        else:
            for c, i in consumers.get(n.output[0], []):
                if c.op_type not in WEIGHTED_OPS or i > 1:
                    violations.append(f"{n.name}: Q/DQ outside a conv/gemm input or weight (feeds {c.op_type} input {i})")
    for n in graph.node:
        if n.op_type not in WEIGHTED_OPS:
            continue
        x = producers.get(n.input[0])
        if x is None or x.op_type != "DequantizeLinear":
            violations.append(f"{n.name}: input is not quantized (no DequantizeLinear)")
        w = producers.get(n.input[1])
        if w is None or w.op_type != "DequantizeLinear":
            violations.append(f"{n.name}: weight is not quantized (no DequantizeLinear)")
        else:
            const = inits.get(w.input[0])
            if const is None or const.dtype != np.int8:
                violations.append(f"{n.name}: weight DequantizeLinear must read an int8 constant")
            scale = inits.get(w.input[1])
            out_channels = const.shape[0] if const is not None and const.ndim else 0
            if node_attribute(w, "axis", 1) != 0 or scale is None or scale.size != out_channels:
                violations.append(f"{n.name}: weight must be quantized per channel on axis 0")
        if len(n.input) > 2 and n.input[2] and n.input[2] in producers and producers[n.input[2]].op_type in QDQ_OPS:
            violations.append(f"{n.name}: bias must stay float (no Q/DQ on it)")
    return violations


def count_fused_nodes(onnx_path: str | Path, *, threads: int = 1) -> dict[str, int]:
    """Node types of the graph ONNX Runtime CPU actually runs, after its graph optimisation.

    Uses the extended optimisation level, whose result is still standard ONNX plus contrib ops
    and can be saved; the layout passes of the "all" level only re-pack the same kernels.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return dict(Counter(n.op_type for n in optimized.graph.node))


def integer_node_count(counts: dict[str, int]) -> int:
    """How many nodes of a `count_fused_nodes` result are integer kernels."""
    return sum(v for k, v in counts.items() if k in INTEGER_OPS)


TENSORRT_ON_ORT_WARNING = (
    "this INT8 model uses the TensorRT QDQ layout (signed int8, Q/DQ only on conv/gemm inputs), which "
    "ONNX Runtime does not fuse: it runs in float here and is slower than FP32. It is meant for TensorRT; "
    "for ONNX Runtime quantize with --target ort"
)


def qdq_layout(model) -> str:
    """Which layout an ONNX model has: "fp32", "tensorrt", "ort" (uint8 activations) or "qdq".

    Runners and `bench` use it to warn when a TensorRT-layout model is timed on ONNX Runtime.
    """
    from onnx import numpy_helper

    ops = {n.op_type for n in model.graph.node}
    if not ops & set(QDQ_OPS):
        return "fp32"
    if not check_tensorrt_qdq(model):
        return "tensorrt"
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            if numpy_helper.to_array(inits[n.input[2]]).dtype == np.uint8:
                return "ort"
    return "qdq"
