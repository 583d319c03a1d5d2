"""Real-size models with realistic activations, and the real photographs they were measured on.

A 32-px mini model proves nothing about a 224-px, 1000-class A0 or B1: its activation ranges,
logit margins and per-call overheads are all different. Tests and benchmarks that make a claim
about real models build them here, from the project's own specs:

- random weights (the builder's init), BN affine parameters drawn like a trained model's
  (`randomize_batchnorm`), then every BN's running statistics re-estimated on real photographs
  (cumulative averages over augmented crops), so each layer sees the activation distribution a
  photo produces rather than a made-up one;
- the photographs are the ones scikit-image ships (`skimage.data`, no download), cropped,
  flipped and resized as ImageNet training would, normalised with ImageNet's mean and std.

Everything is seeded: the same (arch, seed) gives the same model in every process.
Benchmarks import this module from tests/ (see benchmarks/*.py).
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Colour photographs, then grey ones (replicated to three channels). Only images that ship
# inside the scikit-image wheel: the others need a download, which this machine cannot make.
_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
           "immunohistochemistry", "retina", "colorwheel")
_GREY = ("camera", "coins", "moon", "page", "text", "clock", "grass", "gravel", "brick", "cell")


@lru_cache(maxsize=1)
def source_photos() -> tuple[Image.Image, ...]:
    """The shipped photographs as RGB PIL images (decoded once per process)."""
    import skimage.data

    images = []
    for name in _COLOUR + _GREY:
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        images.append(Image.fromarray(array[..., :3].astype(np.uint8)))
    return tuple(images)


def photo_crops(n: int, size: int = 224, seed: int = 0) -> list[Image.Image]:
    """`n` augmented crops: random photo, area 20-100 %, aspect 3/4-4/3, random flip, `size` px."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    crops = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        area = rng.uniform(0.2, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def photo_batch(n: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """`n` crops as one normalised float tensor (N, 3, size, size)."""
    arrays = np.stack([np.asarray(c, dtype=np.float32) / 255.0 for c in photo_crops(n, size, seed)])
    arrays = (arrays - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(arrays.transpose(0, 3, 1, 2).copy())


def write_photo_folder(directory: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """Write `n` crops as JPEG files into `directory` (a flat folder, as `--calib-data` takes)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(photo_crops(n, size, seed)):
        crop.save(directory / f"photo_{seed}_{i:04d}.jpg", quality=92)
    return directory


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> torch.nn.Module:
    """Replace every BN's running statistics by their average over `images` (BN recalibration).

    In train mode each BN normalises with the batch's own statistics, so the inputs of deeper
    layers follow what the photographs produce; momentum None makes the running figures an exact
    cumulative average over all batches.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(images), batch):
        model(images[start:start + batch])
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    return model


#: built models are kept here between runs (gitignored); a fresh clone computes them once
CACHE_DIR = Path(os.environ.get("REPDEPLOY_REALSIZE_CACHE",
                                Path(__file__).resolve().parents[1] / ".pytest_cache" / "realsize"))


def realistic_model(arch: str, seed: int = 0, *, num_classes: int = 1000, form: str = "train",
                    photos: int = 32, size: int = 224, zero_se_bias: bool = False) -> torch.nn.Module:
    """`arch` at real size: seeded init, trained-like BN affine, BN statistics from real photographs.

    `zero_se_bias`: every squeeze-excitation bias zeroed before the statistics are measured, as a
    checkpoint whose SE biases are all zero would have them (identical tensors the ONNX exporter
    merges: the D2se case).

    The state is cached on disk by its recipe (written atomically, so pytest-xdist workers that
    race on one entry each read a whole file).
    """
    torch.manual_seed(seed)
    model = randomize_batchnorm(build(get_spec(arch, num_classes), form), seed)
    if zero_se_bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".se." in name and name.endswith(".bias"):
                    p.zero_()
    cached = CACHE_DIR / f"{arch}-{form}-{num_classes}c-s{seed}-{photos}x{size}{'-zse' if zero_se_bias else ''}.pt"
    if cached.is_file():
        model.load_state_dict(torch.load(cached, weights_only=True))
        return model.eval()
    reestimate_batchnorm(model, photo_batch(photos, size, seed=1000 + seed))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".part")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, cached)
    return model.eval()
