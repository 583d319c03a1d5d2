"""Preprocessing as data: the one record of how images become model inputs.

A model is only right when it is fed as it was calibrated and evaluated, so the record travels
with it: fused.pt (`extra["preprocessing"]`), calib.json (`data.preprocessing`), report.json and
the ONNX `metadata_props` (key `repdeploy.preprocessing`, JSON). eval, bench, quantize, qat and
pipeline read it back and use it unless the user overrides a field with --mean/--std/--resize.

The transform, for pixel arrays and image files alike (its math is written once, in numpy, in
pixels.py: every data source, `preprocess` and the serving runtime call it):
  1. grey or RGB as `channel_order` says (grey is replicated when the model takes 3 channels);
  2. resize so the shorter side is `resize` (bilinear), then centre-crop `input_size` square
     (resize == input_size: a plain resize of square images, no crop);
  3. scale `value_range` to [0, 1], subtract `mean`, divide by `std` per channel; NCHW float32.

This module imports neither torch nor onnx (the serving runtime needs it without them). Services
call `preprocess(images, record)`, or use `repdeploy.serving`, which does it for them:

>>> record = preprocessing_of("runs/demo/repvgg_mini/model_fp32.onnx")   # doctest: +SKIP
>>> x = preprocess(uint8_images, record)                                 # doctest: +SKIP
>>> session.run(None, {"input": x})                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError

# The ONNX metadata keys, reader and writer live in metadata.py; the names below are kept for the
# callers that import them from here.
from .metadata import META_INPUT_SIZE, META_PRECISION, onnx_metadata, set_metadata_prop, stamp  # noqa: E402
from .metadata import META_PREPROCESSING as ONNX_METADATA_KEY  # noqa: E402

RECORD_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become the model's NCHW float32 input (see the module docstring)."""

    input_size: int
    resize: int  # shorter side before the centre crop; == input_size for a plain resize
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"  # "RGB" or "L" (grey)
    value_range: tuple[float, float] = (0.0, 255.0)  # raw pixel values mapped to [0, 1]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        from . import validate

        # Every number, from a user or a file, is checked here: NaN would feed NaN to the model and
        # still "succeed" at 0-10 % top-1; a huge size would allocate terabytes.
        validate.input_size("preprocessing input_size", self.input_size)
        validate.integer("preprocessing resize", self.resize, low=1, high=validate.MAX_RESIZE, allow_none=False)
        for name, values in (("mean", self.mean), ("std", self.std), ("value_range", self.value_range)):
            for v in values:
                validate.number(f"preprocessing {name}", v, low=-validate.MAX_PIXEL_VALUE,
                                high=validate.MAX_PIXEL_VALUE, allow_none=False)
        if self.input_size < 1 or self.resize < self.input_size:
            raise InputError(f"preprocessing: resize {self.resize} must be >= the input size {self.input_size} "
                             "(the centre crop is input_size); fix --resize")
        if self.channel_order not in ("RGB", "L"):
            raise InputError(f"preprocessing: channel order {self.channel_order!r}: use RGB or L")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise InputError(f"preprocessing: mean {self.mean} and std {self.std} need one value per channel "
                             "and positive std; fix --mean/--std")
        lo, hi = self.value_range
        if not hi > lo:
            raise InputError(f"preprocessing: value range {self.value_range} is empty")

    @property
    def crop(self) -> int:
        return self.input_size

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(version=RECORD_VERSION, crop=self.crop, mean=list(self.mean), std=list(self.std),
                 value_range=list(self.value_range), layout="NCHW", dtype="float32")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "preprocessing record") -> "Preprocessing":
        try:
            return cls(input_size=int(d["input_size"]), resize=int(d["resize"]),
                       mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       channel_order=str(d.get("channel_order", "RGB")),
                       value_range=tuple(float(v) for v in d.get("value_range", (0.0, 255.0))),  # type: ignore[arg-type]
                       interpolation=str(d.get("interpolation", "bilinear")))
        except InputError as exc:
            raise InputError(f"{source}: {exc}; re-export the model or override with --mean/--std/--resize") from exc
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise InputError(f"{source} is not a repdeploy preprocessing record ({exc}); re-export the model") from exc

    def override(self, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 resize: int | None = None) -> "Preprocessing":
        """This record with the fields a user gave on the command line replaced."""
        changes: dict[str, Any] = {}
        if mean is not None:
            changes["mean"] = _per_channel(mean, len(self.mean), "--mean")
        if std is not None:
            changes["std"] = _per_channel(std, len(self.std), "--std")
        if resize is not None:
            changes["resize"] = int(resize)
        return replace(self, **changes) if changes else self

    def at_size(self, input_size: int) -> "Preprocessing":
        """This record for another input size: the crop keeps its ratio to the resize (as open_dataset does)."""
        if input_size == self.input_size:
            return self
        resize = max(input_size, int(round(self.resize * input_size / self.input_size)))
        return replace(self, input_size=int(input_size), resize=resize)

    def summary(self) -> str:
        """One readable line for reports and logs."""
        crop = f"resize {self.resize}, centre crop {self.crop}" if self.resize != self.crop else f"resize {self.crop}"
        fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        return (f"{self.channel_order} {crop}, [{self.value_range[0]:g}, {self.value_range[1]:g}] -> [0, 1], "
                f"mean {fmt(self.mean)}, std {fmt(self.std)}")


