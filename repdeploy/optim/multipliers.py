"""One gradient-multiplier mechanism: a map from weight tensor to an elementwise multiplier.

Gradient re-parameterization (RepOptimizer) and Spatial Gradient Scaling are both "multiply
this weight's gradient by a fixed tensor before the optimizer consumes it"; they differ only in
how the tensor is produced (from hyper-searched branch scales, or from the mutual information of
the layer's input). Producers write their tensors into a `MultiplierMap` under their own name;
the map multiplies the contributions of all producers together, and the optimizers in this
package apply the result either to the gradient (SGD: exact for linear updates) or to the update
(AdamW and AGD normalise the gradient, which would cancel a gradient-side multiplier).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..errors import InputError

GRAD, UPDATE = "grad", "update"


class MultiplierMap:
    """Per-parameter multipliers, possibly from several producers, bound to one model.

    >>> m = MultiplierMap(model)                       # doctest: +SKIP
    >>> m.set("repopt", "stage1.0.conv.weight", mask)  # doctest: +SKIP
    >>> m.apply_to_grads()                             # after loss.backward()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        self._params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self._by_producer: dict[str, dict[str, torch.Tensor]] = {}
        self._combined: dict[str, torch.Tensor] | None = None
        self._by_id: dict[int, torch.Tensor] | None = None

    def set(self, producer: str, name: str, multiplier: torch.Tensor) -> None:
        """Record `producer`'s multiplier for parameter `name` (replacing its previous one)."""
        param = self._params.get(name)
        if param is None:
            raise InputError(f"multiplier for {name!r}: the model has no such parameter")
        multiplier = multiplier.detach().to(dtype=param.dtype, device=param.device)
        try:
            torch.broadcast_shapes(multiplier.shape, param.shape)
        except RuntimeError as exc:
            raise InputError(
                f"multiplier for {name!r} has shape {tuple(multiplier.shape)}, "
                f"not broadcastable to the weight's {tuple(param.shape)}"
            ) from exc
        if not torch.isfinite(multiplier).all():
            raise InputError(f"multiplier for {name!r} from {producer} has NaN or Inf values")
        self._by_producer.setdefault(producer, {})[name] = multiplier.clone()
        self._combined = self._by_id = None

    def follow_params(self) -> None:
        """Move every multiplier to its parameter's device (after the model moved, e.g. to CUDA)."""
        for entries in self._by_producer.values():
            for name, m in entries.items():
                entries[name] = m.to(self._params[name].device)
        self._combined = self._by_id = None

    def clear(self, producer: str) -> None:
        self._by_producer.pop(producer, None)
        self._combined = self._by_id = None

    @property
    def producers(self) -> list[str]:
        return sorted(self._by_producer)

    def __len__(self) -> int:
        return len(self.combined())

    def __bool__(self) -> bool:
        return any(self._by_producer.values())

    def combined(self) -> dict[str, torch.Tensor]:
        """name -> product of every producer's multiplier for that weight."""
        if self._combined is None:
            out: dict[str, torch.Tensor] = {}
            for producer in sorted(self._by_producer):
                for name, m in self._by_producer[producer].items():
                    out[name] = out[name] * m if name in out else m
            self._combined = out
        return self._combined

    def by_param(self) -> dict[int, torch.Tensor]:
        if self._by_id is None:
            self._by_id = {id(self._params[n]): m for n, m in self.combined().items()}
        return self._by_id

    def items(self) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        for name, m in self.combined().items():
            yield self._params[name], m

    @torch.no_grad()
    def apply_to_grads(self) -> None:
        """Multiply every mapped gradient in place (call after backward, before the step)."""
        for param, m in self.items():
            if param.grad is not None:
                param.grad.mul_(m)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Plain nested dict of tensors, so a training checkpoint stays weights_only-loadable."""
        return {p: {n: m.clone() for n, m in d.items()} for p, d in self._by_producer.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self._by_producer.clear()
        self._combined = self._by_id = None
        for producer, entries in state.items():
            for name, m in entries.items():
                self.set(producer, name, m)


class SGDWithMultipliers(torch.optim.SGD):
    """torch SGD whose gradients are first multiplied by a `MultiplierMap`.

    The multiplier acts on the loss gradient only: torch adds weight decay inside `step`, after
    this multiplication, which is what keeps weight decay un-multiplied (docs/facts.md §3:
    constant-scale branches with decay equal the merged kernel with multiplied gradients and
    plain decay).
    """

    position = GRAD

    def __init__(self, params, multipliers: MultiplierMap | None = None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.multipliers = multipliers

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            raise InputError("SGD with gradient multipliers does not take a closure")
        if self.multipliers:
            self.multipliers.apply_to_grads()
        return super().step()


class AdamWWithMultipliers(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose update is multiplied by a `MultiplierMap`.

    Adam divides each gradient by its own running magnitude, so a gradient multiplier would
    cancel; the multiplier therefore scales the normalised update, and the decoupled decay stays
    un-multiplied. Moments are kept on the raw gradient.
    """

    position = UPDATE

    def __init__(self, params, multipliers: MultiplierMap | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        if lr < 0 or eps < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise InputError(f"invalid AdamW settings lr={lr} betas={betas} eps={eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.multipliers = multipliers

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            raise InputError("AdamW with gradient multipliers does not take a closure")
        by_param = self.multipliers.by_param() if self.multipliers else {}
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad
                if wd:
                    p.mul_(1 - lr * wd)
                state["exp_avg"].lerp_(g, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(eps)
                update = state["exp_avg"] / (1 - beta1**t) / denom
                m = by_param.get(id(p))
                if m is not None:
                    update.mul_(m)
                p.add_(update, alpha=-lr)
        return None


__all__ = ["MultiplierMap", "GRAD", "UPDATE", "SGDWithMultipliers", "AdamWWithMultipliers"]
