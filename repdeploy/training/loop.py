"""The training loop shared by `train`, `hypersearch` and QAT.

One function, `train`, runs a seeded, CPU-deterministic loop: per-step cosine learning rate with
linear warm-up, label-smoothed cross entropy (or a caller's loss, e.g. distillation), weight decay
groups as upstream, a `MultiplierMap` that optimizers apply, hooks for producers that refresh
multipliers (SGS), periodic atomic checkpoints of the whole training state (state.py),
and `resume` that reproduces the uninterrupted run bit for bit. What `repdeploy train` builds
and which optimizer it picks live in recipes.py, above this loop.

Determinism without saved RNG streams: the data order of epoch e is a permutation seeded by
(seed, e) and the augmentation of step k by (seed, k), so a resumed run only needs the step
count; the global torch RNG state is saved anyway for callers' losses that draw from it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..devices import autocast, module_device, to_device
from ..errors import InputError
from ..optim.multipliers import MultiplierMap
from ..progress import status, track
from .state import restore_state, save_state

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[list[dict], MultiplierMap], torch.optim.Optimizer]


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved with its checkpoints)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    augment: str = "shift"  # "none" | "shift" (random translation) | "shift-flip"
    clip_grad_norm: float | None = None
    checkpoint_every: int = 0  # steps between training-state checkpoints; 0 = once per epoch
    stop_after_steps: int | None = None  # end early (after checkpointing), e.g. a time-boxed job
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated)

    def validate(self) -> None:
        from .. import validate as check

        check.integer("--epochs", self.epochs, low=1, high=1_000_000, allow_none=False)
        check.integer("--batch-size", self.batch_size, low=1, high=65536, allow_none=False)
        check.number("--lr", self.lr, low=0.0, allow_none=False)
        check.number("--weight-decay", self.weight_decay, low=0.0, allow_none=False)
        check.number("--warmup-epochs", self.warmup_epochs, low=0.0, high=float(self.epochs), allow_none=False)
        check.number("--label-smoothing", self.label_smoothing, low=0.0, high=0.999, allow_none=False)
        check.number("--clip-grad", self.clip_grad_norm, low=0.0, low_open=True)
        check.integer("--checkpoint-every", self.checkpoint_every, low=0, allow_none=False)
        check.integer("stop_after_steps", self.stop_after_steps, low=1)
        check.integer("--eval-every", self.eval_every, low=1, allow_none=False)
        check.seed("--seed", self.seed)
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise InputError(f"invalid lr {self.lr}, weight decay {self.weight_decay} "
                             f"or label smoothing {self.label_smoothing}")
        if self.augment not in ("none", "shift", "shift-flip"):
            raise InputError(f"unknown augmentation {self.augment!r}; use none, shift or shift-flip")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    lr: float
    val_top1: float | None
    seconds: float


@dataclass
class TrainResult:
    """What a run did; `history` has one record per epoch run in this process or restored."""

    steps: int
    epochs: int
    train_loss: float
    val_top1: float | None
    images_per_second: float
    seconds: float
    resumed_from_step: int = 0
    stopped_early: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class TrainHook(Protocol):
    """Something that acts at epoch boundaries, e.g. a multiplier producer refreshing its map."""

    def on_epoch_start(self, model: nn.Module, epoch: int, multipliers: MultiplierMap) -> None: ...


def label_smoothing_loss(smoothing: float) -> LossFn:
    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=smoothing)

    return loss


def decays(name: str, param: torch.Tensor) -> bool:
    """Upstream weight-decay rule: no decay on 1-D parameters (biases, BN affine, branch scales)
    except the identity scales of RepOpt-VGG's hyper-search form, which upstream decays."""
    return param.dim() > 1 or name.endswith("scale_identity.weight")


