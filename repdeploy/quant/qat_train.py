"""The fine-tune of a QAT job: its loss (distillation, weight ranges that follow the weights), the
structural prior as gradient multipliers, and train.py's loop on this rank's shard.

quant/qat.py composes the job; this module is what trains between calibration and export.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import World, shard
from ..optim.priors import QuantSGSHook, branch_scales_from_bn, set_prior_multipliers
from ..training import TrainConfig
from .quantizer import QuantPlainNet
from .ranges import WithRangeAdam, split_range_groups

STATE_FILE = "qat_state.pt"


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5, smoothing: float = 0.1):
    """alpha * KL(teacher || student) at `temperature` (times T^2) + (1 - alpha) * cross entropy."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=1)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        return alpha * kl * temperature**2 + (1 - alpha) * F.cross_entropy(logits, y, label_smoothing=smoothing)

    return loss


def with_weight_ranges(qnet: QuantPlainNet, inner):
    """`inner` with the weight ranges reset to the weights before every step, so no weight is
    clipped by a stale range."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        qnet.set_weight_ranges()
        return inner(model, x, y)

    return loss


def structural_prior(qnet: QuantPlainNet, source: nn.Module, kind: str, scales_path, optimizer: str, train_set, seed: int):
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


def fine_tune(qnet: QuantPlainNet, world: World, optimizer: str, lr: float, range_lr: float, train_set, val_set,
               config: TrainConfig, multipliers, hooks, loss_fn, state_path: Path, resume: bool, identity: dict,
               amp_type):
    """train.py's loop on this rank's shard (DDP-wrapped when distributed); the TrainResult."""
    from ..optim import AGD, AdamWWithMultipliers, SGDWithMultipliers
    from ..training import train

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


