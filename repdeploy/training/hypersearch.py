"""Hyper-search: train RepOpt-VGG's search form and keep its branch scales.

The search form has per-channel trainable scales on its 3x3, 1x1 and identity branches
(`models.build(spec, "hs")`). After training it on a search set, those scales are the
RepOptimizer's hyper-parameters: they define the gradient multipliers and the initialisation
of the plain target model (see `repopt`). Upstream searches on CIFAR-100; repdeploy searches on
whatever data it is given (the built-in digits for the shipped zoo).

It runs the training loop, so it sits above `train.py` in the layer order although it lives
with the optimizers whose scales it produces; `repdeploy.optim` does not import it, so the
optimizers (which the loop uses) never pull in the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..data import ImageDataset
from ..errors import InputError
from ..models import build
from ..models.specs import ArchSpec
from .loop import TrainConfig, TrainResult, train
from ..optim.multipliers import SGDWithMultipliers
from ..optim.repopt import save_scales, scales_from_search_model, validate_scales


@dataclass
class SearchResult:
    scales: dict[str, torch.Tensor]
    train: TrainResult

    def summary(self) -> dict:
        values = torch.cat([v.flatten() for v in self.scales.values()])
        return {"scale_tensors": len(self.scales), "min": float(values.min()), "max": float(values.max()),
                "negative": int((values < 0).sum())}


def hypersearch(spec: ArchSpec, train_data: ImageDataset, val_data: ImageDataset | None = None,
                config: TrainConfig | None = None, *,
                momentum: float = 0.9, output: str | os.PathLike | None = None,
                state_path: str | os.PathLike | None = None, resume: bool = False,
                device: torch.device | str | None = None, amp: torch.dtype | None = None) -> SearchResult:
    """Train the hyper-search form of `spec` with SGD and return (and optionally save) its scales."""
    if spec.family != "repopt":
        raise InputError(f"hyper-search is for RepOpt-VGG architectures; {spec.name} is a {spec.family} model")
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    model = build(spec, "hs")
    result = train(
        model,
        lambda groups, multipliers: SGDWithMultipliers(groups, multipliers, lr=config.lr, momentum=momentum),
        train_data, val_data, config, state_path=state_path, resume=resume, description="hypersearch",
        device=device, amp=amp,
    )
    scales = {k: v.cpu() for k, v in scales_from_search_model(model).items()}
    validate_scales(scales, spec, source="searched scales")
    if output is not None:
        save_scales(scales, output)
    return SearchResult(scales, result)


__all__ = ["hypersearch", "SearchResult"]
