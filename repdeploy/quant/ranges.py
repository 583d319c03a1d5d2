"""Activation ranges that train during QAT, and the optimizer that moves them.

A calibrated range can be wrong by a factor (a `max` cache on data with outliers is easily 100x
too wide). The range is therefore trained in log space, `amax = exp(log_amax)`, by its own Adam:
Adam's step does not depend on the gradient's size, and in log space a step of `lr` changes the
range by the same factor whether it is 100x off or 1.1x off, so a multiplicative error is undone
in about `log(error) / lr` steps. The weights keep their own optimizer and learning rate, which
the ranges' needs would otherwise dictate: LSQ trains the step size with the weights' optimizer,
whose lr is far too small for a range to travel two decades in a short fine-tune.

Written with public ops (clamp, a straight-through round) rather than torch's learnable
fake-quant ops, which neither ONNX exporter accepts (docs/facts.md §4); `freeze_ranges` turns
every quantizer back into a plain one with a fixed range before export.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .fake_quant import MIN_AMAX, TensorQuantizer
from .quantizer import QuantPlainNet

#: Adam's lr on log(amax): at most e^0.2 = 1.22x per step, so 100x takes ~25 steps.
DEFAULT_RANGE_LR = 0.2
RANGE_PARAM = "log_amax"


class LearnableRangeQuantizer(TensorQuantizer):
    """An activation quantizer whose range is a trainable `log_amax` (LSQ's gradient, in log space)."""

    log_amax: nn.Parameter

    def scale(self) -> torch.Tensor:
        return self.log_amax.exp().clamp_min(MIN_AMAX) / float(self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(self.name, x.detach())
        if not self.enabled or not self.calibrated:
            return x
        s = self.scale().to(x.dtype)
        q = torch.clamp(x / s, self.qmin, self.qmax)
        q = q + (torch.round(q) - q).detach()
        return q * s


def make_ranges_learnable(qnet: QuantPlainNet) -> int:
    """Give every calibrated activation quantizer a trainable range, starting from its amax."""
    count = 0
    for q in qnet.activation_quantizers().values():
        if q.calibrated and not isinstance(q, LearnableRangeQuantizer):
            q.__class__ = LearnableRangeQuantizer
            q.log_amax = nn.Parameter(q.amax.detach().clamp_min(MIN_AMAX).log().clone())
            count += 1
    return count


@torch.no_grad()
def freeze_ranges(qnet: QuantPlainNet) -> dict[str, float]:
    """Write learned ranges back as fixed amax buffers (what export reads); returns them."""
    frozen = {}
    for name, q in qnet.activation_quantizers().items():
        if isinstance(q, LearnableRangeQuantizer):
            value = q.log_amax.detach().exp().clamp_min(MIN_AMAX).clone()
            del q.log_amax
            q.__class__ = TensorQuantizer
            q.set_amax(value)
            frozen[name] = float(value)
    return frozen


def is_range_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == RANGE_PARAM


class WithRangeAdam:
    """The weights' optimizer plus an Adam on the log ranges, stepped together as one optimizer.

    `param_groups` lists the weights' groups first, then the range group, so a learning-rate
    schedule applied to every group (train.py) decays both, each from its own base lr; state
    is saved and restored as one dict, so a resumed run continues both.
    """

    def __init__(self, weights: torch.optim.Optimizer, ranges: list[nn.Parameter], lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"range lr must be a positive number, got {lr}")
        self.weights = weights
        self.ranges = torch.optim.Adam(ranges, lr=lr)

    @property
    def param_groups(self) -> list[dict]:
        return [*self.weights.param_groups, *self.ranges.param_groups]

    @property
    def state(self):
        return {**self.weights.state, **self.ranges.state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.weights.zero_grad(set_to_none=set_to_none)
        self.ranges.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        self.weights.step()
        self.ranges.step()

    def state_dict(self) -> dict:
        return {"weights": self.weights.state_dict(), "ranges": self.ranges.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"weights", "ranges"}:
            raise ValueError("not the state of a weights + ranges optimizer")
        self.weights.load_state_dict(state["weights"])
        self.ranges.load_state_dict(state["ranges"])


def split_range_groups(groups: list[dict]) -> tuple[list[dict], list[nn.Parameter]]:
    """Take the log ranges out of train.py's parameter groups: (weight groups, range params)."""
    weights, ranges = [], []
    for group in groups:
        keep = [(n, p) for n, p in zip(group["names"], group["params"]) if not is_range_param(n)]
        ranges += [p for n, p in zip(group["names"], group["params"]) if is_range_param(n)]
        if keep:
            weights.append({**group, "names": [n for n, _ in keep], "params": [p for _, p in keep]})
    return weights, ranges
