"""Image-folder sources: ImageFolder layout (one sub-folder per class) or a flat folder of images.

Images are decoded with Pillow one at a time as batches are drawn (nothing decodes the whole
folder up front) and preprocessed by pixels.py: the shorter side is resized to image_size / 0.875
(or `resize`), centre-cropped to image_size, scaled to [0, 1] (16-bit greyscale by 65535) and
normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..pixels import to_input
from ..preprocess import Preprocessing
from .dataset import ImageDataset, digest

# ImageNet evaluation convention: resize to 256 for a 224 crop.
CROP_RATIO = 0.875
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _class_index(name: str) -> int | None:
    from ..validate import MAX_CLASSES

    return int(name) if name.isdigit() and int(name) < MAX_CLASSES else None


def check_class_match(dataset, num_classes: int, model: str) -> None:
    """Refuse class folders whose labels would be matched to `model`'s classes by position only.

    Folders named by class index carry their label; folders with other names are labelled by
    sorted position, which is the model's class order only when all `num_classes` are there. One
    missing folder would shift every label after it (8 % top-1 instead of 35 %, and no warning).
    """
    source = Path(str(dataset.source))
    if not source.is_dir() or not dataset.classes:
        return
    if all(_class_index(c) is not None for c in dataset.classes):
        if len(dataset.classes) > num_classes:
            raise DataError(f"data {source} has a class folder {dataset.classes[-1]} but {model} predicts only "
                            f"{num_classes} classes (0..{num_classes - 1}); evaluate on the model's own classes")
        return
    if len(dataset.classes) != num_classes:
        raise DataError(f"data {source} has {len(dataset.classes)} class folders but {model} predicts {num_classes} "
                        "classes; folders are matched to classes by name: name them by class index "
                        f"(0..{num_classes - 1}), or give all {num_classes} (their sorted order is the class order)")


def open_folder(path: Path, split: str, image_size: int, channels: int, mean, std,
                resize: int | None = None) -> ImageDataset:
    """An ImageDataset over an image folder (or its `split` sub-folder), decoded as batches are drawn."""
    has_split = (path / split).is_dir()
    root = path / split if has_split else path
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    if class_dirs:
        # Classes are matched by name, never by position alone: folders named by class index
        # (0, 1, ..., 9) keep that index when one of them is missing; other names take their sorted
        # position, which only holds when every class is present (check_class_match).
        by_index = all(_class_index(d.name) is not None for d in class_dirs)
        if by_index:
            class_dirs = sorted(class_dirs, key=lambda d: _class_index(d.name))
            classes = [str(i) for i in range(_class_index(class_dirs[-1].name) + 1)]
        else:
            classes = [d.name for d in class_dirs]
        for position, d in enumerate(class_dirs):
            label = _class_index(d.name) if by_index else position
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            files += found
            labels += [label] * len(found)
    else:
        files = sorted(p for p in root.iterdir() if _is_image(p))
        labels = [-1] * len(files)
    if not files:
        raise DataError(f"data {root} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); "
                        "use one sub-folder per class or a flat folder of images")
    resize_to = resize or max(image_size, int(round(image_size / CROP_RATIO)))
    record = Preprocessing(image_size, resize_to, tuple(mean), tuple(std), "RGB" if channels == 3 else "L")

    def load_one(p: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                im.load()
                return to_input(im, record)[0]  # the one preprocessing math (pixels.py)
        except Image.DecompressionBombError as exc:
            raise DataError(f"image {p} is too large to decode safely ({exc.args[0].split(' could')[0]}); "
                            "it may be a decompression bomb: remove it or shrink it") from exc
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"image {p} cannot be read ({exc}); remove or replace the file") from exc
        except MemoryError as exc:
            raise DataError(f"image {p} is too large to decode in memory; remove it or shrink it") from exc

    def load(items: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([load_one(files[int(i)]) for i in items]).astype(np.float32))

    return ImageDataset(str(root), image_size, channels, tuple(mean), tuple(std), classes,
                        np.asarray(labels, dtype=np.int64), load, resize=resize_to, split=split if has_split else None,
                        content_digest=lambda items: [digest(files[int(i)].read_bytes()) for i in items],
                        content_size=lambda items: [files[int(i)].stat().st_size for i in items])
