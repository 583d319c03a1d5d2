"""One Triton model's configuration, derived from its signature, and its config.pbtxt text.

`plan_model` decides every field from the graph (and, for TensorRT plans, the engines' stamps):
names and TYPE_* types; dims without the batch; `max_batch_size` from the dynamic batch axis (or
0 with full dims for a fixed batch) or the TensorRT profile's maximum, never more than the model
takes. `render` writes the text; Triton's own schema reads it back in check.py. The text is
written by hand rather than through tritonclient's protobuf classes so that packaging needs no
Triton package at all; the check is what keeps the two in agreement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import InputError
from ..version import __version__
from .signature import Signature
from .stamp import EngineStamp

DEFAULT_MAX_BATCH = 8
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
LABELS_FILE = "labels.txt"
VERSION_DIR = "1"
ONNX_FILE = "model.onnx"
#: Parameter keys a config carries (string values; the preprocessing record is JSON).
PARAM_PREPROCESSING = "repdeploy.preprocessing"
PARAM_PRECISION = "repdeploy.precision"
PARAM_LAYOUT = "repdeploy.int8_layout"
PARAM_TENSORRT = "repdeploy.tensorrt_version"
PARAM_TOOL = "repdeploy.version"


@dataclass
class ModelPlan:
    """Everything one model directory of the repository holds, decided before anything is written."""

    name: str
    signature: Signature
    stamps: list[EngineStamp] = field(default_factory=list)  # empty: an ONNX model
    max_batch_size: int = 0
    input_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    warmup_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kind: str = "cpu"
    instances: int = 1
    tensorrt_accelerator: bool = False
    labels: tuple[str, ...] | None = None

    @property
    def is_plan(self) -> bool:
        return bool(self.stamps)

    def model_files(self) -> dict[str, str]:
        """Version-directory file name -> source path."""
        if not self.is_plan:
            return {ONNX_FILE: str(self.signature.path)}
        return {f"model_{s.sm}.plan": str(s.engine) for s in self.stamps}

    def parameters(self) -> dict[str, str]:
        sig = self.signature
        params = {PARAM_PRECISION: sig.precision, PARAM_TOOL: __version__}
        if sig.int8_layout:
            params[PARAM_LAYOUT] = sig.int8_layout
        if sig.preprocessing is not None:
            params[PARAM_PREPROCESSING] = json.dumps(sig.preprocessing.to_dict(), sort_keys=True)
        if self.is_plan:
            params[PARAM_TENSORRT] = self.stamps[0].tensorrt_version
        return params


def _input_dims(sig: Signature, full: bool) -> dict[str, tuple[int, ...]]:
    dims = {}
    for t in sig.inputs:
        shape = t.shape if full else t.shape[1:]
        if any(d is None for d in shape) and sig.nominal_size is None:
            raise InputError(f"{sig.path}: input {t.name!r} has dynamic dims {shape} and the model records no nominal "
                             f"input size (metadata repdeploy.input_size); re-export it with `repdeploy export`")
        # Dynamic spatial axes take the size the model was calibrated and verified at: the graph
        # accepts others, but nothing vouches for its accuracy there, and warm-up needs one shape.
        dims[t.name] = tuple(sig.nominal_size if d is None else d for d in shape)  # type: ignore[misc]
    return dims


def _output_dims(sig: Signature, full: bool) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(-1 if d is None else d for d in (t.shape if full else t.shape[1:])) for t in sig.outputs}


def _plan_batch(stamps: list[EngineStamp], sig: Signature) -> tuple[int, dict[str, tuple[int, ...]],
                                                                     dict[str, tuple[int, ...]]]:
    """max_batch_size, input dims and warm-up dims of TensorRT plans, from their profiles."""
    results = set()
    for stamp in stamps:
        dims, warm, maxima = {}, {}, set()
        for t in sig.inputs:
            profile = stamp.profiles.get(t.name) or (stamp.profiles.get(None) if len(sig.inputs) == 1 else None)
            if profile is None:
                raise InputError(f"{stamp.engine}: its stamp records no optimization profile for input {t.name!r}, so "
                                 "the batch range it accepts is unknown; add the min/opt/max shapes it was built with "
                                 f"as \"profiles\" to {stamp.engine.name}.json (docs/triton.md)")
            lo, opt, hi = profile
            if len(hi) != len(t.shape):
                raise InputError(f"{stamp.engine}: profile {hi} for {t.name!r} does not match the ONNX input rank "
                                 f"{len(t.shape)} ({stamp.onnx})")
            if lo[0] != 1:
                raise InputError(f"{stamp.engine}: its profile's smallest batch is {lo[0]}, and Triton's dynamic batcher "
                                 "sends any batch from 1 up; rebuild it with a profile starting at batch 1")
            maxima.add(hi[0])
            dims[t.name] = tuple(a if a == b else -1 for a, b in zip(lo[1:], hi[1:]))
            warm[t.name] = tuple(opt[1:])
        if len(maxima) != 1:
            raise InputError(f"{stamp.engine}: its inputs' profiles end at different batches {sorted(maxima)}")
        results.add((maxima.pop(), tuple(sorted(dims.items())), tuple(sorted(warm.items()))))
    if len(results) != 1:
        raise InputError(f"the plans {', '.join(str(s.engine) for s in stamps)} have different profiles; one Triton "
                         "model serves one interface: build them with the same shapes")
    max_batch, dims, warm = results.pop()
    return max_batch, dict(dims), dict(warm)


def plan_model(name: str, sig: Signature, *, stamps: list[EngineStamp] | None = None,
               max_batch_size: int | None = None, kind: str | None = None, instances: int = 1,
               tensorrt_accelerator: bool = False, labels: tuple[str, ...] | None = None) -> ModelPlan:
    """Decide one model's config from its signature (and its plans' stamps); refuse contradictions."""
    stamps = list(stamps or [])
    kind = kind or ("gpu" if stamps else "cpu")
    if kind not in KINDS:
        raise InputError(f"instance kind {kind!r}: use cpu or gpu")
    if instances < 1 or instances > 64:
        raise InputError(f"--instances {instances}: give 1 to 64 model instances")
    if stamps and kind != "gpu":
        raise InputError(f"{name}: TensorRT plans run on a GPU only; drop --instance-kind cpu")
    if tensorrt_accelerator:
        if stamps:
            raise InputError(f"{name}: --tensorrt-accelerator is for ONNX models; a plan already is a TensorRT engine")
        if kind != "gpu":
            raise InputError(f"{name}: --tensorrt-accelerator needs --instance-kind gpu (TensorRT runs on the GPU)")
        if sig.int8_layout == "ort":
            raise InputError(f"{sig.path} is the ort INT8 layout (uint8 activations), which TensorRT does not take; "
                             "use the tensorrt layout (`repdeploy quantize --target tensorrt`) with "
                             "--tensorrt-accelerator")
    if max_batch_size is not None and max_batch_size < 1:
        raise InputError(f"--max-batch-size {max_batch_size}: give 1 or more")
    if stamps and sig.dynamic_batch:
        limit, dims, warm = _plan_batch(stamps, sig)
        if max_batch_size is not None and max_batch_size > limit:
            raise InputError(f"--max-batch-size {max_batch_size} is more than the engines' profile takes ({limit}); "
                             f"give {limit} or less, or rebuild the engines with a larger profile")
        mbs = max_batch_size or limit
    elif sig.dynamic_batch:
        mbs = max_batch_size or DEFAULT_MAX_BATCH
        dims = _input_dims(sig, full=False)
        warm = dims
    else:
        if max_batch_size is not None:
            raise InputError(f"{sig.path} has a fixed batch of {sig.inputs[0].shape[0]}, so Triton must not batch it "
                             "(max_batch_size 0); drop --max-batch-size or re-export with a dynamic batch")
        mbs = 0
        dims = _input_dims(sig, full=True)
        warm = dims
    num_classes = sig.num_classes
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise InputError(f"{len(labels)} class names for {sig.path}, whose output {sig.outputs[0].name!r} has "
                         f"{num_classes} classes; give a labels file with one name per class")
    return ModelPlan(name=name, signature=sig, stamps=stamps, max_batch_size=mbs, input_dims=dims,
                     output_dims=_output_dims(sig, full=mbs == 0), warmup_dims=warm, kind=kind, instances=instances,
                     tensorrt_accelerator=tensorrt_accelerator, labels=labels)


# ------------------------------------------------------------------------------ text


def quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, everything else octal-escaped."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _dims(d: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(int(x)) for x in d) + " ]"


def render(plan: ModelPlan) -> str:
    """config.pbtxt for `plan`."""
    sig = plan.signature
    source = ", ".join(s.engine.name for s in plan.stamps) if plan.is_plan else sig.path.name
    lines = [f"# Written by repdeploy {__version__} (`repdeploy package`) from {source}: every field is derived",
             "# from the model; edit the model and package it again rather than this file.",
             f"name: {quote(plan.name)}"]
    if plan.is_plan:
        lines += ['platform: "tensorrt_plan"', 'backend: "tensorrt"']
    else:
        lines += ['platform: "onnxruntime_onnx"', 'backend: "onnxruntime"']
    lines.append(f"max_batch_size: {plan.max_batch_size}")
    lines.append("input [")
    lines.append(",\n".join(f"  {{\n    name: {quote(t.name)}\n    data_type: {t.triton_type}\n"
                            f"    dims: {_dims(plan.input_dims[t.name])}\n  }}" for t in sig.inputs))
    lines.append("]")
    lines.append("output [")
    outs = []
    for i, t in enumerate(sig.outputs):
        label = f"\n    label_filename: {quote(LABELS_FILE)}" if plan.labels is not None and i == 0 else ""
        outs.append(f"  {{\n    name: {quote(t.name)}\n    data_type: {t.triton_type}\n"
                    f"    dims: {_dims(plan.output_dims[t.name])}{label}\n  }}")
    lines += [",\n".join(outs), "]"]
    if plan.is_plan:
        lines.append("cc_model_filenames [")
        lines.append(",\n".join(f"  {{ key: {quote(s.compute_capability)} value: {quote(f'model_{s.sm}.plan')} }}"
                                for s in plan.stamps))
        lines.append("]")
    if plan.max_batch_size > 0:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [ {{ count: {plan.instances} kind: {KINDS[plan.kind]} }} ]")
    if plan.tensorrt_accelerator:
        mode = {"int8": "INT8", "fp16": "FP16"}.get(sig.precision, "FP32")
        lines += ["optimization { execution_accelerators {",
                  "  gpu_execution_accelerator [ {",
                  '    name: "tensorrt"',
                  f'    parameters {{ key: "precision_mode" value: "{mode}" }}',
                  '    parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
                  "  } ]", "} }"]
    lines.append(_warmup(plan))
    lines.append("parameters [")
    lines.append(",\n".join(f"  {{ key: {quote(k)} value: {{ string_value: {quote(v)} }} }}"
                            for k, v in plan.parameters().items()))
    lines.append("]")
    return "\n".join(lines) + "\n"


def _warmup(plan: ModelPlan) -> str:
    """Zero-data warm-up at batch 1 and at the largest batch, so the first real request is not slow."""
    batches = [1] if plan.max_batch_size <= 1 else [1, plan.max_batch_size]
    entries = []
    for b in batches:
        inputs = "\n".join(f"    inputs {{ key: {quote(t.name)} value: {{ data_type: {t.triton_type} "
                           f"dims: {_dims(plan.warmup_dims[t.name])} zero_data: true }} }}"
                           for t in plan.signature.inputs)
        entries.append(f"  {{\n    name: \"zero_batch_{b}\"\n    batch_size: {b}\n{inputs}\n  }}")
    return "model_warmup [\n" + ",\n".join(entries) + "\n]"
