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

`qat()` reads as its steps (options, model and data, ranges, prior, learning rate, train.py's
loop, export); the files it reads and writes are quant/qat_io.py's, the process group is
repdeploy/distributed.py's and the gradient priors are repdeploy/optim/priors.py's. What is
left (about 350 lines) is the one QAT job, kept whole so it reads in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import defaults
from ..distributed import World, barrier, init_world, shard
from ..errors import DataError, InputError, VerificationError
from ..io import ensure_writable_dir
from ..optim.priors import QuantSGSHook, branch_scales_from_bn, set_prior_multipliers
from ..optim.sharpness import sharpness, stable_lr
from ..rundir import refuse_foreign_outputs, refuse_overwriting_inputs
from ..training.loop import TrainConfig, label_smoothing_loss, top1_accuracy
from ..version import __version__
from .calib_cache import weights_fingerprint
from .calibrators import DEFAULT_PERCENTILE
from .diagnostics import check_mode
from .ptq_report import diagnostics_record, sample_size as diagnostics_sample
from ..models.plain import at_input_size
from .qat_io import QATResult, export_tuned, load_fused_model, open_datasets, starting_ranges
from .quantizer import TARGETS, QuantPlainNet
from .ranges import (DEFAULT_RANGE_LR, WithRangeAdam, freeze_ranges, is_range_param, make_ranges_learnable,
                     split_range_groups)

OPTIMIZERS = ("sgd", "adamw", "agd")
# Fine-tuning a trained model wants small steps; AGD's "lr" is its gain on the automatic step.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4, "agd": 0.05}
STATE_FILE = "qat_state.pt"


