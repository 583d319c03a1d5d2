"""What a QAT job reads and what it hands back: its inputs (the fused model, the data, the starting
ranges) and its `QATResult`. Its files are written by the step `quantize` shares (quant/int8_set.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, InputError
from ..models.plain import PlainNet
from .calib import calibrate
from .calib_cache import CalibrationCache
from .quantizer import QuantPlainNet

BATCH = 32


@dataclass
class QATResult:
    output_dir: Path
    int8_onnx: Path | None
    report: dict
    qnet: QuantPlainNet = field(repr=False)

    # Typed views of the headline figures in `report` (None where not measured, or on rank > 0).
    @property
    def fp32_top1(self) -> float | None:
        return self.report.get("fp32_top1")

    @property
    def ptq_top1(self) -> float | None:
        return self.report.get("ptq_top1")

    @property
    def qat_top1(self) -> float | None:
        return self.report.get("qat_top1")

    @property
    def qat_drop(self) -> float | None:
        return self.report.get("qat_drop")

    # What the checks found (quant/int8_set.judge_set); a rank > 0 or a stopped run has none.
    @property
    def status(self) -> str | None:
        return self.report.get("status")

    @property
    def verification_failures(self) -> list[str]:
        return list(self.report.get("verification_failures") or [])

    @property
    def gate_failures(self) -> list[str]:
        return list(self.report.get("gate_failures") or [])

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "int8_onnx": str(self.int8_onnx) if self.int8_onnx else None,
                **{k: self.report.get(k) for k in ("fp32_top1", "ptq_top1", "qat_top1", "ptq_drop", "qat_drop")}}


def load_fused_model(model, load_kwargs: dict | None):
    """The checkpoint, and its fused PlainNet (with the fusion's equivalence record, if it fused)."""
    from ..checkpoints import load
    from ..fuse import fuse

    loaded = load(model, **(load_kwargs or {}))
    if loaded.model is None:
        raise InputError(f"{model} is a scales file with no weights; {loaded.deploy_steps}")
    if isinstance(loaded.model, PlainNet):
        return loaded, loaded.model, None
    fused = fuse(loaded.model)
    return loaded, fused.plain, fused.equivalence


def open_datasets(model, plain: PlainNet, train_data, val_data, calib_cache, train_samples, seed, prep: dict):
    """(preprocessing options, training set, validation set or None), all fed one preprocessing."""
    from ..data import calibration_sample, open_dataset, open_train_val
    from ..recorded import preprocessing_of

    spec = plain.spec
    # Fed as it was calibrated: the given record, else the model file's or the cache's; fields
    # given as mean/std/resize override it (preprocess.py).
    record = prep["preprocessing"]
    if record is None:
        record = preprocessing_of(model)
    if record is None and calib_cache is not None:
        record = preprocessing_of(calib_cache)
    if record is None:  # one record for training, validation and calibration: the training data's
        record = open_dataset(train_data, split="train", image_size=spec.input_size, channels=spec.in_channels,
                              mean=prep["mean"], std=prep["std"], resize=prep["resize"]).preprocessing
    prep = {**prep, "preprocessing": record}
    train_set, val_set = open_train_val(train_data, image_size=spec.input_size, channels=spec.in_channels,
                                        val_source=val_data, seed=seed, **prep)
    if train_samples is not None:
        # A seeded subset: a quick QAT on a large set, and the fast path the tests take.
        train_set = calibration_sample(train_set, train_samples, seed)
    if val_set is not None and not val_set.has_labels:
        raise DataError(f"validation data {val_data} has no labels; give a class-folder layout or labelled arrays")
    return prep, train_set, val_set


def starting_ranges(qnet: QuantPlainNet, plain: PlainNet, calib_cache, calib_source, prep: dict, method: str,
                    samples: int, percentile: float, seed: int) -> CalibrationCache:
    """Activation ranges from the cache the user gave, else calibrated on `calib_source`."""
    from ..data import calibration_sample, open_dataset

    qnet.set_weight_ranges()
    if calib_cache is not None:
        cache = CalibrationCache.load(calib_cache)
        cache.check_model(plain, source=str(calib_cache))
        qnet.load_ranges(cache.amax)
        return cache
    spec = plain.spec
    calib_set = calibration_sample(
        open_dataset(calib_source, split="train", image_size=spec.input_size, channels=spec.in_channels, **prep),
        samples, seed)
    return calibrate(qnet, (x for x, _ in calib_set.batches(BATCH)), method=method, percentile=percentile,
                     total_batches=calib_set.num_batches(BATCH), data=calib_set.describe())
