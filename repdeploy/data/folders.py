"""Image-folder sources: ImageFolder layout (one sub-folder per class) or a flat folder of images.

Images are decoded with Pillow one at a time as batches are drawn (nothing decodes the whole
folder up front): the shorter side is resized to image_size / 0.875 (or `resize`), centre-cropped
to image_size, scaled to [0, 1] (16-bit greyscale by 65535) and normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset, digest

# ImageNet evaluation convention: resize to 256 for a 224 crop.
CROP_RATIO = 0.875
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
#: Pillow modes of 16-bit (and 32-bit integer) greyscale images, e.g. 16-bit PNG scans.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


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
                        np.asarray(labels, dtype=np.int64), load, resize=resize_to, split=split if has_split else None,
                        content_digest=lambda items: [digest(files[int(i)].read_bytes()) for i in items],
                        content_size=lambda items: [files[int(i)].stat().st_size for i in items])
