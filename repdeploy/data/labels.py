"""Which class names a model's ONNX records: one rule for export, quantize, qat and pipeline.

In order: a `--labels FILE` (one name per line), the names the model file already records
(a fused.pt's `extra["class_names"]`, an ONNX's metadata), the class folders of an ImageFolder or
the classes of an .npz the model is calibrated or evaluated on, and for a built-in zoo model the
digits it was trained on. Names that do not number one per logit are not used, except from a
labels file, which is refused then (a user's list that does not fit is a mistake to report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..metadata import check_class_names, read_labels


def class_names_for(num_classes: int, *, labels: str | Path | None = None, recorded: Sequence[str] | None = None,
                    datasets: Sequence = (), model_path: str | Path | None = None) -> list[str] | None:
    """The class names to record for a model with `num_classes` logits (None when nothing names them)."""
    if labels is not None:
        return check_class_names(read_labels(labels), num_classes, f"--labels {labels}")
    candidates = [recorded] + [getattr(d, "classes", None) for d in datasets if d is not None]
    if model_path is not None:
        from ..zoo import is_zoo_path

        if is_zoo_path(model_path):
            from .builtin import builtin_classes

            candidates.append(builtin_classes())
    for names in candidates:
        if names and len(names) == num_classes:
            return [str(n) for n in names]
    return None


def default_preprocessing(model_path: str | Path | None, input_size: int, channels: int):
    """The record a model with none of its own is fed with by `eval` and `quantize`: a zoo model the
    built-in digits' (it was trained on them), any other the image-folder default (ImageNet mean and
    std, shorter side input_size / 0.875, centre crop). Export writes it, so no ONNX goes without one."""
    from ..preprocess import Preprocessing
    from .dataset import IMAGENET_MEAN, IMAGENET_STD, normalisation
    from .folders import CROP_RATIO

    if model_path is not None:
        from ..zoo import is_zoo_path

        if is_zoo_path(model_path):
            from .sources import open_dataset

            return open_dataset("builtin", split="val", image_size=input_size, channels=channels).preprocessing
    mean, std = normalisation(None, None, IMAGENET_MEAN, IMAGENET_STD, channels)
    return Preprocessing(input_size, max(input_size, int(round(input_size / CROP_RATIO))), mean, std,
                         "L" if channels == 1 else "RGB")
