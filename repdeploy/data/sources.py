"""Opening a data source by name: the built-in digits, an image folder, an .npy/.npz, or arrays.

`open_dataset` picks the reader (data.builtin, data.folders, data.arrays) and the default
normalisation for the source; a model's preprocessing record or explicit mean/std/resize
override those defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..preprocess import Preprocessing
from .arrays import array_dataset, as_numpy, load_array, open_npz
from .builtin import DIGITS_MEAN, DIGITS_STD, builtin_path, is_builtin
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, normalisation
from .folders import open_folder

SPLITS = ("train", "val")


def open_dataset(source: str | os.PathLike | None, *, split: str = "val", image_size: int,
                 channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, resize: int | None = None,
                 preprocessing: Preprocessing | None = None) -> ImageDataset:
    """Open a dataset for a model taking `channels` x `image_size` x `image_size` inputs.

    `preprocessing` (the model's own record, e.g. recorded.preprocessing_of(model_file)) feeds
    the images as the model was calibrated; `mean`/`std`/`resize` override single fields. Without
    either, mean/std default to the built-in digits' statistics for the built-in set, to the
    `mean`/`std` arrays of an .npz that carries them, and to the ImageNet ones otherwise.

    >>> ds = open_dataset("builtin", split="val", image_size=32)
    >>> len(ds), ds[0][0].shape
    (400, torch.Size([3, 32, 32]))
    """
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    if channels not in (1, 3):
        raise DataError(f"{channels} input channels not supported; models take 1 or 3")
    if preprocessing is not None:
        if preprocessing.channels != channels:
            raise DataError(f"the model's preprocessing record says {preprocessing.channel_order} input but the "
                            f"model takes {channels} channels; re-export the model")
        mean = preprocessing.mean if mean is None else mean
        std = preprocessing.std if std is None else std
        if resize is None:  # the record's resize ratio, at this input size
            resize = int(round(preprocessing.resize * image_size / preprocessing.input_size))
    if resize is not None and resize < image_size:
        raise DataError(f"--resize {resize} is smaller than the input size {image_size}; the centre crop needs "
                        f"resize >= {image_size}")
    if is_builtin(source):
        m, s = normalisation(mean, std, DIGITS_MEAN, DIGITS_STD, channels)
        return open_npz(builtin_path(), split, image_size, channels, m, s, name="builtin", resize=resize)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path} does not exist; give an image folder, a .npy/.npz file, or 'builtin'")
    if path.is_dir():
        m, s = normalisation(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
        return open_folder(path, split, image_size, channels, m, s, resize)
    if path.suffix == ".npz":
        return open_npz(path, split, image_size, channels, mean, std, name=str(path), resize=resize)
    if path.suffix == ".npy":
        m, s = normalisation(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
        images = load_array(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
        return array_dataset(str(path), images, None, None, image_size, channels, m, s, resize=resize)
    raise DataError(f"data {path}: unsupported file type {path.suffix!r}; use a folder, .npy or .npz")


def from_arrays(images, labels=None, *, image_size: int, channels: int = 3, name: str = "array (in memory)",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ImageDataset:
    """A dataset over in-memory images: a numpy array or torch tensor, (N,C,H,W), (N,H,W,C) or (N,H,W).

    Same rules as a .npy file: float arrays are model inputs already (only resized when their
    size differs), integer arrays are pixels (scaled to [0, 1], normalised with mean/std, ImageNet
    by default). `labels` (N integers) make it usable for evaluation.

    >>> ds = from_arrays(np.random.rand(8, 3, 32, 32).astype("float32"), image_size=32)
    >>> len(ds), ds.has_labels
    (8, False)
    """
    images = as_numpy(name, images)
    labels = None if labels is None else as_numpy(f"{name} labels", labels)
    m, s = normalisation(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
    return array_dataset(name, images, labels, None, image_size, channels, m, s)
