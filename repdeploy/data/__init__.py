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
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import DataError
from .preprocess import Preprocessing, transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grey-level statistics of the built-in digits' train split (pixels scaled to [0, 1]), measured
# once with numpy over the 1,397 8x8 training images.
DIGITS_MEAN = (0.3058, 0.3058, 0.3058)
DIGITS_STD = (0.3761, 0.3761, 0.3761)
# ImageNet evaluation convention: resize to 256 for a 224 crop.
CROP_RATIO = 0.875
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
BUILTIN_NAMES = ("builtin", "digits")
#: Pillow modes of 16-bit (and 32-bit integer) greyscale images, e.g. 16-bit PNG scans.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
SPLITS = ("train", "val")

BatchLoader = Callable[[np.ndarray], torch.Tensor]


def builtin_path() -> Path:
    """Where the shipped digits archive lives."""
    return Path(__file__).resolve().parent / "assets" / "digits.npz"


@dataclass
class ImageDataset:
    """Images (preprocessed on access) with integer labels (-1 when the source has none).

    `x, y = dataset[i]` gives a float32 CHW tensor and an int; `dataset.batches(64)` yields
    NCHW float tensors and long label tensors.
    """

    source: str  # what the user named, for error messages and manifests
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    labels: np.ndarray  # int64, one per underlying item, -1 when unknown
    _load: BatchLoader = field(repr=False)
    indices: np.ndarray = field(default=None)  # type: ignore[assignment]  # view into the items
    resize: int | None = None  # shorter side before the centre crop (None: image_size)
    split: str | None = None  # the split actually read; None when the source has no splits
    value_range: tuple[float, float] = (0.0, 255.0)  # raw pixel values mapped to [0, 1] (uint16: 65535)

    @property
    def preprocessing(self) -> Preprocessing:
        """The record of how these images become model inputs (written beside the model)."""
        return Preprocessing(self.image_size, self.resize or self.image_size, tuple(self.mean), tuple(self.std),
                             "L" if self.channels == 1 else "RGB", value_range=tuple(self.value_range))

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return int(len(self.indices))

    @property
    def has_labels(self) -> bool:
        return bool(len(self.indices)) and bool((self.labels[self.indices] >= 0).all())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        item = self.indices[i]
        x = self._load(np.array([item]))
        return x[0], int(self.labels[item])

    def subset(self, positions: Sequence[int] | np.ndarray) -> "ImageDataset":
        """A view on some positions of this dataset (no data is copied or decoded)."""
        pos = np.asarray(positions, dtype=np.int64)
        return ImageDataset(self.source, self.image_size, self.channels, self.mean, self.std,
                            self.classes, self.labels, self._load, self.indices[pos], self.resize, self.split,
                            self.value_range)

    def batches(self, batch_size: int, *, limit: int | None = None, shuffle: bool = False,
                seed: int = 0, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x NCHW float32, y long) batches; `limit` caps the number of images.

        Shuffling is seeded (numpy Generator), so a run is reproducible from its seed alone.
        `skip` drops the first batches of that order without decoding them (resuming mid-epoch).
        """
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        order = self.indices
        if shuffle:
            order = order[np.random.default_rng(seed).permutation(len(order))]
        if limit is not None:
            order = order[: max(0, int(limit))]
        for start in range(max(0, skip) * batch_size, len(order), batch_size):
            items = order[start : start + batch_size]
            yield self._load(items), torch.from_numpy(self.labels[items].copy())

    def num_batches(self, batch_size: int, limit: int | None = None) -> int:
        n = len(self) if limit is None else min(len(self), max(0, int(limit)))
        return math.ceil(n / batch_size)

    def describe(self) -> dict:
        """A manifest record: where the data came from and how it was preprocessed."""
        return {"source": self.source, "images": len(self), "classes": len(self.classes),
                "has_labels": self.has_labels, "image_size": self.image_size,
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std),
                "split": self.split, "preprocessing": self.preprocessing.to_dict()}


def same_images(a: ImageDataset, b: ImageDataset) -> bool:
    """Whether two datasets draw on the same images (one source without separate splits, or the
    same split of it): calibrating on `a` then evaluating on `b` would flatter the INT8 accuracy."""
    if a.source != b.source:
        return False
    if a.split is not None and b.split is not None and a.split != b.split:
        return False
    return bool(np.intersect1d(a.indices, b.indices).size)


def open_dataset(source: str | os.PathLike | None, *, split: str = "val", image_size: int,
                 channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, resize: int | None = None,
                 preprocessing: Preprocessing | None = None) -> ImageDataset:
    """Open a dataset for a model taking `channels` x `image_size` x `image_size` inputs.

    `preprocessing` (the model's own record, e.g. preprocess.preprocessing_of(model_file)) feeds
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
    if source is None or str(source).lower() in BUILTIN_NAMES:
        m, s = _stats(mean, std, DIGITS_MEAN, DIGITS_STD, channels)
        return _open_npz(builtin_path(), split, image_size, channels, m, s, name="builtin", resize=resize)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path} does not exist; give an image folder, a .npy/.npz file, or 'builtin'")
    if path.is_dir():
        m, s = _stats(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
        return _open_folder(path, split, image_size, channels, m, s, resize)
    if path.suffix == ".npz":
        return _open_npz(path, split, image_size, channels, mean, std, name=str(path), resize=resize)
    if path.suffix == ".npy":
        m, s = _stats(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
        images = _load_array(path, lambda: np.load(path, mmap_mode="r", allow_pickle=False))
        return _from_arrays(str(path), images, None, None, image_size, channels, m, s, resize=resize)
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
    images = _as_numpy(name, images)
    labels = None if labels is None else _as_numpy(f"{name} labels", labels)
    m, s = _stats(mean, std, IMAGENET_MEAN, IMAGENET_STD, channels)
    return _from_arrays(name, images, labels, None, image_size, channels, m, s)


def _as_numpy(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}")


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
    if source is None or str(source).lower() in BUILTIN_NAMES:
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


# --- sources ---------------------------------------------------------------------------------


def _stats(mean, std, default_mean, default_std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m = tuple(float(v) for v in (mean if mean is not None else default_mean))
    s = tuple(float(v) for v in (std if std is not None else default_std))
    if len(m) == 1:
        m = m * channels
    if len(s) == 1:
        s = s * channels
    if len(m) < channels or len(s) < channels:
        raise DataError(f"mean/std need {channels} values, got {len(m)} and {len(s)}")
    m, s = m[:channels], s[:channels]
    if any(v <= 0 for v in s):
        raise DataError(f"std values must be positive, got {s}")
    return m, s


def _load_array(path: Path, load: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return load()
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"data {path} is not a readable numpy file ({exc}); re-save it with numpy.save") from exc


def _open_npz(path: Path, split: str, image_size: int, channels: int, mean, std, *, name: str,
              resize: int | None = None) -> ImageDataset:
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
    mean, std = _stats(mean if mean is not None else own_mean, std if std is not None else own_std,
                       IMAGENET_MEAN, IMAGENET_STD, channels)
    read_split = split if image_key in (f"{split}_images", f"x_{split}") else None
    return _from_arrays(name, images, labels, classes, image_size, channels, mean, std, resize=resize,
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
    from .progress import warn

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


def _from_arrays(name: str, images: np.ndarray, labels: np.ndarray | None, classes: list[str] | None,
                 image_size: int, channels: int, mean, std, resize: int | None = None,
                 split: str | None = None) -> ImageDataset:
    from .validate import MAX_CLASSES

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
        x = torch.from_numpy(np.ascontiguousarray(batch)).float()
        if layout == "NHW":
            x = x.unsqueeze(1)
        elif layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = _match_channels(name, x, channels)
        # float arrays are model inputs already: their producer normalised them
        return transform(x, record, already_scaled=is_float)

    return ImageDataset(name, image_size, channels, tuple(mean), tuple(std), classes, labels, load,
                        resize=record.resize, split=split, value_range=record.value_range)


def _match_channels(name: str, x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[1]
    if c == channels:
        return x
    if c == 4 and channels == 3:
        return x[:, :3]  # RGBA: drop alpha
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c in (3, 4) and channels == 1:
        # ITU-R 601 luma, as Pillow's "L" conversion uses.
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x[:, :3] * w).sum(1, keepdim=True)
    raise DataError(f"data {name}: {c}-channel images cannot feed a {channels}-channel model")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _open_folder(path: Path, split: str, image_size: int, channels: int, mean, std,
                 resize: int | None = None) -> ImageDataset:
    has_split = (path / split).is_dir()
    root = path / split if has_split else path
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    if class_dirs:
        classes = [d.name for d in class_dirs]
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            files += found
            labels += [label] * len(found)
    else:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        labels = [-1] * len(files)
    if not files:
        raise DataError(f"data {root} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                        "use one sub-folder per class or a flat folder of images")
    mean_a = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    mode = "RGB" if channels == 3 else "L"
    resize_to = resize or max(image_size, int(round(image_size / CROP_RATIO)))

    def load_one(p: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                high_bit = im.mode in HIGH_BIT_MODES
                if high_bit:
                    # convert("RGB") would clip 16-bit values at 255 (a 97 % white image): rescale
                    # by the 16-bit range and resize in float instead.
                    im = Image.fromarray(np.asarray(im, dtype=np.float32) / 65535.0)
                else:
                    im = im.convert(mode)
                w, h = im.size
                scale = resize_to / min(w, h)
                nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
                left, top = (nw - image_size) // 2, (nh - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                a = np.asarray(im, dtype=np.float32)
                a = a if high_bit else a / 255.0
        except Image.DecompressionBombError as exc:
            raise DataError(f"image {p} is too large to decode safely ({exc.args[0].split(' could')[0]}); "
                            "it may be a decompression bomb: remove it or shrink it") from exc
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"image {p} cannot be read ({exc}); remove or replace the file") from exc
        except MemoryError as exc:
            raise DataError(f"image {p} is too large to decode in memory; remove it or shrink it") from exc
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if a.shape[0] != channels:  # a 16-bit grey image feeding an RGB model
            a = np.repeat(a, channels, axis=0) if a.shape[0] == 1 else a[:channels]
        return (a - mean_a) / std_a

    def load(items: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([load_one(files[int(i)]) for i in items]).astype(np.float32))

    return ImageDataset(str(root), image_size, channels, tuple(mean), tuple(std), classes,
                        np.asarray(labels, dtype=np.int64), load, resize=resize_to, split=split if has_split else None)


__all__ = [
    "ImageDataset", "open_dataset", "same_images", "holdout_split", "open_train_val", "calibration_sample", "split_dataset", "builtin_path",
    "IMAGENET_MEAN", "IMAGENET_STD", "DIGITS_MEAN", "DIGITS_STD", "SPLITS",
]
