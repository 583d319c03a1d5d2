"""The dataset record every source becomes: `ImageDataset` (images preprocessed on access, labels).

Also what all sources share: the normalisation statistics (`normalisation`, ImageNet's by
default) and `same_images`, which tells whether two datasets draw on the same images, by
content: a copy of the calibration photos given as eval data is the same images under another
path.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..preprocess import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BatchLoader = Callable[[np.ndarray], torch.Tensor]
#: per item: a digest of its content (the file's bytes, or the array row's raw pixels)
ContentDigest = Callable[[np.ndarray], list[bytes]]
#: per item: a cheap number that equal contents share (a file's size), to skip most digests
ContentSize = Callable[[np.ndarray], list[int]]


def digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


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
    content_digest: ContentDigest | None = field(default=None, repr=False)
    content_size: ContentSize | None = field(default=None, repr=False)

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
                            self.value_range, self.content_digest, self.content_size)

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
    """Whether two datasets share an image: calibrating on `a` then evaluating on `b` would
    flatter the INT8 accuracy. The same items of one source count, and so does the same content
    under another path (a copied folder, the same array passed twice): file bytes for image
    files, raw pixels for arrays, compared by digest."""
    if a.source == b.source and not (a.split is not None and b.split is not None and a.split != b.split):
        if np.intersect1d(a.indices, b.indices).size:
            return True
    return shares_content(a, b)


def shares_content(a: ImageDataset, b: ImageDataset, chunk: int = 256) -> bool:
    """Whether any item of `a` has the content of an item of `b`.

    Where both sources know a cheap size per item (files), only items whose size occurs on both
    sides are read and hashed, so an eval folder of 50,000 JPEGs costs a directory's stat calls.
    """
    if a.content_digest is None or b.content_digest is None or not len(a) or not len(b):
        return False
    ia, ib = a.indices, b.indices
    if a.content_size is not None and b.content_size is not None:
        sa, sb = np.asarray(a.content_size(ia)), np.asarray(b.content_size(ib))
        common = np.intersect1d(sa, sb)
        ia, ib = ia[np.isin(sa, common)], ib[np.isin(sb, common)]
        if not len(ia):
            return False
    (small, i_small), (large, i_large) = sorted(((a, ia), (b, ib)), key=lambda pair: len(pair[1]))
    seen = set(small.content_digest(i_small))
    return any(seen.intersection(large.content_digest(i_large[start:start + chunk]))
               for start in range(0, len(i_large), chunk))


def normalisation(mean, std, default_mean, default_std, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: the given values, else the defaults; one value serves every channel."""
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
