"""Accuracy-controlled mixed precision: leave the most sensitive layers in float until the drop fits.

As NNCF's accuracy-aware quantization and YOLOv6's practice do: rank layers by how much
quantizing each one alone hurts (the isolated logit SQNR of diagnostics.isolated_sqnr, one
forward per layer: paid only when the drop is over budget), then return
them to float one by one, most sensitive first, re-measuring top-1 of the fake-quant model
after each, until the drop is within the budget. What was reverted is listed in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..models.plain import PlainNet
from .diagnostics import isolated_sqnr
from .quantizer import QuantPlainNet


@dataclass
class FallbackStep:
    layer: str
    isolated_sqnr_db: float | None
    int8_top1: float


@dataclass
class FallbackResult:
    """Outcome of `restore_sensitive_layers`; accuracies in percent on the given images (a
    calibration holdout, so the eval accuracy measured afterwards is not chosen on itself)."""

    max_drop: float
    fp32_top1: float
    int8_top1_before: float
    int8_top1_after: float
    float_layers: list[str] = field(default_factory=list)
    steps: list[FallbackStep] = field(default_factory=list)
    # what the accuracies above were measured on: a holdout of the calibration source (ptq.py)
    holdout_source: str | None = None
    holdout_split: str | None = None
    holdout_images: int | None = None

    @property
    def met(self) -> bool:
        return self.fp32_top1 - self.int8_top1_after <= self.max_drop

    def to_dict(self) -> dict:
        d = asdict(self)
        d["met"] = self.met
        return d


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 128) -> float:
    """Top-1 (percent) of a torch model on preloaded images."""
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch)))
    return 100.0 * correct / max(1, len(labels))


def sensitivity_ranking(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor) -> list[tuple[str, float]]:
    """Layers, most sensitive first, with their isolated logit SQNR (dB)."""
    ranked = list(isolated_sqnr(plain, qnet, x).items())
    return sorted(ranked, key=lambda item: item[1] if np.isfinite(item[1]) else np.inf)


@torch.no_grad()
def restore_sensitive_layers(plain: PlainNet, qnet: QuantPlainNet, images: torch.Tensor, labels: torch.Tensor,
                             *, max_drop: float, ranking_images: int = 64,
                             max_layers: int | None = None) -> FallbackResult:
    """Disable quantization of the most sensitive layers of `qnet` until top-1 drop <= max_drop.

    >>> res = restore_sensitive_layers(plain, qnet, x_val, y_val, max_drop=1.0)  # doctest: +SKIP
    >>> res.float_layers                                                           # doctest: +SKIP
    ['stage0.conv']
    """
    fp32 = top1(plain, images, labels)
    before = after = top1(qnet, images, labels)
    result = FallbackResult(max_drop, fp32, before, after)
    if fp32 - before <= max_drop:
        return result
    ranking = sensitivity_ranking(plain, qnet, images[:ranking_images])
    for name, sqnr in ranking[: max_layers if max_layers is not None else len(ranking)]:
        qnet.disable(name)
        after = top1(qnet, images, labels)
        result.steps.append(FallbackStep(name, float(sqnr) if np.isfinite(sqnr) else None, after))
        result.float_layers.append(name)
        result.int8_top1_after = after
        if fp32 - after <= max_drop:
            break
    return result
