"""`export_model`: a checkpoint to a checked ONNX, the library half of `repdeploy export`.

The model is loaded and fused (verified), fed with the preprocessing its file records (or the
default evaluation and quantization feed it with), exported, and run once in ONNX Runtime against
torch (the tolerance table's ort_fp32 / ort_fp16 entry); with a uint8 input format the
normalisation then goes inside the graph, judged against host preprocessing. The file appears
under its name only once every check passed: a failed check raises before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ExportError, InputError


@dataclass(frozen=True)
class ExportSettings:
    """Every option of an ONNX export (docs/cli.md `export`)."""

    input_size: int | None = None  # nominal resolution; None: the variant's (the ONNX takes any HxW)
    opset: int = 17
    precision: str = "fp32"  # fp32 or fp16
    labels: str | os.PathLike | None = None  # class names file, one per line
    input_format: str = "float"  # or uint8-nhwc / uint8-nchw: normalised inside the graph
    load_kwargs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ExportResult:
    """What was written and what its checks found; `record` is the command's JSON."""

    output: Path
    record: dict
    parity: Any  # export.onnx's parity figures (max_abs_diff, max_rel_diff, top1_agreement)


def export_model(checkpoint: str | os.PathLike, output: str | os.PathLike, settings: ExportSettings | None = None,
                 **options: Any) -> ExportResult:
    """Export `checkpoint` to the ONNX `output`, checked against torch (see the module docstring)."""
    import torch

    from ..checkpoints import load_fused
    from ..data.labels import class_names_for
    from ..export.onnx import ort_parity
    from ..export.onnx import export_onnx
    from ..io import atomic_path
    from ..validate import with_options

    s = with_options(ExportSettings, settings, options, "export_model")
    if s.precision not in ("fp32", "fp16"):
        raise InputError(f"--precision {s.precision} applies to engines (--format trt); ONNX export is fp32 or fp16 "
                         "(INT8 ONNX comes from `repdeploy quantize`)")
    plain, loaded, eq = load_fused(checkpoint, **dict(s.load_kwargs or {}))
    size = s.input_size or plain.spec.input_size
    prep, prep_from = recorded_preprocessing(checkpoint, loaded.extra, size, plain.spec.in_channels)
    extra = loaded.extra if isinstance(loaded.extra, dict) else {}
    names = class_names_for(plain.spec.num_classes, labels=s.labels, recorded=extra.get("class_names"),
                            model_path=checkpoint)
    x = torch.randn(2, plain.spec.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with atomic_path(output) as staged, tempfile.TemporaryDirectory(prefix="repdeploy-export-") as scratch:
        float_onnx = staged if s.input_format == "float" else Path(scratch) / "float.onnx"
        export_onnx(plain, float_onnx, input_size=size, in_channels=plain.spec.in_channels, opset=s.opset,
                    precision=s.precision, preprocessing=prep, class_names=names)
        parity = ort_parity(plain, float_onnx, x)
        if not parity.passed:
            raise ExportError(f"{output}: {parity.verdict['line']} for {s.precision} at opset {s.opset}: "
                              "nothing was written")
        in_graph = (pixel_input(float_onnx, staged, prep, s.input_format, output)
                    if s.input_format != "float" else None)
    record = {
        "input": str(checkpoint), "variant": loaded.variant, "output": str(output), "opset": s.opset,
        "precision": s.precision, "input_size": size, "dynamic_axes": ["batch", "height", "width"],
        "fuse": eq.to_dict() if eq else None, "ort_parity": parity.to_dict(),
        "ort_parity_tolerance": parity.verdict["tolerance"], "ort_parity_passed": parity.passed,
        "preprocessing": prep.to_dict(), "preprocessing_from": prep_from,
        "class_names": names, "input_format": s.input_format, "input_format_verdict": in_graph,
    }
    return ExportResult(Path(output), record, parity)


def recorded_preprocessing(checkpoint, extra, size: int, channels: int):
    """(the record a model is fed with at `size`, where it came from): a fused.pt from quantize or
    pipeline carries its record, kept (its crop ratio kept at another size); else the default
    evaluation and quantization feed the model with."""
    from ..data.labels import default_preprocessing
    from ..preprocess import Preprocessing

    prep = extra.get("preprocessing") if isinstance(extra, dict) else None
    prep = Preprocessing.from_dict(prep, f"{checkpoint} extra.preprocessing") if isinstance(prep, dict) else None
    if prep is not None:
        return (prep.at_size(size) if prep.input_size != size else prep), "the model's record"
    return default_preprocessing(checkpoint, size, channels), "the default eval and quantize feed it with"


def pixel_input(float_onnx, staged, record, input_format: str, output) -> dict:
    """Write `staged` (becoming `output`) with the normalisation inside the graph; its verdict
    against host preprocessing (ExportError, nothing written, when it fails)."""
    from ..ingraph import write_checked

    verdict = write_checked(float_onnx, staged, record, input_format)
    if not verdict.passed:
        raise ExportError(f"{output}: {verdict.line()}, nothing was written")
    return verdict.to_dict()


def pixel_input_from_onnx(source, output, input_format: str) -> dict:
    """`export model.onnx --input-format uint8-nhwc`: the same graph, taking uint8 pixels; the record."""
    from ..io import atomic_path
    from ..recorded import preprocessing_of

    record = preprocessing_of(source)
    if record is None:
        raise InputError(f"{source} carries no preprocessing record, which --input-format {input_format} needs; "
                         "re-export it with repdeploy")
    with atomic_path(output) as staged:
        verdict = pixel_input(source, staged, record, input_format, output)
    return {"input": str(source), "output": str(output), "input_format": input_format,
            "preprocessing": record.to_dict(), "input_format_verdict": verdict}
