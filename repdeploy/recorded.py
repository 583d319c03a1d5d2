"""What a model file records about itself, whatever its format: the preprocessing record and the
class names, read back from ONNX metadata_props, a fused.pt's `extra`, a calib.json or a report.json.

The format is told by the file's suffix; a file of that format that carries nothing (a plain
checkpoint, an ONNX repdeploy did not write) gives None, and a record that is there but broken is
an InputError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .metadata import META_PREPROCESSING, class_names_in, onnx_metadata
from .preprocess import Preprocessing


def preprocessing_of(path: str | Path) -> Preprocessing | None:
    """The record a model file carries: ONNX metadata_props, a fused.pt's extra, a calib.json,
    or a report.json; None for files that carry none (a plain checkpoint)."""
    p = Path(path)
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        try:
            raw = onnx_metadata(p).get(META_PREPROCESSING)
        except (OSError, ValueError):  # an unreadable ONNX is reported by whoever opens it
            return None
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(f"{p} metadata {META_PREPROCESSING} is not JSON; re-export the model with "
                             "`repdeploy export`") from None
        return Preprocessing.from_dict(rec, f"{p} metadata {META_PREPROCESSING}")
    if suffix == ".json":
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(doc, dict):
            return None
        data = doc.get("data")
        rec = doc.get("preprocessing") or (data.get("preprocessing") if isinstance(data, dict) else None)
        return Preprocessing.from_dict(rec, str(p)) if isinstance(rec, dict) else None
    if suffix in (".pt", ".pth"):
        import torch

        try:
            raw = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not a repdeploy file (or not loadable safely): no record
            return None
        extra = raw.get("extra") if isinstance(raw, dict) else None
        rec = extra.get("preprocessing") if isinstance(extra, dict) else None
        return Preprocessing.from_dict(rec, f"{p} extra.preprocessing") if isinstance(rec, dict) else None
    return None


def class_names_of(path: str | Path) -> list[str] | None:
    """The class names a model file records: ONNX metadata `repdeploy.class_names`, or a fused.pt's
    `extra["class_names"]`; None when it records none."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() == ".onnx":
        try:
            props = onnx_metadata(p)
        except (OSError, ValueError):
            return None
        return class_names_in(props, str(p))
    if p.suffix.lower() in (".pt", ".pth"):
        import torch

        try:
            raw = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not a repdeploy file (or not loadable safely): no names
            return None
        names = (raw.get("extra") or {}).get("class_names") if isinstance(raw, dict) else None
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


__all__ = ["preprocessing_of", "class_names_of"]
