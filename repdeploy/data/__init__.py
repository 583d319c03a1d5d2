"""Datasets for training, calibration and evaluation: one `ImageDataset` over every source.

Sources:
- `None`, "builtin" or "digits": the built-in UCI handwritten digits (repdeploy/assets/digits.npz,
  8x8 grey, 10 classes, fixed train/val split), upsampled bilinearly to the model's input size and
  replicated to 3 channels;
- a directory: ImageFolder layout (one sub-folder per class, labels = sorted folder names) or a flat
  folder of images (no labels, label -1). If the directory holds a sub-folder named like the split
  ("train", "val"), that sub-folder is used;
- a `.npy` / `.npz` file of images (N,H,W), (N,H,W,C) or (N,C,H,W), with optional labels.

Preprocessing is one record (preprocess.Preprocessing: input size, resize and crop, mean, std,
channel order, value range), readable as `dataset.preprocessing` and written beside every model.
Defaults, ImageNet style with Pillow and numpy only (no torchvision): for image files the shorter
side is resized to image_size / 0.875, then centre-cropped to image_size; arrays are resized
straight to image_size; pixels are scaled to [0, 1] and normalised with mean/std: the digits'
own for the built-in set, the `mean`/`std` arrays an .npz carries (the shipped digits.npz does),
else ImageNet's. A `preprocessing` record (the model's own) or explicit mean/std/resize override
those defaults. Float arrays are taken as already-preprocessed model inputs and used as they are
(only resized when their size differs).

Folders stream from disk one image at a time; nothing decodes the whole folder up front.

The package follows those steps: `dataset` (the `ImageDataset` record), `sources` (opening a source
by name) over `builtin`, `folders` and `arrays`, `forms` (every form an API caller may hold data in:
path, array, (images, labels), iterable, DataLoader) and `splits` (seeded samples, holdouts, splits).
The names below are its public interface.
"""

from __future__ import annotations

from .builtin import DIGITS_MEAN, DIGITS_STD, builtin_path
from .dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, same_images
from .forms import as_dataset
from .sources import SPLITS, from_arrays, open_dataset
from .splits import calibration_sample, holdout_split, open_train_val, split_dataset

__all__ = [
    "ImageDataset", "open_dataset", "from_arrays", "as_dataset", "same_images", "holdout_split", "open_train_val",
    "calibration_sample", "split_dataset", "builtin_path",
    "IMAGENET_MEAN", "IMAGENET_STD", "DIGITS_MEAN", "DIGITS_STD", "SPLITS",
]
