"""FP32 ONNX export of a fused model, checked and run once in ONNX Runtime.

The TorchScript exporter (`dynamo=False`) is used for every flavour: it is the one that also
exports fake-quant modules to Q/DQ with a dynamic batch in torch 2.13 (docs/facts.md §4), so
FP32 and INT8 graphs come out of the same exporter with the same node names.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

#: Serializes torch.onnx.export across threads (its state is process-global; issue 21 N10).
EXPORT_LOCK = threading.RLock()
from ..io import atomic_path
from ..progress import waiting
from ..metadata import META_INPUT_SIZE, META_PRECISION, stamp  # noqa: F401 (META_*: callers import them from here)

OPSET = 17
#: QDQ with per-channel axes needs opset 13; the TorchScript exporter stops at 20.
MIN_OPSET, MAX_OPSET = 13, 20
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16")


def check_opset(opset: int) -> int:
    """Refuse an opset the exporter or the QDQ layouts cannot produce, before any work."""
    from ..errors import InputError

    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset}: repdeploy exports opset {MIN_OPSET}..{MAX_OPSET} (default {OPSET})")
    return opset


@dataclass(frozen=True)
class OnnxSettings:
    """How `export_onnx` writes a graph; each field is also its keyword shortcut."""

    input_size: int | None = None  # required: the nominal size
    in_channels: int = 3
    opset: int = OPSET
    dynamic_batch: bool = True
    dynamic_spatial: bool = True
    precision: str = "fp32"
    preprocessing: Any = None  # a preprocess.Preprocessing
    class_names: Any = None  # one name per logit


def export_onnx(model: nn.Module, path: str | Path, settings: OnnxSettings | None = None, **options: Any) -> Path:
    """Export `model` (eval mode) to one self-contained ONNX file, checked with onnx.checker.

    The graph takes any batch and, with `dynamic_spatial`, any height and width (the model is
    fully convolutional with a global pool; sizes that are not a multiple of the total stride
    are floored by the strided convs as in torch). `input_size` is the nominal size, recorded
    in the metadata (`repdeploy.input_size`) for calibration and benchmarks. `precision`
    "fp16" exports fp16 weights, activations, input and logits (ONNX Runtime runs it on the CPU;
    TensorRT builds it strongly typed). `preprocessing` (a preprocess.Preprocessing) is stored in
    the metadata too (`repdeploy.preprocessing`), so whoever runs the ONNX feeds it as it was
    calibrated, and `class_names` (one per logit) as `repdeploy.class_names`; the INT8 graphs
    derived from this file inherit both (metadata.py lists every key).

    >>> export_onnx(plain, "model.onnx", input_size=224)   # doctest: +SKIP
    """
    import copy

    import onnx

    from .. import validate
    from ..errors import InputError

    s = validate.with_options(OnnxSettings, settings, options, "export_onnx")
    input_size, in_channels, opset, precision = s.input_size, s.in_channels, s.opset, s.precision
    dynamic_batch, dynamic_spatial, preprocessing, class_names = (s.dynamic_batch, s.dynamic_spatial,
                                                                 s.preprocessing, s.class_names)
    if input_size is None:
        raise InputError("export_onnx: give input_size, the nominal input size in pixels (e.g. 224)")
    if not isinstance(model, nn.Module):
        raise InputError(f"export_onnx: model must be a torch nn.Module (a fused PlainNet), not {type(model).__name__}")
    validate.input_size("input_size", input_size)
    validate.integer("in_channels", in_channels, low=1, high=64, allow_none=False)
    check_opset(opset)
    if class_names is not None:
        from ..metadata import check_class_names

        num_classes = getattr(getattr(model, "spec", None), "num_classes", len(class_names))
        class_names = check_class_names(class_names, num_classes, "the class names")
    if precision not in PRECISIONS:
        raise ExportError(f"ONNX precision {precision!r}: use one of {', '.join(PRECISIONS)} (INT8 comes from quantize)")
    model = model.eval()
    example = torch.zeros(1, in_channels, input_size, input_size)
    if precision == "fp16":
        # A half copy: the caller's model stays fp32. Every op here (conv, relu, mean, linear)
        # has a CPU half kernel in torch, so the trace runs on the CPU.
        model = copy.deepcopy(model).half().eval()
        example = example.half()
    input_axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_spatial:
        input_axes.update({2: "height", 3: "width"})
    axes = {INPUT_NAME: input_axes, OUTPUT_NAME: {0: "batch"} if dynamic_batch else {}}
    with atomic_path(path) as tmp:
        try:
            # torch's exporter keeps process-global state (GLOBALS.in_onnx_export): two threads
            # exporting at once corrupt each other's run, so exports in one process take turns.
            # One call that reports nothing: a ticking line says it is alive (2-11 s on a busy machine).
            with EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad(), \
                    waiting(f"torch.onnx.export: {Path(path).name}"):
                # The TorchScript exporter is deprecated in favour of dynamo; we rely on it on purpose.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                    do_constant_folding=True,
                )
            graph = onnx.load(str(tmp))
            stamp(graph, input_size=input_size, precision=precision, input_format="float",
                  preprocessing=preprocessing, class_names=class_names)
            onnx.checker.check_model(graph, full_check=True)
            onnx.save(graph, str(tmp))
        except (ExportError, OSError, MemoryError):
            raise  # a full disk or no memory is not an export bug; the error boundary names it
        except Exception as exc:  # the exporter raises many types; all mean the same to a user
            raise ExportError(f"ONNX export of {type(model).__name__} to {path} failed: {exc}") from exc
    return Path(path)


@dataclass
class Parity:
    """Agreement of an ONNX Runtime session with the torch module on the same input: the verdict of
    the `ort_fp32` or `ort_fp16` entry of the one tolerance table (repdeploy/tolerance.py)."""

    max_abs_diff: float
    max_rel_diff: float  # over the largest |logit| of the torch model
    top1_agreement: float
    batch: int
    verdict: dict | None = None

    @property
    def passed(self) -> bool:
        """Whether ORT computes what torch does, within the hand-off's tolerance."""
        return bool(self.verdict and self.verdict["passed"])

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def ort_session(onnx_path: str | Path, threads: int | None = None, optimize: bool = True):
    """An ONNX Runtime CPU session with repdeploy's session options (threads follow torch's by default)."""
    import onnxruntime as ort

    from ..runtime.ort import session_options

    options = session_options(threads, optimize=optimize)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def ort_parity(model: nn.Module, onnx_path: str | Path, x: torch.Tensor) -> Parity:
    """Run `x` through the torch FP32 module and the FP32 or FP16 ONNX file and judge the logits."""
    from ..tolerance import judge

    session = ort_session(onnx_path)
    ref = model.eval()(x).numpy()
    meta = session.get_inputs()[0]
    fp16 = meta.type == "tensor(float16)"
    out = session.run(None, {meta.name: x.numpy().astype(np.float16 if fp16 else np.float32)})[0].astype(np.float32)
    v = judge("ort_fp16" if fp16 else "ort_fp32", ref, out, reference_name="torch FP32",
              candidate_name=f"ORT {'FP16' if fp16 else 'FP32'}")
    return Parity(v.max_abs_diff, v.max_rel_diff, v.top1_agreement, int(x.shape[0]), v.to_dict())


