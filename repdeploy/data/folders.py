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
from .dataset import ImageDataset

# ImageNet evaluation convention: resize to 256 for a 224 crop.
CROP_RATIO = 0.875
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


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
                        np.asarray(labels, dtype=np.int64), load, resize=resize_to, split=split if has_split else None)
