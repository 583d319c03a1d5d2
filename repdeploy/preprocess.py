"""Preprocessing as data: the one record of how images become model inputs.

A model is only right when it is fed as it was calibrated and evaluated, so the record travels
with it: fused.pt (`extra["preprocessing"]`), calib.json (`data.preprocessing`), report.json and
the ONNX `metadata_props` (key `repdeploy.preprocessing`, JSON). eval, bench, quantize, qat and
pipeline read it back and use it unless the user overrides a field with --mean/--std/--resize.

The transform, for pixel arrays and image files alike:
  1. grey or RGB as `channel_order` says (grey is replicated when the model takes 3 channels);
  2. resize so the shorter side is `resize` (bilinear), then centre-crop `input_size` square
     (resize == input_size: a plain resize of square images, no crop);
  3. scale `value_range` to [0, 1], subtract `mean`, divide by `std` per channel; NCHW float32.

Services call `preprocess(images, record)`:

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

from .errors import DataError, InputError

ONNX_METADATA_KEY = "repdeploy.preprocessing"
#: The other ONNX metadata keys: the nominal input size (calibration, benchmarks) of a graph whose
#: height and width are dynamic, and the precision it was exported in. Export writes them and the
#: runtimes read them, so they live here, below both (docs/architecture.md, "Layer order").
META_INPUT_SIZE = "repdeploy.input_size"
META_PRECISION = "repdeploy.precision"
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


# -- the transform ------------------------------------------------------------------------------


def transform(x, record: Preprocessing, *, already_scaled: bool = False):
    """Resize/crop and normalise a float torch batch (N, C, H, W) of raw pixel values.

    The one implementation behind `preprocess` and the array sources of data/arrays.py, so a service
    and the evaluation feed a model identically.
    """
    import torch
    import torch.nn.functional as F

    size = record.input_size
    h, w = x.shape[-2:]
    if (h, w) != (size, size) or record.resize != size:
        scale = record.resize / min(h, w)
        nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
        if (nh, nw) != (h, w):
            # antialias only matters when shrinking; bilinear upsampling is the same either way
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h or nw < w)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    if already_scaled:
        return x.contiguous()
    lo, hi = record.value_range
    x = (x - lo) / (hi - lo)
    mean = torch.tensor(record.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(record.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def preprocess(images, record: Preprocessing | dict) -> np.ndarray:
    """Raw images -> the model's float32 NCHW input, exactly as repdeploy fed it.

    `images`: one PIL image, a list of them, or a numpy array (H,W), (H,W,C), (N,H,W) or
    (N,H,W,C) of raw pixel values (uint8 0-255 by default; see `record.value_range`).

    >>> preprocess(np.zeros((8, 8), np.uint8), record).shape              # doctest: +SKIP
    (1, 3, 32, 32)
    """
    if isinstance(record, dict):
        record = Preprocessing.from_dict(record)
    if hasattr(images, "convert") or (isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert")):
        pil = [images] if hasattr(images, "convert") else list(images)
        mode = "L" if record.channel_order == "L" else "RGB"
        arrays = [np.asarray(im.convert(mode), dtype=np.float32) for im in pil]
        batch = [_to_nchw(a[None], record) for a in arrays]
        return np.concatenate([transform(b, record).numpy() for b in batch])
    a = np.asarray(images)
    if a.dtype.kind not in "uif":
        raise DataError(f"preprocess: images of dtype {a.dtype} are not pixel values")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        a = a[None]  # one image: (H, W) or (H, W, C)
    if a.ndim not in (3, 4):
        raise DataError(f"preprocess: array of shape {a.shape} is not (H,W), (H,W,C), (N,H,W) or (N,H,W,C)")
    x = _to_nchw(a, record)
    return transform(x, record).numpy().astype(np.float32, copy=False)


def _to_nchw(a: np.ndarray, record: Preprocessing):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(a)).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (N, H, W) grey
    elif x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if record.channels == 3 and c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif record.channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as Pillow's "L"
        x = (x * w).sum(1, keepdim=True)
    return x


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
    set_metadata_prop(model, ONNX_METADATA_KEY, json.dumps(record.to_dict(), sort_keys=True))


def set_metadata_prop(model, key: str, value: str) -> None:
    """Set one metadata_props entry of an in-memory onnx.ModelProto, replacing an earlier one."""
    for prop in list(model.metadata_props):
        if prop.key == key:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props, read without parsing its graph.

    Every ORT runner activation and every `preprocessing_of` reads them; `onnx.load` would parse
    all weights first (0.6 s for B1's FP32 file), while the top-level fields of the ModelProto can
    be stepped over by their lengths (metadata_props is field 14). Raises ValueError on a file that is not a ModelProto.
    """
    import mmap

    from onnx import StringStringEntryProto

    props: dict[str, str] = {}
    with open(path, "rb") as f:
        if not f.seek(0, 2):
            raise ValueError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, end = 0, len(buf)
            while pos < end:
                key, pos = _varint(buf, pos)
                field, wire = key >> 3, key & 7
                if wire == 0:
                    _, pos = _varint(buf, pos)
                elif wire == 1 or wire == 5:
                    pos += 8 if wire == 1 else 4
                elif wire == 2:
                    length, pos = _varint(buf, pos)
                    if field == 14:
                        try:
                            entry = StringStringEntryProto.FromString(buf[pos:pos + length])
                        except Exception as exc:  # protobuf's DecodeError: a damaged entry
                            raise ValueError(f"{path}: unreadable metadata entry at byte {pos}") from exc
                        props[entry.key] = entry.value
                    pos += length
                else:
                    raise ValueError(f"{path} is not an ONNX model (wire type {wire} at byte {pos})")
            if pos != end:
                raise ValueError(f"{path} is truncated")
    return props


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or invalid varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


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


__all__ = ["Preprocessing", "preprocess", "preprocessing_of", "transform", "set_onnx_metadata",
           "write_onnx_metadata", "set_metadata_prop", "onnx_metadata", "ONNX_METADATA_KEY", "META_INPUT_SIZE", "META_PRECISION"]