def _layout_check(model, path: str | Path) -> dict:
    """Name the INT8 layout and check that layout's own rules (docs/facts.md §4), not the other's.

    tensorrt: TensorRT explicit quantization (signed int8, zero point 0, Q/DQ only on weighted-op
    inputs). ort: what ONNX Runtime CPU makes of it, i.e. how many convs/gemms its optimiser turned
    into integer kernels and how many still run in float. Anything else is a generic QDQ graph,
    reported with the TensorRT rules it breaks.
    """
    from .qdq import INTEGER_OPS, TENSORRT_ON_ORT_WARNING, check_tensorrt_qdq, count_fused_nodes, qdq_layout

    layout = qdq_layout(model)
    if layout == "tensorrt":
        return {"layout": "tensorrt", "layout_check": {
            "rules": "TensorRT explicit quantization", "violations": [], "passed": True,
            "note": TENSORRT_ON_ORT_WARNING}}
    if layout == "ort":
        fused = count_fused_nodes(path)
        integer = {k: v for k, v in fused.items() if k in INTEGER_OPS}
        float_weighted = sum(fused.get(op, 0) for op in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm"))
        return {"layout": "ort", "layout_check": {
            "rules": "ONNX Runtime CPU integer kernels (after graph optimisation)",
            "integer_nodes": integer, "float_weighted_nodes": float_weighted,
            "passed": sum(integer.values()) > 0,
            "note": ("layers left in float on purpose (fallback) also count as float"
                     if float_weighted else "every conv/gemm runs as an integer kernel")}}
    violations = check_tensorrt_qdq(model)
    return {"layout": layout, "layout_check": {
        "rules": "neither layout: TensorRT explicit-quantization rules it breaks", "violations": violations[:5],
        "violation_count": len(violations), "passed": False}}


def describe_onnx(path: str | Path) -> dict:
    """What `repdeploy inspect model.onnx` reports: opset, inputs, op counts, QDQ layout."""
    import onnx
    from collections import Counter

    from ..errors import InputError
    from ..metadata import onnx_metadata

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise InputError(f"{path} is not a readable ONNX file ({exc}); give a .onnx written by an exporter") from exc
    ops = Counter(n.op_type for n in model.graph.node)
    record = {
        "path": str(path),
        "format": "onnx",
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": [
            {"name": i.name, "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
             "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name}
            for i in model.graph.input
        ],
        "metadata": onnx_metadata(path),  # the one reader (metadata.py)
        "ops": dict(sorted(ops.items())),
        "quantized": ops.get("QuantizeLinear", 0) > 0,
    }
    if record["quantized"]:
        record.update(_layout_check(model, path))
    return record
