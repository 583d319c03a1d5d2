"""What a QAT job reads and what it writes: its inputs (the fused model, the data, the starting
ranges) and its outputs (fused.pt, the FP32 and INT8 ONNX, calib.json, report.json).

quant/qat.py runs the fine-tune between the two; keeping the files here leaves it the loop.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError, InputError
from ..io import write_json_atomic
from ..models.plain import PlainNet
from ..rundir import commit_files, make_scratch_dir
from .calib import calibrate
from .calib_cache import CalibrationCache, weights_fingerprint
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


def export_tuned(qnet: QuantPlainNet, model, cache: CalibrationCache, learned: dict[str, float], train_set, val_set,
            target: str, names: dict, out: Path, report: dict, allow_mismatch: bool, started: float,
            fidelity_bounds: dict | None = None) -> None:
    """Write the tuned model's files into `out` as one commit; completes `report` with figures and verdicts."""
    from ..checkpoints import save_fused
    from ..export.onnx import export_onnx
    from ..export.qdq import check_tensorrt_qdq, export_qdq
    from .fidelity import onnx_accuracy as _accuracy

    tuned, spec = qnet.float_model(), qnet.spec
    stage = make_scratch_dir(out, "set", "qat")
    t0 = time.perf_counter()
    try:
        from ..data.labels import class_names_for
        from ..recorded import class_names_of

        record = train_set.preprocessing
        path = model if isinstance(model, (str, Path)) else None
        class_names = class_names_for(spec.num_classes, recorded=class_names_of(path) if path else None,
                                      datasets=(train_set, val_set), model_path=path)
        save_fused(tuned, stage / names["fused"], extra={"source": str(model), "qat": True,
                                                        "preprocessing": record.to_dict(), "class_names": class_names})
        export_onnx(tuned, stage / names["fp32"], input_size=spec.input_size, in_channels=spec.in_channels,
                    preprocessing=record, class_names=class_names)
        export_qdq(qnet, stage / names["fp32"], stage / names["int8"], target=target)
        # The cache now describes the tuned weights and the trained ranges, so it stays reusable.
        cache.weights_sha256 = weights_fingerprint(tuned)
        for name, amax in learned.items():
            cache.tensors[name].amax = amax
        cache.save(stage / names["calib"])
        if val_set is not None:
            acc = _accuracy(stage / names["fp32"], stage / names["int8"], val_set, None)
            report["qat_top1"] = acc["int8_top1"]
            report["qat_top5"] = acc["int8_top5"]
            report["ptq_drop"] = report["fp32_top1"] - report["ptq_top1"]
            report["qat_drop"] = report["fp32_top1"] - acc["int8_top1"]
        if target == "tensorrt":
            import onnx

            report["tensorrt_rule_violations"] = check_tensorrt_qdq(onnx.load(str(stage / names["int8"])))
        # The same verdicts as PTQ (verify.py): the exported graphs must compute what was trained.
        verify_set = val_set if val_set is not None else train_set
        report["verdicts"], figures = _verdicts(tuned, qnet, stage / names["fp32"], stage / names["int8"],
                                                verify_set, spec.input_size, verify_set.preprocessing)
        report.update(figures, verify_data=verify_set.source, verify_disjoint=val_set is not None)
        from .ptq_report import fidelity_gate, status_word

        report["fidelity_gate"] = fidelity_gate(fidelity_bounds, report)
        failed = [v["line"] for v in report["verdicts"] if not v["passed"]]
        report["status"] = status_word(failed, allow_mismatch, (report["fidelity_gate"] or {}).get("failures", []))
        report["allow_mismatch"] = allow_mismatch
        report["files"] = dict(names)
        report["seconds"] = round(time.perf_counter() - started, 2)
        timings = report.setdefault("timings", {})
        timings["export_verify_s"] = round(time.perf_counter() - t0, 3)
        timings["total_s"] = round(time.perf_counter() - started, 3)
        write_json_atomic(stage / names["report"], report)
        commit_files(stage, out, [names[k] for k in ("fused", "fp32", "int8", "calib", "report")])
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@torch.no_grad()
def _verdicts(tuned: PlainNet, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, dataset,
              input_size: int, record=None) -> tuple[list[dict], dict]:
    """The verdicts PTQ gives (fidelity.int8_verdicts) on the tuned model, and the INT8 ONNX's
    fidelity to the FP32 ONNX on the same images."""
    from ..evaluate import sqnr_db, top1_agreement
    from ..tolerance import MIN_VERIFY_IMAGES
    from .fidelity import VERIFY_IMAGES, images_for, int8_verdicts

    n = images_for(input_size, VERIFY_IMAGES, MIN_VERIFY_IMAGES)
    x = torch.cat([b for b, _ in dataset.batches(BATCH, limit=n)])
    qnet.eval()
    ref = torch.cat([tuned(c) for c in x.split(BATCH)]).numpy()
    fake = torch.cat([qnet(c) for c in x.split(BATCH)]).numpy()
    verdicts, ort = int8_verdicts(ref, fake, qnet, fp32_onnx, int8_onnx, x, record,
                                  fp32_name="torch FP32 (QAT-tuned)", fake_name="torch fake-quant (QAT)")
    sq = sqnr_db(ort["fp32"], ort["int8"])
    return [v.to_dict() for v in verdicts], {"verify_images": int(x.shape[0]),
                                             "sqnr_db": sq if abs(sq) != float("inf") else None,
                                             "top1_agreement": top1_agreement(ort["fp32"], ort["int8"])}
