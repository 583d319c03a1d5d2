"""What a `quantize` or a `qat` call was asked to do: one frozen record per command.

As ONNX Runtime's `StaticQuantConfig` does for `quantize_static`, every option of a command lives
in one record that can be built, printed, passed on and changed with `dataclasses.replace`; the
command takes the record and, as shortcuts, any of its fields as keywords
(`quantize(model, output_dir=..., calib_data=...)` builds `QuantizeSettings(calib_data=...)`).
The fields mean what the commands' docstrings and docs/cli.md say.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .. import defaults
from .calibrators import DEFAULT_PERCENTILE
from .ranges import DEFAULT_RANGE_LR

PathLike = str | os.PathLike


@dataclass(frozen=True)
class QuantizeSettings:
    """Every option of `quantize` (quant/ptq.py)."""

    calib_data: Any = None  # folder, .npy/.npz, "builtin", tensor/array, or an iterable of batches
    forward_loop: Callable | None = None  # instead of calib_data: runs the model it is given over your data
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_method: str = defaults.CALIB_METHOD
    percentile: float = DEFAULT_PERCENTILE
    calib_cache: PathLike | None = None
    target: str = defaults.TARGET
    eval_data: Any = None
    eval_limit: int | None = None
    max_drop: float | None = None
    min_sqnr: float | None = None
    min_agreement: float | None = None
    fallback: bool = False
    allow_mismatch: bool = False
    seed: int = 0
    load_kwargs: Mapping[str, Any] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    preprocessing: Any = None  # preprocess.Preprocessing
    device: str | Any = defaults.DEVICE
    labels: PathLike | None = None
    input_format: str = "float"
    diagnostics: str = defaults.DIAGNOSTICS
    input_size: int | None = None


@dataclass(frozen=True)
class QatSettings:
    """Every option of `qat` (quant/qat.py)."""

    train_data: PathLike | None = None
    val_data: PathLike | None = None
    epochs: int = defaults.QAT_EPOCHS
    lr: float | None = None  # None: DEFAULT_LR, for SGD capped by the loss's sharpness
    batch_size: int = defaults.QAT_BATCH_SIZE
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    grad_mult: str = "none"
    distill: bool = False
    temperature: float = 4.0
    calib_cache: PathLike | None = None
    calib_data: PathLike | None = None
    calib_method: str = defaults.CALIB_METHOD
    calib_samples: int = defaults.CALIB_SAMPLES
    percentile: float = DEFAULT_PERCENTILE
    target: str = defaults.TARGET
    train_samples: int | None = None
    learnable_ranges: bool = True
    range_lr: float = DEFAULT_RANGE_LR
    resume: bool = False
    checkpoint_every: int = 0
    stop_after_steps: int | None = None
    seed: int = 0
    load_kwargs: Mapping[str, Any] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    preprocessing: Any = None
    allow_mismatch: bool = False
    min_sqnr: float | None = None
    min_agreement: float | None = None
    device: str | Any = defaults.DEVICE
    amp: str | None = "none"
    input_size: int | None = None
    diagnostics: str = defaults.DIAGNOSTICS
