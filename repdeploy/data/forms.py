"""Data in any form a user holds it, as one `ImageDataset`: the adapter every API function shares.

`evaluate`, `quantize` (calibration and eval data) and `qat` take the same forms (issue 22):
- a path (image folder, .npy/.npz) or "builtin";
- an `ImageDataset` (what `open_dataset` / `from_arrays` return);
- a torch tensor or numpy array of images (N,C,H,W), (N,H,W,C) or (N,H,W): no labels;
- an (images, labels) pair of tensors or arrays;
- an iterable of batches, such as a torch DataLoader: each an images tensor/array or an
  (images, labels) pair, read once into memory.

In-memory images follow the .npy rules (float: preprocessed model inputs; integers: pixels).
Calibration streams iterables instead of holding them (quant/calib_data.py); every other form
comes through here.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import DataError, InputError
from .dataset import ImageDataset
from .sources import from_arrays, open_dataset

ACCEPTED = ("a path (image folder, .npy/.npz) or 'builtin', an ImageDataset, a tensor or array of images "
            "(N,C,H,W), an (images, labels) pair, or an iterable of batches such as a torch DataLoader")


def is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def as_pair(data: Any) -> tuple[Any, Any] | None:
    """(images, labels) when `data` is such a pair: images with a batch axis, one label each."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(is_array(v) for v in data):
        images, labels = data
        if images.ndim >= 3 and labels.ndim == 1 and len(images) == len(labels):
            return images, labels
    return None


def read_batches(data: Iterable, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) from an iterable of image batches or (images, labels) batches."""
    xs, ys = [], []
    for i, item in enumerate(data):
        pair = isinstance(item, (tuple, list)) and len(item) >= 2 and is_array(item[0])
        images = item[0] if pair else item
        if not is_array(images):
            raise DataError(f"{what}: batch {i} is a {type(item).__name__}; give image batches or "
                            "(images, labels) batches")
        xs.append(torch.as_tensor(images))
        ys.append(torch.as_tensor(item[1]).reshape(-1) if pair else None)
    if not xs:
        raise DataError(f"{what} yielded no batches")
    if any(y is None for y in ys):
        return torch.cat(xs), None
    return torch.cat(xs), torch.cat(ys)


def in_memory_arrays(data: Any, what: str) -> tuple[Any, Any]:
    """(images, labels or None) of an in-memory form: an array, a pair or an iterable of batches."""
    if is_array(data):
        return data, None
    pair = as_pair(data)
    if pair is not None:
        return pair
    if isinstance(data, Iterable) and not isinstance(data, (bytes, dict)):
        return read_batches(data, what)
    raise InputError(f"{what} of type {type(data).__name__} is not image data; give {ACCEPTED}")


def as_dataset(data: Any, *, image_size: int, channels: int = 3, split: str = "val", what: str = "data",
               mean=None, std=None, resize: int | None = None, preprocessing=None) -> ImageDataset:
    """`data` in any accepted form (module docstring) as an ImageDataset at `image_size`.

    >>> ds = as_dataset((torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])), image_size=32)
    >>> len(ds), ds.has_labels
    (4, True)
    """
    if isinstance(data, ImageDataset):
        return data
    if data is None or isinstance(data, (str, os.PathLike)):
        return open_dataset(data, split=split, image_size=image_size, channels=channels, mean=mean, std=std,
                            resize=resize, preprocessing=preprocessing)
    images, labels = in_memory_arrays(data, what)
    return from_arrays(images, labels, image_size=image_size, channels=channels, mean=mean, std=std,
                       name=f"{type(data).__name__} (in memory)")
