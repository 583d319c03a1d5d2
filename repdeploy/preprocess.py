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

This module imports neither torch nor onnx (the serving runtime needs it without them). Where a
model file keeps its record is recorded.py (`preprocessing_of`); the ONNX metadata keys, writer
and reader are metadata.py. Services call `preprocess(images, record)`, or use `repdeploy.serving`,
which does it for them:

>>> record = preprocessing_of("runs/demo/repvgg_mini/model_fp32.onnx")   # doctest: +SKIP
>>> x = preprocess(uint8_images, record)                                 # doctest: +SKIP
>>> session.run(None, {"input": x})                                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import InputError

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


__all__ = ["Preprocessing", "preprocess"]
