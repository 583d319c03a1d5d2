"""What a service receives, as an image pixels.py can preprocess: a path, encoded bytes, a PIL
image or a uint8 array (H, W) / (H, W, C)."""

from __future__ import annotations

import io
import os

import numpy as np

from ..errors import DataError


def decode(image):
    """A PIL image (decoded now, file closed) or a uint8 array, from what a caller handed in."""
    if hasattr(image, "convert") and hasattr(image, "mode"):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise DataError(f"image array of dtype {image.dtype} and shape {image.shape}: give uint8 pixels, "
                            "(H, W) or (H, W, C)")
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(image)), "image bytes")
    if isinstance(image, (str, os.PathLike)):
        return _open(image, f"image {image}")
    raise DataError(f"cannot read an image from a {type(image).__name__}: give a path, bytes, a PIL image or a "
                    "uint8 array")


def _open(source, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            return im
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what} is too large to decode safely; shrink it") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{what} does not exist") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{what} is not a readable image ({exc})") from exc
