"""Calibration data in any form a user holds it: one adapter from what `quantize` is given to batches.

Accepted, as ModelOpt and ONNX Runtime users expect:
- a path (image folder, .npy/.npz) or "builtin": a seeded sample of `samples` images;
- a torch tensor or numpy array of images, (N,C,H,W) (or (N,H,W,C), (N,H,W)): the same seeded
  sample, with the .npy rules (float = already preprocessed model input, integers = pixels);
- an iterable of batches (a torch DataLoader, a list, a generator): each item an NCHW tensor or
  array, or a tuple/list whose first element is one ((images, labels) from a DataLoader). The
  first `samples` images are used, in order; nothing is decoded beyond them.

- an (images, labels) pair: its images (data/forms.py, the adapter `evaluate` shares).

A `forward_loop=callable(model)` is the last form; `calibrate` runs it directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..data import ImageDataset, as_dataset, calibration_sample
from ..data.forms import as_pair
from ..errors import DataError, InputError

ACCEPTED = ("a path (image folder, .npy/.npz) or 'builtin', a tensor or array of images (N,C,H,W), "
            "an iterable of batches (e.g. a torch DataLoader), or forward_loop=callable(model)")


@dataclass
class CalibrationData:
    """Where calibration images come from and how to stream them as NCHW float batches."""

    source: str
    _batches: Callable[[], Iterator[torch.Tensor]] = field(repr=False)
    total_batches: int | None = None
    dataset: ImageDataset | None = field(default=None, repr=False)  # paths and arrays: re-readable
    info: dict = field(default_factory=dict)

    def batches(self) -> Iterator[torch.Tensor]:
        return self._batches()

    def describe(self) -> dict:
        """The record calib.json keeps about the data."""
        return self.dataset.describe() if self.dataset is not None else {"source": self.source, **self.info}


def open_calibration_data(calib_data: Any, *, samples: int, seed: int, image_size: int, channels: int,
                          batch_size: int, mean=None, std=None) -> CalibrationData:
    """Turn `calib_data` (see the module docstring) into a `CalibrationData` for `calibrate`.

    >>> data = open_calibration_data(torch.randn(16, 3, 32, 32), samples=8, seed=0, image_size=32,
    ...                              channels=3, batch_size=4)
    >>> [x.shape[0] for x in data.batches()]
    [4, 4]
    """
    if samples < 1:
        raise InputError(f"calib_samples must be >= 1, got {samples}")
    # Everything but a stream of batches is a dataset to draw the seeded sample from.
    if isinstance(calib_data, (str, os.PathLike, ImageDataset, torch.Tensor, np.ndarray)) or as_pair(calib_data):
        dataset = as_dataset(calib_data, split="train", image_size=image_size, channels=channels, mean=mean, std=std,
                             what="calib_data")
        return from_dataset(calibration_sample(dataset, samples, seed), batch_size)
    if isinstance(calib_data, Iterable) and not isinstance(calib_data, (bytes, dict)):
        name = type(calib_data).__name__
        return CalibrationData(
            source=f"{name} (in memory)",
            _batches=lambda: _stream(calib_data, name, samples, image_size, channels),
            info={"kind": "iterable of batches", "max_images": samples},
        )
    raise InputError(f"calib_data of type {type(calib_data).__name__} is not calibration data; give {ACCEPTED}")


def from_dataset(dataset: ImageDataset, batch_size: int) -> CalibrationData:
    """Batches of an image dataset (a path or arrays already opened), for `calibrate`."""
    return CalibrationData(source=dataset.source, _batches=lambda: (x for x, _ in dataset.batches(batch_size)),
                           total_batches=dataset.num_batches(batch_size), dataset=dataset)


def _stream(batches: Iterable, name: str, samples: int, image_size: int, channels: int) -> Iterator[torch.Tensor]:
    taken = 0
    for i, item in enumerate(batches):
        if isinstance(item, (tuple, list)) and item:
            item = item[0]  # (images, labels) from a DataLoader or a list of pairs
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise DataError(f"calib_data {name}: batch {i} is a {type(item).__name__}; each batch must be an "
                            "NCHW tensor or array, or an (images, labels) pair")
        if item.dim() == 3:
            item = item.unsqueeze(0)  # a single CHW image
        if item.dim() != 4 or item.shape[1] != channels or tuple(item.shape[-2:]) != (image_size, image_size):
            raise DataError(f"calib_data {name}: batch {i} has shape {tuple(item.shape)}; this model takes "
                            f"(N, {channels}, {image_size}, {image_size}) preprocessed float inputs")
        if not item.dtype.is_floating_point:
            raise DataError(f"calib_data {name}: batch {i} is {item.dtype}; give preprocessed float inputs "
                            "(normalised as for training), not raw pixels")
        item = item[: samples - taken].float()
        taken += int(item.shape[0])
        yield item
        if taken >= samples:
            return
