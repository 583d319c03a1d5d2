"""Faults planted in a correct INT8 deployment, each the way an exporter bug would write it.

Every fault edits a copy of a correct INT8 ONNX (its graph, initializers or metadata) and writes
it next to the original; the verdicts must then fail it. Used by tests/test_realsize_verdicts.py
and benchmarks/verdict_confusion.py, which also sweep the layer a fault is planted in.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def _initializer(graph, name: str):
    found = [t for t in graph.initializer if t.name == name]
    if not found:
        raise KeyError(f"no initializer {name!r}; the layout changed?")
    return found[0]


def _set(graph, name: str, array: np.ndarray) -> None:
    _initializer(graph, name).CopyFrom(numpy_helper.from_array(array, name))


def _get(graph, name: str) -> np.ndarray:
    return numpy_helper.to_array(_initializer(graph, name))


def _weight_inputs(graph, layer: str) -> tuple[str, str]:
    """(int8 weight, weight scale) initializers of `layer`'s weight DequantizeLinear, found through the graph."""
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            dq = next((n for n in graph.node if node.input[1] in n.output and n.op_type == "DequantizeLinear"), None)
            if dq is not None and dq.input[0].startswith(layer + "."):
                return dq.input[0], dq.input[1]
    raise KeyError(f"no quantized weight for {layer!r}")


def scale_off(model, quantizer: str, factor: float):
    """One activation quantizer's scale (shared by its Q and DQ) multiplied by `factor`."""
    name = f"{quantizer}.scale"
    _set(model.graph, name, (_get(model.graph, name) * np.float32(factor)).astype(np.float32))
    return model


def drop_qdq(model, quantizer: str):
    """One activation's QuantizeLinear -> DequantizeLinear pair removed: that layer reads float."""
    graph = model.graph
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.name == f"{quantizer}.Q")
    chain = [q]
    while True:  # Q -> [Pad] -> DQ
        nxt = [n for n in graph.node if chain[-1].output[0] in n.input]
        chain.append(nxt[0])
        if nxt[0].op_type == "DequantizeLinear":
            break
    source, out = q.input[0], chain[-1].output[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == out:
                node.input[i] = source
    for node in chain:
        graph.node.remove(node)
    return model


def transpose_weights(model, layer: str):
    """One conv's int8 kernels transposed in their two spatial axes (k[..., i, j] -> k[..., j, i])."""
    w_name, _ = _weight_inputs(model.graph, layer)
    w = _get(model.graph, w_name)
    _set(model.graph, w_name, np.ascontiguousarray(w.transpose(0, 1, 3, 2)))
    return model


def per_tensor_weights(model, layer: str):
    """One layer's weights on one scale (the largest channel's) where per-channel scales were measured;
    its int32 bias (ort layout) requantized to match, as an exporter that lost the axis would write."""
    graph = model.graph
    w_name, s_name = _weight_inputs(graph, layer)
    w, s = _get(graph, w_name).astype(np.float64), _get(graph, s_name).astype(np.float64)
    shape = (-1,) + (1,) * (w.ndim - 1)
    top = s.max()
    _set(graph, w_name, np.clip(np.round(w * s.reshape(shape) / top), -128, 127).astype(np.int8))
    _set(graph, s_name, np.full(s.shape, top, np.float32))
    bias = f"{layer}.bias_quantized"
    if any(t.name == bias for t in graph.initializer):
        b, bs = _get(graph, bias).astype(np.float64), _get(graph, f"{layer}.bias_scale").astype(np.float64)
        new_bs = bs / s * top
        _set(graph, bias, np.round(b * bs / new_bs).astype(np.int32))
        _set(graph, f"{layer}.bias_scale", new_bs.astype(np.float32))
    return model


def wrong_mean_std(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """The preprocessing record in the metadata says another mean/std than calibration used."""
    for prop in model.metadata_props:
        if prop.key == "repdeploy.preprocessing":
            record = json.loads(prop.value)
            record.update(mean=list(mean), std=list(std))
            prop.value = json.dumps(record)
            return model
    raise KeyError("the INT8 ONNX carries no preprocessing record")


FAULTS = {
    "activation scale halved": lambda m, layer: scale_off(m, f"{layer}.input", 0.5),
    "activation scale doubled": lambda m, layer: scale_off(m, f"{layer}.input", 2.0),
    "Q/DQ pair missing": lambda m, layer: drop_qdq(m, f"{layer}.input"),
    "weights transposed": lambda m, layer: transpose_weights(m, layer),
    "per-tensor weight scale": lambda m, layer: per_tensor_weights(m, layer),
    "wrong mean/std": lambda m, layer: wrong_mean_std(m),
}


def plant(int8_onnx: Path, fault: str, layer: str, directory: Path) -> Path:
    """A copy of `int8_onnx` with `fault` planted in `layer`, written into `directory`."""
    model = FAULTS[fault](copy.deepcopy(onnx.load(str(int8_onnx))), layer)
    path = directory / f"{int8_onnx.stem}-{fault.replace(' ', '_').replace('/', '_')}-{layer}.onnx"
    onnx.save(model, str(path))
    return path
