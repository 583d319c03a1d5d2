"""Training recipes: what `repdeploy train` runs on top of the shared loop.

`train_architecture` builds a spec in its trainable form (RepVGG's branch form, RepOpt-VGG's
plain target form), sets up the optimizer it names with its gradient multipliers (RepOpt scales,
SGS, AGD's preparation) and hands it to `train.train`, with an identity that keeps a saved
training state from being adopted by another recipe. The hyper-search recipe, which produces
the scales the RepOpt optimizers need, is `training.hypersearch`.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn

from ..data import ImageDataset
from ..errors import InputError
from ..models import build
from ..models.specs import ArchSpec
from ..optim import AGD, AdamWWithMultipliers, MultiplierMap, SGDWithMultipliers, SpatialGradientScaling
from ..optim.agd import prepare_for_agd
from ..optim.repopt import repopt_initialize, set_repopt_multipliers
from .loop import TrainConfig, TrainResult, train

DEFAULT_LR = {"sgd": 0.1, "repopt-sgd": 0.1, "adamw": 1e-3, "repopt-adamw": 1e-3, "agd": 1.0}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "repopt-sgd": 1e-4, "adamw": 0.05, "repopt-adamw": 0.05, "agd": 0.0}


def train_architecture(
    spec: ArchSpec,
    train_data: ImageDataset,
    val_data: ImageDataset | None = None,
    config: TrainConfig | None = None,
    *,
    optimizer: str = "sgd",
    scales: dict[str, torch.Tensor] | None = None,
    sgs: bool = False,
    sgs_every: int = 5,
    momentum: float = 0.9,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    device: torch.device | str | None = None,
    amp: torch.dtype | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Build `spec` in its trainable form and train it with one of the supported optimizers.

    RepVGG trains in its branch (train) form; RepOpt-VGG in its plain target form, where
    "repopt-sgd"/"repopt-adamw" need the hyper-searched `scales` (initialisation rule +
    multipliers). `sgs=True` adds Spatial Gradient Scaling to any optimizer. AGD needs no lr.
    """
    config = config or TrainConfig()
    if optimizer not in DEFAULT_LR:
        raise InputError(f"unknown optimizer {optimizer!r}; use one of {', '.join(DEFAULT_LR)}")
    repopt = optimizer.startswith("repopt-")
    if repopt and spec.family != "repopt":
        raise InputError(f"{optimizer} trains plain RepOpt-VGG models; {spec.name} is a {spec.family} "
                         "model, train it with --optimizer sgd (its branches do the re-parameterization)")
    if repopt and scales is None:
        raise InputError(f"{optimizer} needs a scales file: run `repdeploy hypersearch --arch {spec.name} "
                         "-o scales.pth` first and pass --scales scales.pth")
    if scales is not None and not repopt:
        raise InputError(f"--scales only applies to --optimizer repopt-sgd or repopt-adamw, not {optimizer}")
    torch.manual_seed(config.seed)
    model = build(spec, "target" if spec.family == "repopt" else "train")
    multipliers = MultiplierMap(model)
    if repopt:
        repopt_initialize(model, scales, torch.Generator().manual_seed(config.seed))
        set_repopt_multipliers(multipliers, spec, scales, optimizer.removeprefix("repopt-"))
    if optimizer == "agd":
        prepare_for_agd(model, seed=config.seed)
    hooks = [SpatialGradientScaling(train_data, refresh_every=sgs_every, seed=config.seed)] if sgs else []

    def make(groups: list[dict], mults: MultiplierMap) -> torch.optim.Optimizer:
        if optimizer in ("sgd", "repopt-sgd"):
            return SGDWithMultipliers(groups, mults, lr=config.lr, momentum=momentum)
        if optimizer in ("adamw", "repopt-adamw"):
            return AdamWWithMultipliers(groups, mults, lr=config.lr)
        return AGD([p for g in groups for p in g["params"]], mults, gain=config.lr)

    # A state from another architecture, optimizer, data set or scales file is never adopted.
    scales_sha = None
    if scales is not None:
        digest = hashlib.sha256()
        for key in sorted(scales):
            digest.update(key.encode() + scales[key].detach().float().cpu().numpy().tobytes())
        scales_sha = digest.hexdigest()
    identity = {"arch": spec.to_dict(), "optimizer": optimizer, "sgs": sgs, "sgs_every": sgs_every,
                "momentum": momentum, "scales_sha256": scales_sha,
                # what the data is, not how its path was spelled (./imgs and imgs are one data set)
                "data": {k: v for k, v in train_data.describe().items() if k != "source"}}
    result = train(model, make, train_data, val_data, config, multipliers=multipliers, hooks=hooks,
                   state_path=state_path, resume=resume, uses_lr_schedule=optimizer != "agd",
                   description=f"train {spec.name}", identity=identity, device=device, amp=amp)
    return model.cpu(), result


__all__ = ["train_architecture", "DEFAULT_LR", "DEFAULT_WEIGHT_DECAY"]
