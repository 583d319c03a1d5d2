"""Reading an ONNX graph through its edges: what feeds a node, which module a node came from.

The ONNX exporter stores identical initializers once and feeds the other users through Identity
nodes (RepVGG-D2se's all-zero SE biases: `stage1.0.se.down.bias` is `Identity(stage0.se.down.bias)`),
and another exporter may wire a node straight to the first copy. So a node's weight is whatever
its input edge leads to, never an initializer looked up by the layer's name (issue 18). Used by
export/qdq.py, which rewrites the FP32 graph into QDQ graphs.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

_PASS_THROUGH = ("Identity",)


class GraphConstants:
    """The constant values tensors of a graph carry: initializers, Constant nodes, and both seen
    through Identity nodes."""

    def __init__(self, graph) -> None:
        self._init = {t.name: t for t in graph.initializer}
        self._producers = {o: n for n in graph.node for o in n.output}

    def value(self, tensor: str) -> np.ndarray | None:
        """The array `tensor` holds, or None when it is computed (not a constant)."""
        from onnx import numpy_helper

        seen = set()
        while tensor not in self._init and tensor not in seen:
            seen.add(tensor)
            producer = self._producers.get(tensor)
            if producer is None:
                return None
            if producer.op_type in _PASS_THROUGH:
                tensor = producer.input[0]
            elif producer.op_type == "Constant":
                value = next((a.t for a in producer.attribute if a.name == "value"), None)
                return numpy_helper.to_array(value) if value is not None else None
            else:
                return None
        return numpy_helper.to_array(self._init[tensor]) if tensor in self._init else None


def module_of(node, names) -> str | None:
    """Which of `names` (module paths, `stage1.0.se.up`) a node belongs to: the scope torch's
    exporter names the node by (`/stage1.0/se/up/Conv`), else the weight tensor it reads
    (`stage1.0.se.up.weight`). The scope comes first: a node wired straight to another layer's
    copy of a shared weight still names its own module."""
    scope = ".".join(node.name.strip("/").split("/")[:-1])
    if scope in names:
        return scope
    weight = node.input[1] if len(node.input) > 1 else ""
    return weight[: -len(".weight")] if weight.endswith(".weight") else None


def without_dead_ends(nodes: list, graph) -> list:
    """`nodes` less the Identity/Constant nodes that nothing reads any more (after a rewrite
    replaced what they fed)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        live = [n for n in nodes if n.op_type not in (*_PASS_THROUGH, "Constant") or any(o in used for o in n.output)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


@contextmanager
def saved_and_checked(model, path, what: str):
    """Write `model` to `path` atomically, after onnx.checker's full check of the written bytes.

    Yields the staged file so a caller can check its own rules before it appears under its name.
    """
    import onnx

    from ..errors import ExportError
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        except Exception as exc:
            raise ExportError(f"{what} fails onnx.checker: {exc}") from exc
        yield tmp