# --------------------------------------------------------------------------- losses


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5, smoothing: float = 0.1):
    """alpha * KL(teacher || student) at `temperature` (times T^2) + (1 - alpha) * cross entropy."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        return alpha * kl * temperature**2 + (1 - alpha) * F.cross_entropy(logits, y, label_smoothing=smoothing)

    return loss


def _with_weight_ranges(qnet: QuantPlainNet, inner):
    # Weight ranges follow the weights step by step, so no weight is clipped by a stale range.
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        qnet.set_weight_ranges()
        return inner(model, x, y)

    return loss


# --------------------------------------------------------------------------- the job


def _parse_grad_mult(grad_mult: str) -> tuple[str, str | None]:
    if grad_mult in ("none", "bn", "sgs"):
        return grad_mult, None
    if grad_mult.startswith("repopt:"):
        return "repopt", grad_mult.split(":", 1)[1]
    raise InputError(f"--grad-mult {grad_mult!r}: use none, bn, sgs or repopt:SCALES_FILE")


def _top1(model: nn.Module, dataset) -> float | None:
    # Batches of 128, the size these figures were always measured at.
    return top1_accuracy(model, dataset, batch_size=128) if dataset is not None else None


def qat(
    model: str | os.PathLike | None = None,
    *,
    train_data: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    val_data: str | os.PathLike | None = None,
    epochs: int = defaults.QAT_EPOCHS,
    lr: float | None = None,
    batch_size: int = defaults.QAT_BATCH_SIZE,
    weight_decay: float = 0.0,
    optimizer: str = "sgd",
    grad_mult: str = "none",
    distill: bool = False,
    temperature: float = 4.0,
    calib_cache: str | os.PathLike | None = None,
    calib_data: str | os.PathLike | None = None,
    calib_method: str = defaults.CALIB_METHOD,
    calib_samples: int = defaults.CALIB_SAMPLES,
    percentile: float = DEFAULT_PERCENTILE,
    target: str = defaults.TARGET,
    train_samples: int | None = None,
    learnable_ranges: bool = True,
    range_lr: float = DEFAULT_RANGE_LR,
    resume: bool = False,
    checkpoint_every: int = 0,
    stop_after_steps: int | None = None,
    seed: int = 0,
    load_kwargs: dict | None = None,
    mean=None,
    std=None,
    resize=None,
    preprocessing=None,
    allow_mismatch: bool = False,
    min_sqnr: float | None = None,
    min_agreement: float | None = None,
    device: str | torch.device | None = defaults.DEVICE,
    amp: str | None = "none",
    input_size: int | None = None,
    diagnostics: str = defaults.DIAGNOSTICS,
) -> QATResult:
    """Fine-tune a checkpoint's fused model with fake quantization and export its INT8 ONNX.

    Writes into `output_dir` (rank 0 only): fused.pt, model_fp32.onnx (the QAT-tuned float
    weights), model_int8_<target>.onnx, calib.json (the trained ranges), qat_state.pt (training
    state, every epoch) and report.json with FP32, PTQ and QAT top-1 on the validation data.
    `lr=None` takes DEFAULT_LR, for SGD capped by `stable_lr`; `range_lr` is the ranges' Adam
    lr in log space. Calibration and training run on `device` (under torchrun: this rank's GPU,
    see `init_world`), with `amp` ("bf16"/"fp16") autocast in training; export runs on the CPU.
    `input_size` and `diagnostics` mean what they mean for `quantize`; the report's `timings`
    gives each stage's seconds.

    >>> r = qat("repvgg.pth", train_data="train/", val_data="val/", output_dir="qat/")  # doctest: +SKIP
    >>> r.report["ptq_top1"], r.report["qat_top1"]                                       # doctest: +SKIP
    """
    from ..data import calibration_sample
    from ..devices import amp_dtype
    from ..progress import set_quiet, status, timed
    from ..zoo import zoo_entry

    # 1. every option is checked before loading or calibrating anything
    mult_kind, scales_path = _check_options(locals())
    check_mode(diagnostics)
    from .ptq_report import check_fidelity_bounds

    bounds = check_fidelity_bounds(min_sqnr, min_agreement)  # the label-free gate (exit 3)
    names = {"fused": "fused.pt", "fp32": "model_fp32.onnx", "int8": f"model_int8_{target}.onnx",
             "calib": "calib.json", "report": "report.json"}
    refuse_overwriting_inputs([model, train_data, val_data, calib_cache, calib_data, scales_path],
                              files=[Path(output_dir) / n for n in [*names.values(), STATE_FILE]
                                     if not (n == STATE_FILE and resume)])
    refuse_foreign_outputs(output_dir, names.values())  # the user's own fused.pt or report.json is never replaced
    world = init_world(device)
    where = world.device
    if not world.is_main:
        set_quiet(True)
    out = ensure_writable_dir(output_dir) if world.is_main else Path(output_dir)
    started = time.perf_counter()

    # 2. the model (default: the built-in zoo's RepVGG, the family whose PTQ loses the most) and data
    if model is None:
        model, train_data, val_data = str(zoo_entry("repvgg").file), train_data or "builtin", val_data or "builtin"
    if train_data is None:
        raise DataError("QAT needs --train-data (an ImageFolder tree, labelled .npz, or 'builtin')")
    timings: dict[str, float] = {}
    loaded, plain, equivalence = load_fused_model(model, load_kwargs)
    plain = at_input_size(plain, input_size)
    prep, train_set, val_set = open_datasets(model, plain, train_data, val_data, calib_cache, train_samples, seed,
                                             dict(mean=mean, std=std, resize=resize, preprocessing=preprocessing))

    # 3. calibration: the PTQ starting point, and the figures QAT is judged against
    timings["load_s"] = time.perf_counter() - started
    qnet = QuantPlainNet(plain, target).to(where)
    plain.to(where)  # the FP32 figure and the distillation teacher run beside the student
    with timed(timings, "calibration_s", f"qat: starting ranges ({calib_cache or calib_method})"):
        cache = starting_ranges(qnet, plain, calib_cache, calib_data or train_data, prep, calib_method,
                                calib_samples, percentile, seed)
    with timed(timings, "ptq_eval_s", "qat: FP32 and PTQ top-1" if val_set is not None else None):
        fp32_top1, ptq_top1 = _top1(plain, val_set), _top1(qnet, val_set)
    status(f"qat: {loaded.variant}: FP32 top-1 {fp32_top1}, PTQ ({cache.method}) top-1 {ptq_top1}")

    # 4. what trains, how: the prior, the trainable ranges, the loss and the learning rate
    multipliers, hooks = _prior(qnet, loaded.model, mult_kind, scales_path, optimizer, train_set, seed)
    if optimizer == "agd":
        # AGD updates matrices only (docs/facts.md §3): biases keep their fused values.
        for p in qnet.parameters():
            if p.dim() < 2:
                p.requires_grad_(False)
    if learnable_ranges:
        make_ranges_learnable(qnet)  # after AGD's freeze: the ranges have an optimizer of their own
    teacher = plain.eval()
    inner = distillation_loss(teacher, temperature) if distill else label_smoothing_loss(0.0)
    loss_fn = _with_weight_ranges(qnet, inner)
    step_lr, curvature = lr, None
    if lr is None and optimizer == "sgd":
        x, y = next(calibration_sample(train_set, batch_size, seed).batches(batch_size))
        weights = [p for n, p in qnet.named_parameters() if p.requires_grad and not is_range_param(n)]
        curvature = sharpness(qnet.train(), loss_fn, x.to(where), y.to(where), multipliers, params=weights, seed=seed)
        step_lr = stable_lr(DEFAULT_LR[optimizer], curvature)
        status(f"qat: loss sharpness {curvature:.1f}: SGD lr {step_lr:.3g}")
    elif lr is None:
        step_lr = DEFAULT_LR[optimizer]

    # 5. the fine-tune: train.py's loop, with this job's identity in its state
    identity = {
        "model": weights_fingerprint(plain), "arch": plain.spec.to_dict(), "target": target,
        "ranges_sha256": hashlib.sha256(json.dumps(sorted(cache.amax.items())).encode()).hexdigest(),
        "calibration": {"cache": cache.weights_sha256, "method": cache.method, "samples": cache.samples,
                        "percentile": cache.percentile},
        "grad_mult": grad_mult, "distill": distill, "temperature": float(temperature), "optimizer": optimizer,
        "learnable_ranges": learnable_ranges, "range_lr": range_lr if learnable_ranges else None,
        "train_samples": train_samples,
    }
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=step_lr, weight_decay=weight_decay,
                         warmup_epochs=0.0, label_smoothing=0.0, seed=seed, augment="none",
                         checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps)
    with timed(timings, "training_s"):  # train.py draws its own per-epoch bar and line
        result = _fine_tune(qnet, world, optimizer, step_lr, range_lr, train_set, val_set, config, multipliers,
                            hooks, loss_fn, out / STATE_FILE, resume, identity, amp_dtype(amp, where))
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

    # 6. export, verify and report
    report: dict[str, Any] = {
        "tool": f"repdeploy {__version__}", "model": loaded.variant, "source": str(model),
        "target": target, "fusion": equivalence.to_dict() if equivalence else None,
        "preprocessing": train_set.preprocessing.to_dict(),
        "calib_method": cache.method, "calib_samples": cache.samples,
        "optimizer": optimizer, "lr": step_lr, "lr_sharpness": curvature, "epochs": epochs,
        "batch_size": batch_size, "grad_mult": grad_mult, "distill": distill,
        "learnable_ranges": learnable_ranges, "range_lr": range_lr if learnable_ranges else None,
        "world_size": world.size, "device": str(where), "amp": amp or "none",
        "fp32_top1": fp32_top1, "ptq_top1": ptq_top1, "qat_top1_torch": _top1(qnet, val_set),
        "training": result.to_dict(),
    }
    with timed(timings, "diagnostics_s"):
        sample = next((val_set or train_set).batches(diagnostics_sample(plain.spec.input_size)))[0]
        report.update(diagnostics_record(qnet.float_model(), qnet, sample, diagnostics))
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}  # export_tuned adds the rest
    export_tuned(qnet, model, cache, learned, train_set, val_set, target, names, out, report, allow_mismatch, started,
                 fidelity_bounds=bounds)
    mismatches = [v["line"] for v in report["verdicts"] if not v["passed"]]
    if mismatches and not allow_mismatch:
        raise VerificationError(f"{loaded.variant} after QAT: {mismatches[0]}; see {out / names['report']} "
                                "verdicts; pass --allow-mismatch to keep it anyway")
    if report["fidelity_gate"] and not report["fidelity_gate"]["passed"]:  # the label-free gate, exit 3
        from ..errors import AccuracyGateError

        raise AccuracyGateError(f"{loaded.variant} after QAT: INT8 {report['fidelity_gate']['failures'][0]}; "
                                f"see {out / names['report']}")
    return QATResult(out, out / names["int8"], report, qnet)


def _check_options(o: dict) -> tuple[str, str | None]:
    """Refuse a bad option before anything is loaded; returns the parsed --grad-mult."""
    from .. import validate

    if o["optimizer"] not in OPTIMIZERS:
        raise InputError(f"unknown --optimizer {o['optimizer']!r}; use one of {', '.join(OPTIMIZERS)}")
    if o["target"] not in TARGETS:
        raise InputError(f"unknown --target {o['target']!r}; use one of {', '.join(TARGETS)}")
    parsed = _parse_grad_mult(o["grad_mult"])
    lr = o["lr"] if o["lr"] is not None else DEFAULT_LR[o["optimizer"]]
    TrainConfig(epochs=o["epochs"], batch_size=o["batch_size"], lr=lr, weight_decay=o["weight_decay"],
                warmup_epochs=0.0, label_smoothing=0.0, seed=o["seed"], augment="none",
                checkpoint_every=o["checkpoint_every"], stop_after_steps=o["stop_after_steps"]).validate()
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be a positive number, got {lr}")
    validate.number("--range-lr", o["range_lr"], low=0.0, low_open=True, high=10.0, allow_none=False)
    validate.number("--temperature", o["temperature"], low=0.0, low_open=True, high=1000.0, allow_none=False)
    validate.integer("--calib-samples", o["calib_samples"], low=1, high=10_000_000, allow_none=False)
    validate.integer("--train-samples", o["train_samples"], low=1)
    validate.number("--percentile", o["percentile"], low=0.0, low_open=True, high=100.0, allow_none=False)
    validate.input_size("--input-size", o["input_size"])
    return parsed


def _prior(qnet: QuantPlainNet, source: nn.Module, kind: str, scales_path, optimizer: str, train_set, seed: int):
    """The structural prior as gradient multipliers (or the SGS hook that refreshes them)."""
    from ..optim.multipliers import MultiplierMap
    from ..optim.repopt import load_scales
    from ..progress import status

    multipliers, hooks = MultiplierMap(qnet), []
    if kind == "repopt":
        set_prior_multipliers(multipliers, qnet, load_scales(scales_path, qnet.spec), optimizer)
    elif kind == "bn":
        set_prior_multipliers(multipliers, qnet, branch_scales_from_bn(source), optimizer)
    elif kind == "sgs":
        if optimizer != "sgd":
            status("qat: note: SGS is exact for SGD only; with AdamW/AGD it scales the update instead")
        hook = QuantSGSHook(train_set, seed=seed)
        hook.qnet = qnet
        hooks.append(hook)
    return multipliers, hooks


def _fine_tune(qnet: QuantPlainNet, world: World, optimizer: str, lr: float, range_lr: float, train_set, val_set,
               config: TrainConfig, multipliers, hooks, loss_fn, state_path: Path, resume: bool, identity: dict,
               amp_type):
    """train.py's loop on this rank's shard (DDP-wrapped when distributed); the TrainResult."""
    from ..optim import AGD, AdamWWithMultipliers, SGDWithMultipliers
    from ..training.loop import train

    trained: nn.Module = qnet
    if world.distributed:
        # Buffers (the frozen ranges) are identical on every rank; not broadcasting them keeps
        # rank 0's extra validation forwards free of collectives.
        import warnings

        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers but its replacement still syncs at init;
            # the deprecation note itself says to keep broadcast_buffers=False for now.
            warnings.simplefilter("ignore", FutureWarning)
            ids = [world.device.index] if world.device.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(qnet, device_ids=ids, broadcast_buffers=False)

    def make_optimizer(groups: list[dict], mults):
        groups, ranges = split_range_groups(groups)
        if optimizer == "sgd":
            weights = SGDWithMultipliers(groups, mults, lr=lr, momentum=0.9)
        elif optimizer == "adamw":
            weights = AdamWWithMultipliers(groups, mults, lr=lr)
        else:
            weights = AGD([p for g in groups for p in g["params"]], mults, gain=lr)
        return WithRangeAdam(weights, ranges, range_lr) if ranges else weights

    # Only rank 0 writes into the output directory. The other ranks keep their (identical, since
    # DDP keeps replicas in sync) training state in a private temporary file, and on --resume
    # start from a copy of rank 0's.
    private = None
    if not world.is_main:
        private = Path(tempfile.mkdtemp(prefix=f"repdeploy-qat-rank{world.rank}-"))
        if resume and state_path.exists():
            shutil.copyfile(state_path, private / STATE_FILE)
        state_path = private / STATE_FILE
    try:
        return train(trained, make_optimizer, shard(train_set, world), val_set if world.is_main else None, config,
                     multipliers=multipliers, hooks=hooks, loss_fn=loss_fn, state_path=state_path, resume=resume,
                     uses_lr_schedule=optimizer != "agd", description=f"qat {qnet.spec.name}", identity=identity,
                     device=world.device, amp=amp_type)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


