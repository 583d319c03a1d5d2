"""Array sources: `.npy` / `.npz` files and in-memory arrays or tensors, as `ImageDataset`s.

Images may be (N,H,W), (N,H,W,C) or (N,C,H,W). Integer arrays are pixels (scaled to [0, 1] by
their dtype's range, then normalised); float arrays are model inputs already and are only
resized when their size differs. Labels are checked to be class indices. A memory-mapped .npy
is read a batch of rows at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError
from ..pixels import to_input
from ..preprocess import Preprocessing
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, digest, normalisation


def as_numpy(name: str, value) -> np.ndarray:
    """A numpy view of an in-memory array or tensor (on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}")


def load_array(path: Path, load: Callable[[], np.ndarray]) -> np.ndarray:
    """`load()`, with a numpy file that cannot be read reported as a DataError naming `path`."""
    try:
        return load()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"data {path} is not a readable numpy file ({exc}); re-save it with numpy.save") from exc


def open_npz(path: Path, split: str, image_size: int, channels: int, mean, std, *, name: str,
             resize: int | None = None) -> ImageDataset:
    """The `split` of an .npz: `<split>_images` (or `images`), labels, classes and its own mean/std."""
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"data {path} is not a readable .npz archive ({exc}); re-save it with numpy.savez") from exc
    image_key = next((k for k in (f"{split}_images", f"x_{split}", "images", "x", "data") if k in keys), None)
    if image_key is None:
        raise DataError(f"data {path}: no '{split}_images' or 'images' array (found {sorted(keys)})")
    label_key = next((k for k in (f"{split}_labels", f"y_{split}", "labels", "y", "targets") if k in keys), None)
    try:
        images = archive[image_key]
        labels = archive[label_key] if label_key else None
        classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
        # An archive may carry its producer's normalisation (the shipped digits.npz does), so
        # the same arrays given as a file are fed as the built-in set is.
        own_mean = [float(v) for v in np.ravel(archive["mean"])] if "mean" in keys else None
        own_std = [float(v) for v in np.ravel(archive["std"])] if "std" in keys else None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"data {path}: array {image_key!r} cannot be read ({exc})") from exc
    mean, std = normalisation(mean if mean is not None else own_mean, std if std is not None else own_std,
                              IMAGENET_MEAN, IMAGENET_STD, channels)
    read_split = split if image_key in (f"{split}_images", f"x_{split}") else None
    return array_dataset(name, images, labels, classes, image_size, channels, mean, std, resize=resize,
                         split=read_split)


def _array_layout(name: str, images: np.ndarray) -> str:
    if images.ndim == 3:
        return "NHW"
    if images.ndim == 4:
        if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3, 4):
            return "NCHW"
        if images.shape[-1] in (1, 3, 4):
            return "NHWC"
        if images.shape[1] in (1, 3, 4):
            return "NCHW"
    raise DataError(f"data {name}: array of shape {tuple(images.shape)} is not (N,H,W), (N,H,W,C) or (N,C,H,W)")


def _pixel_scale(name: str, images: np.ndarray) -> float:
    """What an integer array's pixels are divided by to reach [0, 1]: its dtype's range.

    uint8 is 0..255 and uint16 0..65535 (16-bit scans); wider or signed integer dtypes say
    nothing about the range, so their values decide (8-bit or 16-bit). A range that looks wrong
    for the dtype is warned about, since it would give near-black inputs without any error.
    """
    from ..progress import warn

    kind, dtype = images.dtype.kind, images.dtype
    sample = np.asarray(images[: min(len(images), 512)])
    if kind == "u" and dtype.itemsize == 1:
        return 255.0
    if kind == "u" and dtype.itemsize == 2:
        if sample.size and int(sample.max()) <= 255:
            warn(f"data {name}: uint16 images whose first {len(sample)} only reach {int(sample.max())}: they are "
                 "scaled by 65535 (16-bit) and will be nearly black; if they are 8-bit values, save them as uint8")
        return 65535.0
    low, high = int(np.min(images)), int(np.max(images))
    if low < 0:
        raise DataError(f"data {name}: {dtype} images hold negative values ({low}); give pixels as uint8/uint16 "
                        "or preprocessed floats")
    if high <= 255:
        return 255.0
    if high <= 65535:
        warn(f"data {name}: {dtype} images reach {high}: taken as 16-bit pixels (scaled by 65535)")
        return 65535.0
    raise DataError(f"data {name}: {dtype} images reach {high}, beyond 16-bit pixels; give uint8/uint16 pixels "
                    "or preprocessed floats")