def _per_channel(values: Sequence[float], channels: int, option: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        v = v * channels
    if len(v) != channels:
        raise InputError(f"{option} needs 1 or {channels} values, got {len(v)}")
    return v


# -- the math (pixels.py, in numpy) ------------------------------------------------------------------


def preprocess(images, record: Preprocessing | dict) -> np.ndarray:
    """Raw images -> the model's float32 NCHW input, exactly as repdeploy fed it.

    `images`: one PIL image, a list of them, or a numpy array (H,W), (H,W,C), (N,H,W) or
    (N,H,W,C) of raw pixel values (uint8 0-255 by default; see `record.value_range`). The math is
    pixels.py's, the one every data source and the serving runtime use; no torch is involved.

    >>> preprocess(np.zeros((8, 8), np.uint8), record).shape              # doctest: +SKIP
    (1, 3, 32, 32)
    """
    from .pixels import to_input

    if isinstance(record, dict):
        record = Preprocessing.from_dict(record)
    return to_input(images, record)


# -- where the record lives ----------------------------------------------------------------------


def write_onnx_metadata(path: str | Path, record: Preprocessing) -> None:
    """Set the record in an ONNX file's metadata_props (rewrites the file in place, atomically)."""
    import onnx

    from .io import atomic_path

    model = onnx.load(str(path))
    set_onnx_metadata(model, record)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def set_onnx_metadata(model, record: Preprocessing) -> None:
    """Set the record on an in-memory onnx.ModelProto."""
    stamp(model, preprocessing=record)


def preprocessing_of(path: str | Path) -> Preprocessing | None:
    """The record a model file carries: ONNX metadata_props, a fused.pt's extra, a calib.json,
    or a report.json; None for files that carry none (a plain checkpoint)."""
    p = Path(path)
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        try:
            raw = onnx_metadata(p).get(ONNX_METADATA_KEY)
        except (OSError, ValueError):  # an unreadable ONNX is reported by whoever opens it
            return None
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError(f"{p} metadata {ONNX_METADATA_KEY} is not JSON; re-export the model with "
                             "`repdeploy export`") from None
        return Preprocessing.from_dict(rec, f"{p} metadata {ONNX_METADATA_KEY}")
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
    from .metadata import class_names_in

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


__all__ = ["Preprocessing", "preprocess", "preprocessing_of", "class_names_of", "set_onnx_metadata",
           "write_onnx_metadata", "set_metadata_prop", "onnx_metadata", "ONNX_METADATA_KEY", "META_INPUT_SIZE", "META_PRECISION"]
