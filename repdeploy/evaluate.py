"""Accuracy of any runner on a labelled dataset (agreement and SQNR between logits: tolerance.py).

Accuracies are in percent (0-100) because the accuracy gate and the report speak in absolute
top-1 points.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import DataError
from .runtime.base import Runner
from .tolerance import sqnr_db, top1_agreement  # noqa: F401  (the one definition; re-exported)


@dataclass
class Accuracy:
    """Top-1 / top-5 (percent) of one model on one dataset."""

    model: str
    engine: str
    data: str
    images: int
    top1: float
    top5: float | None  # None when the model has fewer than 5 classes
    seconds: float
    logits: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("logits")
        d.pop("labels")
        return d


def open_eval_data(runner: Runner, source, *, split: str = "val", preprocessing=None, mean=None, std=None,
                   resize: int | None = None):
    """`source` in any data form (data/forms.py: path, 'builtin', tensor or array, (images,
    labels), iterable of batches, DataLoader) as a dataset at the runner's input size.

    `preprocessing` is the model's own record (recorded.preprocessing_of(model_file)), so the
    images are fed as the model was calibrated; mean/std/resize override single fields.
    """
    from .data import ImageDataset, as_dataset

    if isinstance(source, ImageDataset):
        return source
    meta = runner.get_input_metadata()
    if meta.image_size is None:
        raise DataError(f"{runner.name}: cannot tell its input size from shape {meta.shape}")
    return as_dataset(source, split=split, image_size=meta.image_size, channels=meta.channels or 3, what="eval data",
                      preprocessing=preprocessing, mean=mean, std=std, resize=resize)


def collect_logits(runner: Runner, dataset, *, batch_size: int = 64, limit: int | None = None,
                   description: str = "evaluating") -> tuple[np.ndarray, np.ndarray]:
    """Run every (or the first `limit`) image through an active runner: (logits, labels)."""
    from .progress import track

    outs, labels = [], []
    for x, y in track(dataset.batches(batch_size, limit=limit), description, dataset.num_batches(batch_size, limit)):
        outs.append(runner.infer(x.numpy()))
        labels.append(y.numpy())
    if not outs:
        raise DataError(f"data {dataset.source} has no images to evaluate")
    return np.concatenate(outs), np.concatenate(labels)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows have their label among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def accuracy_from_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float | None]:
    """(top-1 %, top-5 % or None when there are fewer than 5 classes)."""
    n = len(labels)
    top1 = 100.0 * topk_correct(logits, labels, 1) / n
    top5 = 100.0 * topk_correct(logits, labels, 5) / n if logits.shape[1] >= 5 else None
    return top1, top5


def evaluate(runner: Runner, dataset, *, batch_size: int = 64, limit: int | None = None,
             keep_logits: bool = False) -> Accuracy:
    """Top-1 and top-5 of an active runner on labelled data, in any form `quantize` takes too
    (an opened dataset, a path or 'builtin', an (images, labels) pair, a DataLoader, ...).

    >>> with open_runner("model.onnx", "ort") as r:                       # doctest: +SKIP
    ...     acc = evaluate(r, (images, labels))
    """
    from .errors import InputError

    if not isinstance(runner, Runner):
        raise InputError(f"evaluate: runner must be an active repdeploy Runner (from open_runner), not "
                         f"{type(runner).__name__}")
    from . import validate

    validate.integer("batch_size", batch_size, low=1, high=4096, allow_none=False)
    validate.integer("limit", limit, low=1)
    dataset = open_eval_data(runner, dataset)
    if not dataset.has_labels:
        raise DataError(f"data {dataset.source} has no labels; evaluation needs a class-folder layout or labels in the .npz")
    start = time.perf_counter()
    logits, labels = collect_logits(runner, dataset, batch_size=batch_size, limit=limit,
                                    description=f"eval {runner.name}")
    seconds = time.perf_counter() - start
    if logits.ndim != 2:
        raise DataError(f"{runner.name} returned outputs of shape {logits.shape}; expected (N, classes) logits")
    from .data.folders import check_class_match

    check_class_match(dataset, logits.shape[1], runner.name)
    if labels.max() >= logits.shape[1]:
        raise DataError(f"data {dataset.source} has label {int(labels.max())} but {runner.name} has only "
                        f"{logits.shape[1]} classes; evaluate on data with the model's classes")
    top1, top5 = accuracy_from_logits(logits, labels)
    return Accuracy(runner.name, runner.engine, dataset.source, len(labels), top1, top5, seconds,
                    logits if keep_logits else None, labels if keep_logits else None)