def parameter_groups(model: nn.Module, weight_decay: float,
                     rule: Callable[[str, torch.Tensor], bool] = decays) -> list[dict]:
    """Two optimizer groups (decay / no decay) over the trainable parameters, names kept."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if rule(name, p) else no_decay).append((name, p))
    groups = []
    for members, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if members:
            groups.append({"params": [p for _, p in members], "names": [n for n, _ in members], "weight_decay": wd})
    return groups


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from 1/warmup to 1, then cosine decay to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def augment_batch(x: torch.Tensor, mode: str, seed: int, step: int) -> torch.Tensor:
    """Random translation by up to 1/8 of the image (edge-replicated), optional h-flip.

    Seeded by (seed, step) so no augmentation RNG state has to survive a resume.
    """
    if mode == "none":
        return x
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, [pad, pad, pad, pad], mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if mode == "shift-flip":
        flip = torch.rand(n, generator=g) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def top1_accuracy(model: nn.Module, dataset: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) in eval mode on the model's device; its train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    correct = total = 0
    for x, y in dataset.batches(batch_size):
        correct += int((model(to_device(x, device)).argmax(1).cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(1, total)


def train(
    model: nn.Module,
    make_optimizer: OptimizerFactory,
    train_data: ImageDataset,
    val_data: ImageDataset | None = None,
    config: TrainConfig | None = None,
    *,
    multipliers: MultiplierMap | None = None,
    hooks: Sequence[TrainHook] = (),
    loss_fn: LossFn | None = None,
    decay_rule: Callable[[str, torch.Tensor], bool] = decays,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    uses_lr_schedule: bool = True,
    description: str = "train",
    identity: dict | None = None,
    device: torch.device | str | None = None,
    amp: torch.dtype | None = None,
) -> TrainResult:
    """Train `model` in place and return what happened.

    make_optimizer(param_groups, multipliers) builds the optimizer (groups carry "weight_decay"
    and "names"); `multipliers` are filled by the caller (RepOpt) or by `hooks` (SGS). With
    `state_path`, the full training state is written there atomically every
    `config.checkpoint_every` steps (or every epoch) and at the end; `resume=True` continues from
    it. `uses_lr_schedule=False` leaves group learning rates alone (AGD has none). `identity`
    (plain data: model fingerprint, calibration, target...) is saved with the state, and a resume
    whose identity differs is refused, so a state is never adopted by another job.
    `device` (default: where the model already is) is where the model and every batch go;
    batches are drawn and augmented on the CPU first, so the data order and augmentation do
    not depend on the device. `amp` (torch.bfloat16 or torch.float16) runs the forward and
    loss under autocast; fp16 adds a gradient scaler, whose skipped steps on overflow are
    the only behaviour that differs from fp32 training.
    """
    config = config or TrainConfig()
    config.validate()
    device = torch.device(device) if device is not None else module_device(model)
    model.to(device)
    if loss_fn is None and not train_data.has_labels:
        # A caller's loss (e.g. distillation from a float teacher) may not need labels; ours does.
        raise InputError(f"training data {train_data.source} has no labels; use an ImageFolder layout or labelled arrays")
    if len(train_data) == 0:
        raise InputError(f"training data {train_data.source} is empty")
    multipliers = multipliers if multipliers is not None else MultiplierMap(model)
    if config.clip_grad_norm is not None and (multipliers or hooks):
        # Hooks (SGS) fill the map only once training starts, so their presence alone refuses too.
        producers = multipliers.producers + [type(h).__name__ for h in hooks]
        raise InputError(
            "gradient clipping breaks the gradient re-parameterization equivalence "
            f"(multipliers from {', '.join(producers)}); drop --clip-grad"
        )
    loss_fn = loss_fn or label_smoothing_loss(config.label_smoothing)
    multipliers.follow_params()
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(parameter_groups(model, config.weight_decay, decay_rule), multipliers)
    if uses_lr_schedule:
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    steps_per_epoch = train_data.num_batches(config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    step, history, partial = 0, [], (0.0, 0)
    if resume:
        if state_path is None or not Path(state_path).exists():
            raise InputError(f"--resume: no training state at {state_path}; start without --resume")
        point = restore_state(Path(state_path), model, optimizer, multipliers, asdict(config), identity)
        step, history, partial = point.step, [EpochRecord(**r) for r in point.history], point.partial
    resumed_from = step

    model.train()
    started = time.perf_counter()
    images = 0
    stopped_early = False
    last_loss = float("nan")
    first_epoch = step // steps_per_epoch
    for epoch in range(first_epoch, config.epochs):
        epoch_start = time.perf_counter()
        skip = step - epoch * steps_per_epoch
        if skip == 0:
            for hook in hooks:
                hook.on_epoch_start(model, epoch, multipliers)
        # A mid-epoch resume continues the interrupted epoch's running loss, so its record matches.
        loss_sum, loss_n = partial if skip else (0.0, 0)
        batches = train_data.batches(config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch, skip=skip)
        for x, y in track(batches, f"{description} epoch {epoch + 1}/{config.epochs}", steps_per_epoch - skip):
            if uses_lr_schedule:
                factor = lr_factor(step, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
            x = augment_batch(x, config.augment, config.seed, step)
            x, y = to_device(x, device), to_device(y, device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(model, x, y)
            if not torch.isfinite(loss):
                raise InputError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            if scaler is not None:
                scaler.scale(loss).backward()
                if config.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if config.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                optimizer.step()
            step += 1
            images += len(y)
            loss_sum += loss.item() * len(y)
            loss_n += len(y)
            last_loss = loss.item()
            end_of_epoch = step % steps_per_epoch == 0
            periodic = config.checkpoint_every > 0 and step % config.checkpoint_every == 0
            stop = config.stop_after_steps is not None and step >= config.stop_after_steps
            if state_path is not None and (periodic or stop) and not end_of_epoch:
                save_state(Path(state_path), model, optimizer, multipliers, asdict(config), step,
                           [asdict(r) for r in history], (loss_sum, loss_n), identity)
            if stop and not end_of_epoch:
                stopped_early = True
                break
        if stopped_early:
            break
        val_top1 = None
        if val_data is not None and len(val_data) and val_data.has_labels and (
            (epoch + 1) % max(1, config.eval_every) == 0 or epoch + 1 == config.epochs
        ):
            val_top1 = top1_accuracy(model, val_data)
        record = EpochRecord(epoch + 1, loss_sum / max(1, loss_n), optimizer.param_groups[0].get("lr", float("nan")), val_top1,
                             time.perf_counter() - epoch_start)
        history.append(record)
        status(f"{description} epoch {epoch + 1}/{config.epochs}: loss {record.train_loss:.4f}"
               + (f", val top-1 {val_top1:.2f}%" if val_top1 is not None else ""))
        if state_path is not None:
            save_state(Path(state_path), model, optimizer, multipliers, asdict(config), step,
                       [asdict(r) for r in history], identity=identity)
        if config.stop_after_steps is not None and step >= config.stop_after_steps and step < total_steps:
            stopped_early = True
            break
    seconds = time.perf_counter() - started
    final_val = next((r.val_top1 for r in reversed(history) if r.val_top1 is not None), None)
    model.eval()
    return TrainResult(
        steps=step, epochs=len(history), train_loss=history[-1].train_loss if history else last_loss,
        val_top1=final_val, images_per_second=images / seconds if seconds > 0 else 0.0, seconds=seconds,
        resumed_from_step=resumed_from, stopped_early=stopped_early, history=history,
    )


__all__ = [
    "TrainConfig", "TrainResult", "EpochRecord", "TrainHook", "train", "top1_accuracy",
    "parameter_groups", "decays", "lr_factor", "augment_batch", "label_smoothing_loss",
]
