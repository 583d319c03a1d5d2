"""The preprocessing record's math, written once, in numpy and Pillow (no torch).

Every path that turns images into model inputs calls this module: image folders and arrays for
calibration, evaluation and training (data/), the public `preprocess`, and the torch-free serving
runtime (serving/). So a service feeds a model bit for bit as repdeploy calibrated and evaluated it.

The steps, as `preprocess.Preprocessing` records them:
  1. channels: grey or RGB as `channel_order` says (Pillow's conversion for images, ITU-R 601 luma in
     float for arrays; grey is replicated for a 3-channel model, alpha dropped);
  2. resize so the shorter side is `resize` (bilinear, antialiased when shrinking: Pillow's filter,
     in float32 per channel, so no step rounds to whole grey levels), then centre-crop
     `input_size` square;
  3. scale the pixel range to [0, 1] (8-bit images by 255, 16-bit images by 65535, arrays by the
     record's `value_range`), subtract `mean`, divide by `std`; NCHW float32.

Steps 1-2 alone, rounded to whole levels (`to_pixels`), give the uint8 NHWC batch a model with
preprocessing inside its graph takes (export --input-format uint8-nhwc); step 3 is then the
graph's own Cast/Sub/Div. That rounding (at most half a grey level, only where a resize happened)
is the one difference between feeding such a graph and feeding the float graph.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .errors import DataError

#: Pillow modes of 16-bit (and 32-bit integer) greyscale images, e.g. 16-bit PNG scans.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: ITU-R 601 luma, the weights of Pillow's "L" conversion (for float pixels, which Pillow cannot convert).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "mode")


def split_images(images) -> list:
    """One PIL image, a list of images or arrays, or an array of one or many images -> a list of
    single images (PIL images or (H, W[, C]) arrays)."""
    if _is_pil(images):
        return [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("preprocess: no images given")
        return [im if _is_pil(im) else _one_array(np.asarray(im)) for im in images]
    a = np.asarray(images)
    if a.dtype.kind not in "uif":
        raise DataError(f"preprocess: images of dtype {a.dtype} are not pixel values")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return [a]  # one image: (H, W) or (H, W, C)
    if a.ndim == 3:
        return list(a)  # (N, H, W) grey
    if a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3):
            return list(a)  # (N, H, W, C)
        return list(a.transpose(0, 2, 3, 1))  # (N, C, H, W)
    raise DataError(f"preprocess: array of shape {a.shape} is not (H,W), (H,W,C), (N,H,W) or (N,H,W,C)")


def _one_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "uif":
        raise DataError(f"preprocess: images of dtype {a.dtype} are not pixel values")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # one (C, H, W) image
    if a.ndim not in (2, 3):
        raise DataError(f"preprocess: image of shape {a.shape} is not (H,W) or (H,W,C)")
    return a


def image_array(image, channels: int, value_range: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float]]:
    """(H, W, channels) pixels (uint8 for 8-bit, else float32) and the range that maps them to [0, 1]."""
    if _is_pil(image):
        if image.mode in HIGH_BIT_MODES:
            # convert("RGB") would clip 16-bit values at 255 (a 97 % white image): keep them as float
            a = np.asarray(image, dtype=np.float32)[..., None]
            return _match_channels(a, channels), (0.0, 65535.0)
        a = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        return (a[..., None] if a.ndim == 2 else a), (0.0, 255.0)
    a = image if image.ndim == 3 else image[..., None]
    if a.dtype != np.uint8:
        a = a.astype(np.float32, copy=False)
    return _match_channels(a, channels), value_range


def _match_channels(a: np.ndarray, channels: int) -> np.ndarray:
    c = a.shape[-1]
    if c == 4:
        a, c = a[..., :3], 3  # RGBA: drop alpha
    if c == channels:
        return a
    if c == 1 and channels == 3:
        return np.repeat(a, 3, axis=-1)
    if c == 3 and channels == 1:
        return (a.astype(np.float32) @ LUMA)[..., None]
    raise DataError(f"preprocess: {c}-channel images cannot feed a {channels}-channel model")


def resize_crop(a: np.ndarray, size: int, resize: int) -> np.ndarray:
    """Shorter side to `resize` (bilinear, Pillow's filter), then the centre `size` x `size` crop."""
    from PIL import Image

    h, w = a.shape[:2]
    if (h, w) == (size, size) and resize == size:
        return a
    scale = resize / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    if (nh, nw) != (h, w):
        a = a.astype(np.float32, copy=False)
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F").resize(
            (nw, nh), Image.Resampling.BILINEAR)) for c in range(a.shape[-1])]
        a = np.stack(planes, axis=-1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return a[top : top + size, left : left + size]


def normalise(a: np.ndarray, value_range: tuple[float, float], mean, std) -> np.ndarray:
    """(H, W, C) pixels -> (C, H, W) float32: pixel range to [0, 1], then (x - mean) / std."""
    lo, hi = value_range
    x = (a.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _cropped(images, record) -> Iterable[tuple[np.ndarray, tuple[float, float], bool]]:
    for image in split_images(images):
        eight_bit = image.mode not in HIGH_BIT_MODES if _is_pil(image) else image.dtype == np.uint8
        a, value_range = image_array(image, record.channels, tuple(record.value_range))
        yield resize_crop(a, record.input_size, record.resize), value_range, eight_bit


def to_input(images, record, *, normalised: bool = True) -> np.ndarray:
    """Images -> the model's float32 NCHW input (steps 1-3). `normalised=False`: float pixels that
    are model inputs already (their producer normalised them) are only resized and cropped."""
    batch = []
    for a, value_range, _ in _cropped(images, record):
        batch.append(normalise(a, value_range, record.mean, record.std) if normalised
                     else np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
    return np.stack(batch)


def to_pixels(images, record) -> np.ndarray:
    """Images -> the uint8 NHWC batch (steps 1-2) that a graph with preprocessing inside it takes."""
    batch = []
    for a, value_range, eight_bit in _cropped(images, record):
        if not eight_bit or value_range != (0.0, 255.0):
            raise DataError("preprocess: a uint8-input model takes 8-bit images (PIL, files or uint8 arrays); "
                            f"got {a.dtype} pixels in the range {value_range}")
        batch.append(a if a.dtype == np.uint8 else np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return np.stack(batch)
