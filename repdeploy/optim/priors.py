"""Gradient priors for quantization-aware training: the structural prior, kept as multipliers.

During its own training a RepVGG kernel was shaped by its branches, a RepOpt-VGG kernel by its
hyper-searched scales. QAT fine-tunes the fused kernel, and without help the branch structure
is forgotten; these producers re-apply it to the fake-quant model's gradients (SGD) or updates
(AdamW, AGD) through the same `MultiplierMap` the RepOptimizer and SGS write into:

- `branch_scales_from_bn`: per-channel branch scales of a RepVGG train-form model, from its BNs,
  in the scales-file layout, so they feed the same multiplier code as RepOpt scales;
- `set_prior_multipliers`: the RepOpt multipliers of such scales on the fake-quant convs;
- `QuantSGSHook`: Spatial Gradient Scaling recomputed from the fake-quant model's float twin.

The model they act on is `quant.quantizer.QuantPlainNet`; it is not imported here (the quant
layer sits above the optimizers), only its parameter layout is relied on (`_conv_param_name`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .multipliers import MultiplierMap
from .repopt import repopt_multiplier
from .sgs import compute_sgs

GRAD_MULT_PRODUCER = "qat-prior"


def _conv_param_name(layer_name: str) -> str:
    # QuantPlainNet layer "stage1.0.conv" keeps its float conv inside: net.stage1.0.conv.conv.weight
    return f"net.{layer_name}.conv.weight"


def branch_scales_from_bn(train_model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-channel branch scales of a RepVGG train-form model, from its BN statistics.

    In eval mode each branch's BN is a constant per-channel scale gamma / sqrt(var + eps), so a
    fused kernel W = s*W3 + t*pad(W1) (+ identity) is exactly a RepOpt block with scales s and
    t. Treating them as constants during QAT ignores that BN's statistics and affine parameters
    would also move; that is the approximation, and it is what keeps the prior's shape.
    The result is in the scales-file layout, so it feeds the same multiplier code as RepOpt.
    """
    from ..models.repvgg import RepVGG

    if not isinstance(train_model, RepVGG):
        raise InputError("--grad-mult bn needs a RepVGG train-form checkpoint (its branch BNs carry the prior); "
                         "use --grad-mult sgs or repopt:SCALES for other models")
    scales = {}
    for name, block in train_model.named_blocks():
        for branch, key in ((block.rbr_dense, "scale_conv"), (block.rbr_1x1, "scale_1x1")):
            bn = branch.bn
            scales[f"{name}.{key}.weight"] = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().clone()
        if block.rbr_identity is not None:
            bn = block.rbr_identity
            scales[f"{name}.scale_identity.weight"] = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().clone()
    return scales


def set_prior_multipliers(multipliers: MultiplierMap, qnet: nn.Module, scales: dict[str, torch.Tensor],
                          optimizer: str) -> None:
    """RepOpt multipliers (docs/facts.md §3) on the fake-quant model's (`QuantPlainNet`) conv weights.

    SGD squares the scales (gradient side); AdamW and AGD use them to the first power on the
    update, because those optimizers normalise the gradient and would cancel a gradient-side
    multiplier.
    """
    kind = "sgd" if optimizer == "sgd" else "adamw"
    for layer in qnet.spec.layers():
        if layer.groups != 1:
            continue  # the identity/1x1 prior of a grouped layer has a different shape; leave it free
        s = scales.get(f"{layer.name}.scale_conv.weight")
        t = scales.get(f"{layer.name}.scale_1x1.weight")
        if s is None or t is None:
            raise InputError(f"scales miss {layer.name}.scale_conv/scale_1x1 for {qnet.spec.name}; "
                             "use the scales file made for this architecture")
        shape = (layer.out_channels, layer.in_channels, 3, 3)
        mult = repopt_multiplier(shape, s, t, layer.has_identity, kind)
        # Normalise to mean 1 so the learning rate keeps its meaning whatever the scales' size.
        multipliers.set(GRAD_MULT_PRODUCER, _conv_param_name(f"{layer.name}.conv"), mult / mult.mean())


class QuantSGSHook:
    """Spatial Gradient Scaling for a fake-quant model: statistics from its float twin.

    The fake-quant layers call F.conv2d on the wrapped weight, so the SGS feature hooks are
    run on `qnet.float_model()` and the matrices mapped back to the wrapped parameter names.
    `qnet` (a `QuantPlainNet`) is set by the caller before training starts.
    """

    def __init__(self, data, refresh_every: int = 1, samples: int = 64, seed: int = 0) -> None:
        from ..data import calibration_sample

        self.batch = next(calibration_sample(data, samples, seed).batches(samples))[0]
        self.refresh_every = max(1, refresh_every)
        self.qnet: nn.Module | None = None

    def on_epoch_start(self, model: nn.Module, epoch: int, multipliers: MultiplierMap) -> None:
        if epoch % self.refresh_every or self.qnet is None:
            return
        matrices = compute_sgs(self.qnet.float_model(), self.batch)
        for name, matrix in matrices.items():
            layer = name.removesuffix(".weight")
            if layer.endswith(".conv") and layer in self.qnet.layers():
                multipliers.set("sgs", _conv_param_name(layer), matrix)


__all__ = ["branch_scales_from_bn", "set_prior_multipliers", "QuantSGSHook", "GRAD_MULT_PRODUCER"]
