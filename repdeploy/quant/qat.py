"""Quantization-aware training of the fused model, keeping the structural prior alive.

`qat(checkpoint, ...)` calibrates (or reads a calibration cache), then fine-tunes the
fake-quant `QuantPlainNet` with the shared training loop. What sets it apart from a plain
fine-tune:

- gradient multipliers: the structural prior that RepVGG's branches or RepOpt's scales gave
  the kernel during training is re-applied to its gradient (SGD) or update (AdamW, AGD):
  `repopt:SCALES` uses the hyper-searched scales; `bn` derives per-channel scales from the
  trained branch BN statistics of a RepVGG train-form checkpoint; `sgs` recomputes Spatial
  Gradient Scaling from the float features;
- optional distillation from the FP32 model (KL on temperature-softened logits);
- activation ranges that train (quant/ranges.py: log-space ranges with their own Adam, so a
  calibration 100x off is undone in a short fine-tune), frozen before export; `learnable_ranges
  =False` keeps the calibrated ones. Weight ranges follow the weights: they are reset to the
  per-channel max before every step and before export, so the exported INT8 kernel is the one
  that was trained;
- SGD's default learning rate is capped by the loss's sharpness (`stable_lr`): distilling a
  model with large logits makes the loss far sharper than training it did, and a fixed lr that
  suits one model sends another to chance;
- `torchrun --nproc_per_node=N` runs it data-parallel with torch.distributed (gloo on CPU,
  NCCL with the model and data on `cuda:LOCAL_RANK`); every rank trains on its shard and
  rank 0 alone writes the outputs.

`qat()` reads as its steps (options, model and data, ranges, prior, learning rate, the
fine-tune, the set): its inputs are quant/qat_io.py's, the loss, prior and loop
quant/qat_train.py's, and the export -> verify -> commit step is the one `quantize` uses
(quant/int8_set.py). Its options are one frozen `QatSettings` (quant/settings.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed import barrier, init_world
from ..errors import DataError, InputError
from ..io import ensure_writable_dir
from ..models.plain import at_input_size
from ..optim.sharpness import sharpness, stable_lr
from ..rundir import refuse_foreign_outputs, refuse_overwriting_inputs
from ..training.loop import TrainConfig, label_smoothing_loss, top1_accuracy
from ..version import __version__
from .calib_cache import weights_fingerprint
from .diagnostics import check_mode
from .int8_set import Int8Set, judge_set, set_names, write_int8_set
from .ptq_report import check_fidelity_bounds, fidelity_gate
from .qat_io import QATResult, load_fused_model, open_datasets, starting_ranges
from .qat_train import STATE_FILE, distillation_loss, fine_tune, structural_prior, with_weight_ranges
from .quantizer import TARGETS, QuantPlainNet
from .ranges import freeze_ranges, is_range_param, make_ranges_learnable
from ..validate import with_options
from .settings import QatSettings

__all__ = ["qat", "QatSettings", "QATResult", "distillation_loss", "STATE_FILE"]

OPTIMIZERS = ("sgd", "adamw", "agd")
# Fine-tuning a trained model wants small steps; AGD's "lr" is its gain on the automatic step.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4, "agd": 0.05}
#: what `qat` reports of ONNX Runtime's accuracy on the validation data, under its QAT names
_ACCURACY = {"int8_top1": "qat_top1", "int8_top5": "qat_top5"}


def _parse_grad_mult(grad_mult: str) -> tuple[str, str | None]:
    if grad_mult in ("none", "bn", "sgs"):
        return grad_mult, None
    if grad_mult.startswith("repopt:"):
        return "repopt", grad_mult.split(":", 1)[1]
    raise InputError(f"--grad-mult {grad_mult!r}: use none, bn, sgs or repopt:SCALES_FILE")


def _top1(model: nn.Module, dataset) -> float | None:
    # Batches of 128, the size these figures were always measured at.
    return top1_accuracy(model, dataset, batch_size=128) if dataset is not None else None


def qat(model: str | os.PathLike | None = None, settings: QatSettings | None = None, *,
        output_dir: str | os.PathLike, **options: Any) -> QATResult:
    """Fine-tune a checkpoint's fused model with fake quantization and export its INT8 ONNX.

    `settings` holds every option (QatSettings); any of its fields may be given as a keyword
    instead, over it. Writes into `output_dir` (rank 0 only): fused.pt, model_fp32.onnx (the
    QAT-tuned float weights), model_int8_<target>.onnx, calib.json (the trained ranges),
    qat_state.pt (training state, every epoch) and report.json with FP32, PTQ and QAT top-1 on
    the validation data. `lr=None` takes DEFAULT_LR, for SGD capped by `stable_lr`; `range_lr` is
    the ranges' Adam lr in log space. Calibration and training run on `device` (under torchrun:
    this rank's GPU, see `init_world`), with `amp` ("bf16"/"fp16") autocast in training; export
    runs on the CPU. `input_size` and `diagnostics` mean what they mean for `quantize`; the
    report's `timings` gives each stage's seconds. The result's `status` is FAILED when a verdict
    failed (unless `allow_mismatch`) or the label-free gate did; nothing is raised after writing.

    >>> r = qat("repvgg.pth", train_data="train/", val_data="val/", output_dir="qat/")  # doctest: +SKIP
    >>> r.report["ptq_top1"], r.report["qat_top1"]                                       # doctest: +SKIP
    """
    from ..data import calibration_sample
    from ..devices import amp_dtype
    from ..progress import set_quiet, status, timed
    from ..zoo import zoo_entry

    # 1. every option is checked before loading or calibrating anything
    s = with_options(QatSettings, settings, options, "qat")
    mult_kind, scales_path = _check_options(s)
    bounds = check_fidelity_bounds(s.min_sqnr, s.min_agreement)  # the label-free gate (exit 3)
    names = set_names(s.target)
    refuse_overwriting_inputs([model, s.train_data, s.val_data, s.calib_cache, s.calib_data, scales_path],
                              files=[Path(output_dir) / n for n in [*names.values(), STATE_FILE]
                                     if not (n == STATE_FILE and s.resume)])
    refuse_foreign_outputs(output_dir, names.values())  # the user's own fused.pt or report.json is never replaced
    world = init_world(s.device)
    where = world.device
    if not world.is_main:
        set_quiet(True)
    out = ensure_writable_dir(output_dir) if world.is_main else Path(output_dir)
    started = time.perf_counter()

    # 2. the model (default: the built-in zoo's RepVGG, the family whose PTQ loses the most) and data
    train_data, val_data = s.train_data, s.val_data
    if model is None:
        entry = zoo_entry("repvgg")
        model, train_data, val_data = str(entry.file), train_data or "builtin", val_data or "builtin"
    if train_data is None:
        raise DataError("QAT needs --train-data (an ImageFolder tree, labelled .npz, or 'builtin')")
    timings: dict[str, float] = {}
    loaded, plain, equivalence = load_fused_model(model, dict(s.load_kwargs or {}))
    plain = at_input_size(plain, s.input_size)
    prep, train_set, val_set = open_datasets(model, plain, train_data, val_data, s.calib_cache, s.train_samples,
                                             s.seed, dict(mean=s.mean, std=s.std, resize=s.resize,
                                                          preprocessing=s.preprocessing))

    # 3. calibration: the PTQ starting point, and the figures QAT is judged against
    timings["load_s"] = time.perf_counter() - started
    qnet = QuantPlainNet(plain, s.target).to(where)
    plain.to(where)  # the FP32 figure and the distillation teacher run beside the student
    with timed(timings, "calibration_s", f"qat: starting ranges ({s.calib_cache or s.calib_method})"):
        cache = starting_ranges(qnet, plain, s.calib_cache, s.calib_data or train_data, prep, s.calib_method,
                                s.calib_samples, s.percentile, s.seed)
    with timed(timings, "ptq_eval_s", "qat: FP32 and PTQ top-1" if val_set is not None else None):
        fp32_top1, ptq_top1 = _top1(plain, val_set), _top1(qnet, val_set)
    status(f"qat: {loaded.variant}: FP32 top-1 {fp32_top1}, PTQ ({cache.method}) top-1 {ptq_top1}")

    # 4. what trains, how: the prior, the trainable ranges, the loss and the learning rate
    multipliers, hooks = structural_prior(qnet, loaded.model, mult_kind, scales_path, s.optimizer, train_set, s.seed)
    if s.optimizer == "agd":
        # AGD updates matrices only (docs/facts.md §3): biases keep their fused values.
        for p in qnet.parameters():
            if p.dim() < 2:
                p.requires_grad_(False)
    if s.learnable_ranges:
        make_ranges_learnable(qnet)  # after AGD's freeze: the ranges have an optimizer of their own
    teacher = plain.eval()
    inner = distillation_loss(teacher, s.temperature) if s.distill else label_smoothing_loss(0.0)
    loss_fn = with_weight_ranges(qnet, inner)
    step_lr, curvature = s.lr, None
    if s.lr is None and s.optimizer == "sgd":
        x, y = next(calibration_sample(train_set, s.batch_size, s.seed).batches(s.batch_size))
        weights = [p for n, p in qnet.named_parameters() if p.requires_grad and not is_range_param(n)]
        curvature = sharpness(qnet.train(), loss_fn, x.to(where), y.to(where), multipliers, params=weights,
                              seed=s.seed)
        step_lr = stable_lr(DEFAULT_LR[s.optimizer], curvature)
        status(f"qat: loss sharpness {curvature:.1f}: SGD lr {step_lr:.3g}")
    elif s.lr is None:
        step_lr = DEFAULT_LR[s.optimizer]

    # 5. the fine-tune: train.py's loop, with this job's identity in its state
    range_lr = s.range_lr if s.learnable_ranges else None
    identity = {
        "model": weights_fingerprint(plain), "arch": plain.spec.to_dict(), "target": s.target,
        "ranges_sha256": hashlib.sha256(json.dumps(sorted(cache.amax.items())).encode()).hexdigest(),
        "calibration": {"cache": cache.weights_sha256, "method": cache.method, "samples": cache.samples,
                        "percentile": cache.percentile},
        "grad_mult": s.grad_mult, "distill": s.distill, "temperature": float(s.temperature),
        "optimizer": s.optimizer, "learnable_ranges": s.learnable_ranges, "range_lr": range_lr,
        "train_samples": s.train_samples,
    }
    config = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=step_lr, weight_decay=s.weight_decay,
                         warmup_epochs=0.0, label_smoothing=0.0, seed=s.seed, augment="none",
                         checkpoint_every=s.checkpoint_every, stop_after_steps=s.stop_after_steps)
    with timed(timings, "training_s"):  # train.py draws its own per-epoch bar and line
        result = fine_tune(qnet, world, s.optimizer, step_lr, s.range_lr, train_set, val_set, config, multipliers,
                           hooks, loss_fn, out / STATE_FILE, s.resume, identity, amp_dtype(s.amp, where))
    learned = freeze_ranges(qnet)
    qnet.set_weight_ranges()
    qnet.eval()
    # Export and the figures after training run on the CPU: the files do not depend on the device.
    qnet.cpu()
    plain.cpu()
    barrier(world)
    if result.stopped_early:
        return QATResult(out, None, {"stopped_early": True, "steps": result.steps}, qnet)
    if not world.is_main:
        return QATResult(out, None, {"rank": world.rank}, qnet)

    # 6. the set: the step `quantize` uses, on the tuned weights and the trained ranges
    report: dict[str, Any] = {
        "tool": f"repdeploy {__version__}", "model": loaded.variant, "source": str(model),
        "target": s.target, "fusion": equivalence.to_dict() if equivalence else None,
        "preprocessing": train_set.preprocessing.to_dict(),
        "calib_method": cache.method, "calib_samples": cache.samples,
        "optimizer": s.optimizer, "lr": step_lr, "lr_sharpness": curvature, "epochs": s.epochs,
        "batch_size": s.batch_size, "grad_mult": s.grad_mult, "distill": s.distill,
        "learnable_ranges": s.learnable_ranges, "range_lr": range_lr,
        "world_size": world.size, "device": str(where), "amp": s.amp or "none",
        "fp32_top1": fp32_top1, "ptq_top1": ptq_top1, "qat_top1_torch": _top1(qnet, val_set),
        "training": result.to_dict(),
    }
    tuned = qnet.float_model()
    # The cache now describes the tuned weights and the trained ranges, so it stays reusable.
    cache.weights_sha256 = weights_fingerprint(tuned)
    for name, amax in learned.items():
        cache.tensors[name].amax = amax

    def finish(figures: dict, timings: dict) -> dict:
        accuracy = {k: figures.pop(k, None) for k in
                    ("eval_data", "eval_images", "fp32_top1", "int8_top1", "top1_drop", "fp32_top5", "int8_top5",
                     "top5_drop")}  # of the tuned FP32 ONNX: the report's fp32_top1 is the model before QAT
        if val_set is not None:
            report.update({new: accuracy[old] for old, new in _ACCURACY.items()})
            report["ptq_drop"] = fp32_top1 - ptq_top1
            report["qat_drop"] = fp32_top1 - accuracy["int8_top1"]
        report.update(figures, verify_data=verify_set.source, verify_disjoint=val_set is not None)
        report["fidelity_gate"] = fidelity_gate(bounds, report)
        report.update(judge_set(figures, s.allow_mismatch, (report["fidelity_gate"] or {}).get("failures", [])))
        report["files"] = dict(names)
        report["seconds"] = round(time.perf_counter() - started, 2)
        timings["total_s"] = time.perf_counter() - started
        report["timings"] = {k: round(t, 3) for k, t in timings.items()}
        return report

    from ..data.labels import class_names_for
    from ..recorded import class_names_of
    from ..tolerance import MIN_VERIFY_IMAGES
    from .fidelity import VERIFY_IMAGES, images_for

    verify_set = val_set if val_set is not None else train_set
    n_verify = images_for(plain.spec.input_size, VERIFY_IMAGES, MIN_VERIFY_IMAGES)
    x_verify = torch.cat([b for b, _ in verify_set.batches(32, limit=n_verify)])
    path = model if isinstance(model, (str, Path)) else None
    class_names = class_names_for(plain.spec.num_classes, recorded=class_names_of(path) if path else None,
                                  datasets=(train_set, val_set), model_path=path)
    report = write_int8_set(out, names, Int8Set(
        tuned, qnet, cache, s.target, x_verify, train_set.preprocessing, class_names,
        {"source": str(model), "qat": True}, eval_set=val_set, stage_name="qat", diagnostics=s.diagnostics),
        finish, timings)
    return QATResult(out, out / names["int8"], report, qnet)


def _check_options(s: QatSettings) -> tuple[str, str | None]:
    """Refuse a bad option before anything is loaded; returns the parsed --grad-mult."""
    from .. import validate

    check_mode(s.diagnostics)
    if s.optimizer not in OPTIMIZERS:
        raise InputError(f"unknown --optimizer {s.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if s.target not in TARGETS:
        raise InputError(f"unknown --target {s.target!r}; use one of {', '.join(TARGETS)}")
    parsed = _parse_grad_mult(s.grad_mult)
    lr = s.lr if s.lr is not None else DEFAULT_LR[s.optimizer]
    TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=lr, weight_decay=s.weight_decay,
                warmup_epochs=0.0, label_smoothing=0.0, seed=s.seed, augment="none",
                checkpoint_every=s.checkpoint_every, stop_after_steps=s.stop_after_steps).validate()
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be a positive number, got {lr}")
    validate.number("--range-lr", s.range_lr, low=0.0, low_open=True, high=10.0, allow_none=False)
    validate.number("--temperature", s.temperature, low=0.0, low_open=True, high=1000.0, allow_none=False)
    validate.integer("--calib-samples", s.calib_samples, low=1, high=10_000_000, allow_none=False)
    validate.integer("--train-samples", s.train_samples, low=1)
    validate.number("--percentile", s.percentile, low=0.0, low_open=True, high=100.0, allow_none=False)
    validate.input_size("--input-size", s.input_size)
    return parsed