def array_dataset(name: str, images: np.ndarray, labels: np.ndarray | None, classes: list[str] | None,
                  image_size: int, channels: int, mean, std, resize: int | None = None,
                  split: str | None = None) -> ImageDataset:
    """An ImageDataset over an array of images, its layout, dtype and labels checked first."""
    from ..validate import MAX_CLASSES

    if images.ndim == 0:
        raise DataError(f"data {name} holds a single number, not images; save an (N,H,W) or (N,H,W,C) array")
    if images.size == 0 or len(images) == 0:
        raise DataError(f"data {name} holds no images")
    layout = _array_layout(name, images)
    if images.dtype.kind not in "uif":
        raise DataError(f"data {name}: images of dtype {images.dtype} are not numeric")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"data {name} contains NaN or Inf values; clean the array before using it")
    n = len(images)
    if labels is None:
        labels = np.full(n, -1, dtype=np.int64)
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise DataError(f"data {name}: labels must be {n} integers, got shape {labels.shape} dtype {labels.dtype}")
        if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
            raise DataError(f"data {name}: label {int(labels.max())} is not a class index")
        labels = labels.astype(np.int64)
        if labels.size and int(labels.min()) < -1:
            raise DataError(f"data {name}: label {int(labels.min())} is negative; labels are class indices 0..C-1")
        # A class list is built from the largest label: 2**62 would fill memory before any error.
        if labels.size and int(labels.max()) >= MAX_CLASSES:
            raise DataError(f"data {name}: label {int(labels.max())} implies more than {MAX_CLASSES} classes; "
                            "the labels are damaged or not class indices")
    if classes is not None and len(classes) > MAX_CLASSES:
        raise DataError(f"data {name}: {len(classes)} class names, more than {MAX_CLASSES}")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
    if (labels >= len(classes)).any():
        raise DataError(f"data {name}: label {int(labels.max())} outside the {len(classes)} classes")
    is_float = images.dtype.kind == "f"
    pixel_scale = 1.0 if is_float else _pixel_scale(name, images)
    record = Preprocessing(image_size, resize or image_size, tuple(mean), tuple(std), "L" if channels == 1 else "RGB",
                           value_range=(0.0, pixel_scale))

    def load(items: np.ndarray) -> torch.Tensor:
        batch = np.asarray(images[items])  # fancy indexing reads only these rows of a memmap
        if layout == "NCHW":
            batch = batch.transpose(0, 2, 3, 1)
        _check_channels(name, batch.shape[-1] if layout != "NHW" else 1, channels)
        # the one preprocessing math (pixels.py); float arrays are model inputs already: their
        # producer normalised them, so they are only resized
        return torch.from_numpy(to_input(list(batch), record, normalised=not is_float))

    def content(items: np.ndarray) -> list[bytes]:
        # the stored pixels (not the normalised inputs), so the same photos in two arrays match
        return [digest(np.ascontiguousarray(images[int(i)]).tobytes()) for i in items]

    return ImageDataset(name, image_size, channels, tuple(mean), tuple(std), classes, labels, load,
                        resize=record.resize, split=split, value_range=record.value_range, content_digest=content)


def _check_channels(name: str, c: int, channels: int) -> None:
    # pixels.py converts RGBA, grey and RGB into each other; nothing else can feed a model
    if c != channels and not (c == 4 and channels == 3) and not (c == 1 and channels == 3) \
            and not (c in (3, 4) and channels == 1):
        raise DataError(f"data {name}: {c}-channel images cannot feed a {channels}-channel model")
