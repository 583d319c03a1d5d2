"""Seeded subsets of a dataset: calibration samples, holdouts, and train/val splits.

The same (dataset, n, seed) always gives the same images, so calibration, the fallback holdout
and training runs are reproducible from their seed alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .builtin import is_builtin
from .dataset import ImageDataset
from .sources import open_dataset


def calibration_sample(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """A seeded random subset of `n` images (all of them when the set is smaller).

    The same (dataset, n, seed) always gives the same images, so calibration is reproducible.
    """
    if n < 1:
        raise DataError(f"calibration sample size must be >= 1, got {n}")
    if len(dataset) == 0:
        raise DataError(f"data {dataset.source} is empty")
    n = min(n, len(dataset))
    positions = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    return dataset.subset(positions)


def holdout_split(dataset: ImageDataset, n: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Seeded (rest, holdout) with `n` images held out: at most a quarter of the set, at least one,
    so the rest still calibrates. The two never share an image."""
    total = len(dataset)
    if total < 2:
        raise DataError(f"data {dataset.source}: {total} image(s) are too few to hold some out; give more images")
    k = max(1, min(int(n), total // 4))
    perm = np.random.default_rng(seed + 1).permutation(total)  # another stream than calibration_sample's
    return dataset.subset(np.sort(perm[k:])), dataset.subset(np.sort(perm[:k]))


def split_dataset(dataset: ImageDataset, val_fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Seeded (train, val) split of one dataset, for sources that come without a val split."""
    n = len(dataset)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise DataError(f"data {dataset.source}: {n} images are too few to hold out {val_fraction:.0%} for validation")
    perm = np.random.default_rng(seed).permutation(n)
    return dataset.subset(np.sort(perm[n_val:])), dataset.subset(np.sort(perm[:n_val]))


def open_train_val(source: str | os.PathLike | None, *, image_size: int, channels: int = 3,
                   val_source: str | os.PathLike | None = None, val_fraction: float = 0.1,
                   seed: int = 0, **preprocessing) -> tuple[ImageDataset, ImageDataset]:
    """Training and validation sets from one source (or two).

    The built-in set, `.npz` files with train_/val_ arrays and folders with train/ and val/
    sub-folders bring their own split; otherwise `val_fraction` of the training images is held
    out (seeded). `val_source` overrides the validation set. `preprocessing` keywords (mean,
    std, resize, preprocessing) go to both `open_dataset` calls.
    """
    train = open_dataset(source, split="train", image_size=image_size, channels=channels, **preprocessing)
    if val_source is not None:
        val = open_dataset(val_source, split="val", image_size=image_size, channels=channels, **preprocessing)
    elif _has_own_val_split(source):
        val = open_dataset(source, split="val", image_size=image_size, channels=channels, **preprocessing)
    else:
        train, val = split_dataset(train, val_fraction, seed)
    if val.has_labels and train.classes and val.classes != train.classes:
        raise DataError(f"validation data {val.source} has classes {val.classes[:5]}... but training data "
                        f"{train.source} has {train.classes[:5]}...; use the same class folders")
    return train, val


def _has_own_val_split(source: str | os.PathLike | None) -> bool:
    if is_builtin(source):
        return True
    path = Path(source)
    if path.is_dir():
        return (path / "train").is_dir() and (path / "val").is_dir()
    if path.suffix == ".npz":
        try:
            keys = set(np.load(path, allow_pickle=False).files)
        except (OSError, ValueError, EOFError):
            return False
        return "train_images" in keys and "val_images" in keys
    return False
