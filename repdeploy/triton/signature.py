"""What a Triton config must say about a model, read from the model itself.

`read_onnx` opens an ONNX file's graph (not its weights' values) and returns its `Signature`:
input and output names, element types, shapes with the batch axis marked, the precision the
graph computes in (from its nodes, not a label), the nominal input size, the preprocessing
record and the class names from its metadata. A TensorRT plan has the signature of the ONNX it
was built from (see stamp.py); no field is ever typed in by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..metadata import META_INPUT_SIZE, META_PREPROCESSING
from ..preprocess import Preprocessing

#: ONNX metadata key for the class names (a JSON list of strings), agreed with the exporters.
META_CLASS_NAMES = "repdeploy.class_names"

#: ONNX TensorProto element types -> Triton's DataType names (model_config.proto).
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: `shape` is the full shape, None where the axis is dynamic."""

    name: str
    triton_type: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    """A model's interface and records, as the graph and its metadata state them."""

    path: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    dynamic_batch: bool  # axis 0 of every input and output is dynamic
    precision: str  # fp32 | fp16 | int8, from the graph's nodes and initializers
    int8_layout: str | None  # ort (uint8 activations) | tensorrt (int8, zero point 0) | None
    nominal_size: int | None  # the size the model was calibrated and verified at
    preprocessing: Preprocessing | None
    class_names: tuple[str, ...] | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """The first output's last dimension: the class count labels.txt must match."""
        return self.outputs[0].shape[-1] if self.outputs and self.outputs[0].shape else None


def _shape(value_info) -> tuple[int | None, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _tensor(value_info, path: Path) -> Tensor:
    elem = value_info.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise InputError(f"{path}: tensor {value_info.name!r} has ONNX element type {elem}, which Triton has no "
                         "type for; export the model with float, float16 or uint8 inputs")
    return Tensor(value_info.name, TRITON_TYPES[elem], _shape(value_info))


def _precision(graph) -> tuple[str, str | None]:
    """int8 (with its QDQ layout) when the graph quantizes, else fp16 or fp32 by its weights."""
    import onnx

    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if quantizers:
        inits = {t.name: t for t in graph.initializer}
        zero = inits.get(quantizers[0].input[2]) if len(quantizers[0].input) > 2 else None
        layout = "ort" if zero is not None and zero.data_type == onnx.TensorProto.UINT8 else "tensorrt"
        return "int8", layout
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    return ("fp16" if fp16 else "fp32"), None


def _class_names(meta: dict[str, str], path: Path) -> tuple[str, ...] | None:
    raw = meta.get(META_CLASS_NAMES)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{path}: metadata {META_CLASS_NAMES} is not JSON ({exc}); re-export the model") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: metadata {META_CLASS_NAMES} is not a list of strings; re-export the model")
    return tuple(names)


def read_onnx(path: str | Path) -> Signature:
    """The signature of an ONNX model file (graph inputs, outputs, batch axis, precision, records).

    >>> read_onnx("runs/demo/repvgg_mini/model_int8_ort.onnx").dynamic_batch   # doctest: +SKIP
    True
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"model {p} does not exist; give an ONNX file from `repdeploy export` or `quantize`")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise InputError(f"{p} is not a readable ONNX model ({exc}); give an ONNX file from `repdeploy export`") from exc
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise InputError(f"{p} keeps its weights in external data files, and a Triton model folder holds one "
                         "model.onnx; save it as one file (onnx.save(model, path, save_as_external_data=False))")
    weights = {t.name for t in graph.initializer}
    inputs = tuple(_tensor(i, p) for i in graph.input if i.name not in weights)
    outputs = tuple(_tensor(o, p) for o in graph.output)
    if not inputs or not outputs:
        raise InputError(f"{p} has no graph inputs or outputs; re-export the model")
    batch_axes = [t.shape[0] if t.shape else 0 for t in (*inputs, *outputs)]
    if any(len(t.shape) == 0 for t in (*inputs, *outputs)):
        raise InputError(f"{p}: a graph input or output is a scalar; Triton needs a batch or tensor axis")
    dynamic = all(b is None for b in batch_axes)
    if not dynamic and any(b is None for b in batch_axes):
        raise InputError(f"{p}: axis 0 is dynamic on some inputs/outputs and fixed on others, so no max_batch_size "
                         "agrees with it; re-export with one batch axis (`repdeploy export` makes it dynamic)")
    from ..metadata import onnx_metadata

    meta = onnx_metadata(p)  # the one reader (metadata.py)
    precision, layout = _precision(graph)
    record = None
    if META_PREPROCESSING in meta:
        try:
            record = Preprocessing.from_dict(json.loads(meta[META_PREPROCESSING]), f"{p} metadata {META_PREPROCESSING}")
        except ValueError as exc:
            raise InputError(f"{p}: metadata {META_PREPROCESSING} is not JSON ({exc}); re-export the model") from exc
    nominal = meta.get(META_INPUT_SIZE, "")
    size = int(nominal) if nominal.isdigit() else (record.input_size if record is not None else None)
    return Signature(path=p, inputs=inputs, outputs=outputs, dynamic_batch=dynamic, precision=precision,
                     int8_layout=layout, nominal_size=size, preprocessing=record,
                     class_names=_class_names(meta, p), metadata=meta)
