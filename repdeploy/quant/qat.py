"""Quantization-aware training of the fused model, keeping the structural prior alive.

`qat(checkpoint, ...)` calibrates (or reads a calibration cache), then fine-tunes the
fake-quant `QuantPlainNet` with the shared training loop. Three things set it apart from a
plain fine-tune:

- gradient multipliers: the structural prior that RepVGG's branches or RepOpt's scales gave
  the kernel during training is re-applied to its gradient (SGD) or update (AdamW, AGD):
  `repopt:SCALES` uses the hyper-searched scales; `bn` derives per-channel scales from the
  trained branch BN statistics of a RepVGG train-form checkpoint; `sgs` recomputes Spatial
  Gradient Scaling from the float features;
- optional distillation from the FP32 model (KL on temperature-softened logits);
- `torchrun --nproc_per_node=N` runs it data-parallel with torch.distributed (gloo on CPU,
  NCCL with the model and data on `cuda:LOCAL_RANK`); every rank trains on its shard and
  rank 0 alone writes the outputs.

Activation ranges stay frozen at their calibrated values by default (as the upstream QAT
recipes do), or train with the weights (`learnable_ranges`) and are frozen before export; weight ranges follow the weights: they are reset to the per-channel max before
every step and before export, so the exported INT8 kernel is the one that was trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import defaults
from ..distributed import barrier as _barrier
from ..distributed import init_world, shard
from ..errors import DataError, InputError, VerificationError
from ..io import ensure_writable_dir, write_json_atomic
from ..models.plain import PlainNet
from ..optim.priors import QuantSGSHook, branch_scales_from_bn, set_prior_multipliers
from ..rundir import commit_files, make_scratch_dir, refuse_overwriting_inputs
from ..train import TrainConfig
from ..version import __version__
from .calib import calibrate
from .calib_cache import CalibrationCache
from .calibrators import DEFAULT_PERCENTILE
from .quantizer import MIN_AMAX, TARGETS, QuantPlainNet, TensorQuantizer

OPTIMIZERS = ("sgd", "adamw", "agd")
# Fine-tuning a trained model wants small steps; AGD's "lr" is its gain on the automatic step.
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4, "agd": 0.05}
GRAD_MULT_PRODUCER = "qat-prior"
STATE_FILE = "qat_state.pt"
BATCH = 32


# --------------------------------------------------------------------------- learnable ranges


class LearnableRangeQuantizer(TensorQuantizer):
    """An activation quantizer whose range trains with the weights (LSQ-style gradients).

    Written with public ops (clamp, a straight-through round) rather than torch's learnable
    fake-quant ops, which neither ONNX exporter accepts (reference.md §4); `freeze_ranges`
    turns it back into a plain quantizer with a fixed range before export.
    """

    learned_amax: nn.Parameter

    def scale(self) -> torch.Tensor:
        return self.learned_amax.abs().clamp_min(MIN_AMAX) / float(self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.calibrated:
            return x
        s = self.scale().to(x.dtype)
        # LSQ's gradient scale 1/sqrt(N * Qp) keeps the range's steps comparable to the weights'.
        g = 1.0 / math.sqrt(max(1, x[0].numel()) * self.qmax)
        s = s * g + (s - s * g).detach()
        q = torch.clamp(x / s, self.qmin, self.qmax)
        q = q + (torch.round(q) - q).detach()
        return q * s


def make_ranges_learnable(qnet: QuantPlainNet) -> int:
    """Give every calibrated activation quantizer a trainable range, starting from its amax."""
    count = 0
    for q in qnet.activation_quantizers().values():
        if q.calibrated and not isinstance(q, LearnableRangeQuantizer):
            q.__class__ = LearnableRangeQuantizer
            q.learned_amax = nn.Parameter(q.amax.detach().clone())
            count += 1
    return count


@torch.no_grad()
def freeze_ranges(qnet: QuantPlainNet) -> dict[str, float]:
    """Write learned ranges back as fixed amax buffers (what export reads); returns them."""
    frozen = {}
    for name, q in qnet.activation_quantizers().items():
        if isinstance(q, LearnableRangeQuantizer):
            value = q.learned_amax.detach().abs().clone()
            del q.learned_amax
            q.__class__ = TensorQuantizer
            q.set_amax(value)
            frozen[name] = float(value)
    return frozen


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


def _ce(smoothing: float):
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=smoothing)

    return loss


# --------------------------------------------------------------------------- the job


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


def _parse_grad_mult(grad_mult: str) -> tuple[str, str | None]:
    if grad_mult in ("none", "bn", "sgs"):
        return grad_mult, None
    if grad_mult.startswith("repopt:"):
        return "repopt", grad_mult.split(":", 1)[1]
    raise InputError(f"--grad-mult {grad_mult!r}: use none, bn, sgs or repopt:SCALES_FILE")


@torch.no_grad()
def _top1(model: nn.Module, dataset, limit: int | None = None) -> float:
    from ..devices import module_device

    correct = total = 0
    model.eval()
    device = module_device(model)
    for x, y in dataset.batches(128, limit=limit):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * correct / max(1, total)


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
    learnable_ranges: bool = False,
    resume: bool = False,
    checkpoint_every: int = 0,
    stop_after_steps: int | None = None,
    seed: int = 0,
    load_kwargs: dict | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    resize: int | None = None,
    preprocessing=None,
    allow_mismatch: bool = False,
    device: str | torch.device | None = "auto",
    amp: str | None = None,
) -> QATResult:
    """Fine-tune a checkpoint's fused model with fake quantization and export its INT8 ONNX.

    Writes into `output_dir` (rank 0 only): fused.pt, model_fp32.onnx (the QAT-tuned float
    weights), model_int8_<target>.onnx, calib.json, qat_state.pt (training state, every epoch)
    and report.json with FP32, PTQ and QAT top-1 on the validation data. Calibration and
    training run on `device` (under torchrun: this rank's GPU, see `init_world`), with `amp`
    ("bf16"/"fp16") autocast in training; export runs on the CPU.

    >>> r = qat("repvgg.pth", train_data="train/", val_data="val/", output_dir="qat/")  # doctest: +SKIP
    >>> r.report["ptq_top1"], r.report["qat_top1"]                                       # doctest: +SKIP
    """
    from ..checkpoints import load, save_fused
    from ..data import calibration_sample, open_dataset, open_train_val
    from ..export.onnx import export_onnx
    from ..export.qdq import check_tensorrt_qdq, export_qdq
    from ..fuse import fuse
    from ..optim import AGD, AdamWWithMultipliers, SGDWithMultipliers
    from ..optim.multipliers import MultiplierMap
    from ..optim.repopt import load_scales
    from ..progress import set_quiet, status
    from ..train import train
    from ..zoo import zoo_entry

    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown --optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if target not in TARGETS:
        raise InputError(f"unknown --target {target!r}; use one of {', '.join(TARGETS)}")
    from ..devices import amp_dtype

    mult_kind, scales_path = _parse_grad_mult(grad_mult)
    # Every option is checked before loading or calibrating anything.
    from .. import validate

    TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr if lr is not None else DEFAULT_LR[optimizer],
                weight_decay=weight_decay, warmup_epochs=0.0, label_smoothing=0.0, seed=seed, augment="none",
                checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps).validate()
    validate.number("--temperature", temperature, low=0.0, low_open=True, high=1000.0, allow_none=False)
    validate.integer("--calib-samples", calib_samples, low=1, high=10_000_000, allow_none=False)
    validate.integer("--train-samples", train_samples, low=1)
    validate.number("--percentile", percentile, low=0.0, low_open=True, high=100.0, allow_none=False)
    names = {"fused": "fused.pt", "fp32": "model_fp32.onnx", "int8": f"model_int8_{target}.onnx",
             "calib": "calib.json", "report": "report.json"}
    refuse_overwriting_inputs([model, train_data, val_data, calib_cache, calib_data, scales_path],
                              files=[Path(output_dir) / n for n in [*names.values(), STATE_FILE]
                                     if not (n == STATE_FILE and resume)])
    world = init_world(device)
    where = world.device
    amp_type = amp_dtype(amp, where)
    if not world.is_main:
        set_quiet(True)
    out = ensure_writable_dir(output_dir) if world.is_main else Path(output_dir)
    started = time.perf_counter()

    # --- the model: default is the built-in zoo's RepVGG, the family whose PTQ loses the most
    if model is None:
        model = str(zoo_entry("repvgg").file)
        train_data = train_data or "builtin"
        val_data = val_data or "builtin"
    if train_data is None:
        raise DataError("QAT needs --train-data (an ImageFolder tree, labelled .npz, or 'builtin')")
    loaded = load(model, **(load_kwargs or {}))
    if loaded.model is None:
        raise InputError(f"{model} is a scales file with no weights; {loaded.deploy_steps}")
    if isinstance(loaded.model, PlainNet):
        plain, equivalence = loaded.model, None
    else:
        fused = fuse(loaded.model)
        plain, equivalence = fused.plain, fused.equivalence
    spec = plain.spec

    # Fed as it was calibrated: the given record, else the model file's or the cache's; fields
    # given as mean/std/resize override it (preprocess.py).
    from ..preprocess import preprocessing_of

    if preprocessing is None:
        preprocessing = preprocessing_of(model)
    if preprocessing is None and calib_cache is not None:
        preprocessing = preprocessing_of(calib_cache)
    if preprocessing is None:  # one record for training, validation and calibration: the training data's
        preprocessing = open_dataset(train_data, split="train", image_size=spec.input_size, channels=spec.in_channels,
                                     mean=mean, std=std, resize=resize).preprocessing
    prep = dict(mean=mean, std=std, resize=resize, preprocessing=preprocessing)
    train_set, val_set = open_train_val(train_data, image_size=spec.input_size, channels=spec.in_channels,
                                        val_source=val_data, seed=seed, **prep)
    if train_samples is not None:
        # A seeded subset: a quick QAT on a large set, and the fast path the tests take.
        train_set = calibration_sample(train_set, train_samples, seed)
    if val_set is not None and not val_set.has_labels:
        raise DataError(f"validation data {val_data} has no labels; give a class-folder layout or labelled arrays")

    # --- calibration (the PTQ starting point)
    qnet = QuantPlainNet(plain, target).to(where)
    plain.to(where)  # the FP32 figure and the distillation teacher run beside the student
    qnet.set_weight_ranges()
    if calib_cache is not None:
        cache = CalibrationCache.load(calib_cache)
        cache.check_model(plain, source=str(calib_cache))
        qnet.load_ranges(cache.amax)
    else:
        source = calib_data if calib_data is not None else train_data
        calib_set = calibration_sample(
            open_dataset(source, split="train", image_size=spec.input_size, channels=spec.in_channels, **prep),
            calib_samples, seed)
        cache = calibrate(qnet, (x for x, _ in calib_set.batches(BATCH)), method=calib_method,
                          percentile=percentile, total_batches=calib_set.num_batches(BATCH),
                          data=calib_set.describe())
    fp32_top1 = _top1(plain, val_set) if val_set is not None else None
    ptq_top1 = _top1(qnet, val_set) if val_set is not None else None
    status(f"qat: {loaded.variant}: FP32 top-1 {fp32_top1}, PTQ ({cache.method}) top-1 {ptq_top1}")

    # --- multipliers, loss, optimizer
    multipliers = MultiplierMap(qnet)
    hooks = []
    if mult_kind == "repopt":
        set_prior_multipliers(multipliers, qnet, load_scales(scales_path, spec), optimizer)
    elif mult_kind == "bn":
        set_prior_multipliers(multipliers, qnet, branch_scales_from_bn(loaded.model), optimizer)
    elif mult_kind == "sgs":
        if optimizer != "sgd":
            status("qat: note: SGS is exact for SGD only; with AdamW/AGD it scales the update instead")
        hook = QuantSGSHook(train_set, seed=seed)
        hook.qnet = qnet
        hooks.append(hook)
    if learnable_ranges:
        if optimizer == "agd":
            raise InputError("--learnable-ranges trains scalar ranges, which AGD does not update; use sgd or adamw")
        make_ranges_learnable(qnet)
    if optimizer == "agd":
        # AGD updates matrices only (reference.md §3): biases keep their fused values.
        for name, p in qnet.named_parameters():
            if p.dim() < 2:
                p.requires_grad_(False)
    teacher = plain.eval()
    inner = distillation_loss(teacher, temperature) if distill else _ce(0.0)
    loss_fn = _with_weight_ranges(qnet, inner)
    step_lr = lr if lr is not None else DEFAULT_LR[optimizer]
    if not (math.isfinite(step_lr) and step_lr > 0):
        raise InputError(f"--lr must be a positive number, got {step_lr}")

    trained: nn.Module = qnet
    if world.distributed:
        # Buffers (the frozen ranges) are identical on every rank; not broadcasting them keeps
        # rank 0's extra validation forwards free of collectives.
        import warnings

        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers but its replacement still syncs at init;
            # the deprecation note itself says to keep broadcast_buffers=False for now.
            warnings.simplefilter("ignore", FutureWarning)
            ids = [where.index] if where.type == "cuda" else None
            trained = nn.parallel.DistributedDataParallel(qnet, device_ids=ids, broadcast_buffers=False)

    def make_optimizer(groups: list[dict], mults) -> torch.optim.Optimizer:
        if optimizer == "sgd":
            return SGDWithMultipliers(groups, mults, lr=step_lr, momentum=0.9)
        if optimizer == "adamw":
            return AdamWWithMultipliers(groups, mults, lr=step_lr)
        return AGD([p for g in groups for p in g["params"]], mults, gain=step_lr)

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=step_lr, weight_decay=weight_decay,
                         warmup_epochs=0.0, label_smoothing=0.0, seed=seed, augment="none",
                         checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps)
    # Only rank 0 writes into the output directory. The other ranks keep their (identical, since
    # DDP keeps replicas in sync) training state in a private temporary file, and on --resume
    # start from a copy of rank 0's.
    private = None
    state_path = out / STATE_FILE
    if not world.is_main:
        private = Path(tempfile.mkdtemp(prefix=f"repdeploy-qat-rank{world.rank}-"))
        if resume and state_path.exists():
            shutil.copyfile(state_path, private / STATE_FILE)
        state_path = private / STATE_FILE
    # What makes a saved state this run's: a state from another model, calibration or target must
    # never be adopted (its weights and ranges would be exported under this run's name).
    from .calib_cache import weights_fingerprint

    identity = {
        "model": weights_fingerprint(plain), "arch": spec.to_dict(), "target": target,
        "ranges_sha256": hashlib.sha256(json.dumps(sorted(cache.amax.items())).encode()).hexdigest(),
        "calibration": {"cache": cache.weights_sha256, "method": cache.method, "samples": cache.samples,
                        "percentile": cache.percentile},
        "grad_mult": grad_mult, "distill": distill, "temperature": float(temperature), "optimizer": optimizer,
        "learnable_ranges": learnable_ranges, "train_samples": train_samples,
    }
    try:
        result = train(trained, make_optimizer, shard(train_set, world), val_set if world.is_main else None, config,
                       multipliers=multipliers, hooks=hooks, loss_fn=loss_fn, state_path=state_path,
                       resume=resume, uses_lr_schedule=optimizer != "agd", description=f"qat {spec.name}",
                       identity=identity, device=where, amp=amp_type)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    learned = freeze_ranges(qnet)
    qnet.set_weight_ranges()
    qnet.eval()
    # Export and the figures after training run on the CPU: the files do not depend on the device.
    qnet.cpu()
    plain.cpu()
    _barrier(world)
    if result.stopped_early:
        return QATResult(out, None, {"stopped_early": True, "steps": result.steps}, qnet)
    if not world.is_main:
        return QATResult(out, None, {"rank": world.rank}, qnet)

    qat_top1_torch = _top1(qnet, val_set) if val_set is not None else None
    tuned = qnet.float_model()
    stage = make_scratch_dir(out, "set", "qat")
    try:
        record = train_set.preprocessing
        save_fused(tuned, stage / names["fused"], extra={"source": str(model), "qat": True,
                                                        "preprocessing": record.to_dict()})
        export_onnx(tuned, stage / names["fp32"], input_size=spec.input_size, in_channels=spec.in_channels,
                    preprocessing=record)
        export_qdq(qnet, stage / names["fp32"], stage / names["int8"], target=target)
        # The cache now describes the tuned weights (ranges unchanged), so it stays reusable.
        from .calib_cache import weights_fingerprint

        cache.weights_sha256 = weights_fingerprint(tuned)
        for name, amax in learned.items():
            cache.tensors[name].amax = amax
        cache.save(stage / names["calib"])
        report: dict[str, Any] = {
            "tool": f"repdeploy {__version__}", "model": loaded.variant, "source": str(model),
            "target": target, "fusion": equivalence.to_dict() if equivalence else None,
            "preprocessing": record.to_dict(),
            "calib_method": cache.method, "calib_samples": cache.samples,
            "optimizer": optimizer, "lr": step_lr, "epochs": epochs, "batch_size": batch_size,
            "grad_mult": grad_mult, "distill": distill, "learnable_ranges": learnable_ranges,
            "world_size": world.size, "device": str(where), "amp": amp or "none",
            "fp32_top1": fp32_top1, "ptq_top1": ptq_top1, "qat_top1_torch": qat_top1_torch,
            "training": result.to_dict(),
        }
        if val_set is not None:
            from .fidelity import onnx_accuracy as _accuracy

            acc = _accuracy(stage / names["fp32"], stage / names["int8"], val_set, None)
            report["qat_top1"] = acc["int8_top1"]
            report["qat_top5"] = acc["int8_top5"]
            report["ptq_drop"] = fp32_top1 - ptq_top1
            report["qat_drop"] = fp32_top1 - acc["int8_top1"]
        if target == "tensorrt":
            import onnx

            report["tensorrt_rule_violations"] = check_tensorrt_qdq(onnx.load(str(stage / names["int8"])))
        # The same verdicts as PTQ (verify.py): the exported graphs must compute what was trained.
        report["verdicts"] = _verdicts(tuned, qnet, stage / names["fp32"], stage / names["int8"],
                                       val_set if val_set is not None else train_set, spec.input_size)
        mismatches = [v["line"] for v in report["verdicts"] if not v["passed"]]
        report["status"] = "FAILED" if mismatches and not allow_mismatch else "PASSED"
        report["allow_mismatch"] = allow_mismatch
        report["files"] = dict(names)
        report["seconds"] = round(time.perf_counter() - started, 2)
        write_json_atomic(stage / names["report"], report)
        commit_files(stage, out, [names[k] for k in ("fused", "fp32", "int8", "calib", "report")])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if mismatches and not allow_mismatch:
        raise VerificationError(f"{loaded.variant} after QAT: {mismatches[0]}; see {out / names['report']} "
                                "verdicts; pass --allow-mismatch to keep it anyway")
    return QATResult(out, out / names["int8"], report, qnet)


@torch.no_grad()
def _verdicts(tuned: PlainNet, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, dataset,
              input_size: int) -> list[dict]:
    """ORT FP32 vs the tuned torch model and ORT INT8 vs its fake-quant model, as ptq judges them."""
    from .. import verify
    from .fidelity import VERIFY_IMAGES, images_for, run_ort as _run_ort

    n = images_for(input_size, VERIFY_IMAGES, 32)
    x = torch.cat([b for b, _ in dataset.batches(BATCH, limit=n)])
    qnet.eval()
    ref = torch.cat([tuned(c) for c in x.split(BATCH)]).numpy()
    fake = torch.cat([qnet(c) for c in x.split(BATCH)]).numpy()
    return [
        verify.judge_logits("ort_fp32", ref, _run_ort(fp32_onnx, x), reference_name="torch FP32 (QAT-tuned)",
                              candidate_name="ORT FP32", tolerance=verify.FP32_ORT_REL_TOL).to_dict(),
        verify.judge_logits("ort_int8", fake, _run_ort(int8_onnx, x), reference_name="torch fake-quant (QAT)",
                              candidate_name="ORT INT8", min_sqnr_db=verify.INT8_ORT_MIN_SQNR_DB,
                              min_agreement=verify.INT8_ORT_MIN_AGREEMENT).to_dict(),
    ]
