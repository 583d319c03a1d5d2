"""RepOptimizer (RepOpt-VGG, ICLR 2023): a plain conv trained as if it had branches.

A hyper-searched CSLA block (3x3 conv times per-channel scale s, 1x1 conv times scale t, and a
trainable identity) trained with SGD moves its merged kernel exactly as one plain 3x3 kernel
moves when its gradient is multiplied by

    s[o]^2 everywhere + t[o]^2 at the centre tap + 1 at the centre where o == i (identity)

and when the plain kernel starts from the merged initialisation s*W3 + t*pad(W1) + I. Weight
decay is not multiplied. This module turns a scales file into those multipliers (a producer of
the shared `MultiplierMap`), applies the initialisation rule, and reads and writes scales files
in the upstream format (a plain dict of 1-D tensors keyed `stage{k}.{i}.scale_conv.weight`, ...).

AdamW: Adam's step is invariant to a positive gradient scale and flips with a negative one, so
a branch with scale s contributes |s| * adam(G) to the merged kernel: the multiplier has power 1
on |s|, |t| and is applied to the normalised update (not the gradient). With positive scales
this is the "same with power 1" of docs/facts.md §3; negative searched scales (they occur) need the
absolute value for the equivalence to hold.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from ..models.specs import ArchSpec, LayerSpec
from .multipliers import MultiplierMap

PRODUCER = "repopt"
SCALE_KINDS = ("scale_conv", "scale_1x1", "scale_identity")


def repopt_multiplier(weight_shape: torch.Size | tuple[int, ...], s: torch.Tensor, t: torch.Tensor,
                      has_identity: bool, optimizer: str = "sgd") -> torch.Tensor:
    """The multiplier of one 3x3 kernel (out, in, 3, 3) from its branch scales.

    `optimizer` "sgd" squares the scales (gradient multiplier); "adamw" uses |scale| (update
    multiplier). The identity contributes 1 at the centre of the diagonal either way.
    """
    out_ch, in_ch, kh, kw = weight_shape
    if (kh, kw) != (3, 3):
        raise InputError(f"RepOptimizer multipliers need a 3x3 kernel, got {kh}x{kw}")
    if optimizer == "sgd":
        a, b = s.float() ** 2, t.float() ** 2
    elif optimizer == "adamw":
        a, b = s.float().abs(), t.float().abs()
    else:
        raise InputError(f"unknown RepOptimizer kind {optimizer!r}; use sgd or adamw")
    mask = a.view(-1, 1, 1, 1).expand(out_ch, in_ch, 3, 3).clone()
    mask[:, :, 1, 1] += b.view(-1, 1)
    if has_identity:
        if out_ch != in_ch:
            raise InputError(f"identity branch needs in == out channels, got {in_ch} -> {out_ch}")
        idx = torch.arange(out_ch)
        mask[idx, idx, 1, 1] += 1.0
    return mask


def merged_kernel(w3x3: torch.Tensor, w1x1: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                  has_identity: bool) -> torch.Tensor:
    """The initialisation rule: s[o] * W3x3 + t[o] * pad(W1x1) (+ identity at the diagonal centre)."""
    kernel = w3x3 * s.view(-1, 1, 1, 1) + F.pad(w1x1, [1, 1, 1, 1]) * t.view(-1, 1, 1, 1)
    if has_identity:
        idx = torch.arange(kernel.shape[0])
        kernel = kernel.clone()
        kernel[idx, idx, 1, 1] += 1.0
    return kernel


def _block_scales(scales: Mapping[str, torch.Tensor], layer: LayerSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return scales[f"{layer.name}.scale_conv.weight"], scales[f"{layer.name}.scale_1x1.weight"]


def conv_weight_name(layer: LayerSpec) -> str:
    return f"{layer.name}.conv.weight"


def set_repopt_multipliers(multipliers: MultiplierMap, spec: ArchSpec, scales: Mapping[str, torch.Tensor],
                           optimizer: str = "sgd") -> None:
    """Write the RepOptimizer multiplier of every block's `conv.weight` into the map."""
    validate_scales(scales, spec, source="scales")
    multipliers.clear(PRODUCER)
    for layer in spec.layers():
        s, t = _block_scales(scales, layer)
        shape = (layer.out_channels, layer.in_channels, 3, 3)
        multipliers.set(PRODUCER, conv_weight_name(layer), repopt_multiplier(shape, s, t, layer.has_identity, optimizer))


@torch.no_grad()
def repopt_initialize(model: nn.Module, scales: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
    """Initialise a RepOpt-VGG target model's kernels by the rule of docs/facts.md §3.

    Each `conv.weight` (already initialised as a 3x3 conv) becomes s*W3x3 + t*pad(W1x1) (+ I),
    where W1x1 is drawn like a fresh 1x1 conv (torch's default Kaiming-uniform bound 1/sqrt(fan_in)).
    """
    spec: ArchSpec = model.spec  # type: ignore[assignment]
    validate_scales(scales, spec, source="scales")
    blocks = dict(model.named_blocks())  # type: ignore[operator]
    for layer in spec.layers():
        conv = blocks[layer.name].conv
        s, t = _block_scales(scales, layer)
        bound = 1.0 / math.sqrt(layer.in_channels)
        w1 = torch.empty(layer.out_channels, layer.in_channels, 1, 1).uniform_(-bound, bound, generator=generator)
        conv.weight.copy_(merged_kernel(conv.weight, w1, s.to(conv.weight), t.to(conv.weight), layer.has_identity))


def expected_scale_keys(spec: ArchSpec) -> dict[str, int]:
    """Every key a complete scales file for `spec` holds, with its length."""
    keys: dict[str, int] = {}
    for layer in spec.layers():
        keys[f"{layer.name}.scale_conv.weight"] = layer.out_channels
        keys[f"{layer.name}.scale_1x1.weight"] = layer.out_channels
        if layer.has_identity:
            keys[f"{layer.name}.scale_identity.weight"] = layer.out_channels
    return keys


def validate_scales(scales: Mapping[str, torch.Tensor], spec: ArchSpec, source: str) -> None:
    """Check a scales dict fits `spec`: every block's scales present, right length, finite."""
    expected = expected_scale_keys(spec)
    missing = [k for k in expected if k not in scales]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} scales missing for {spec.name} (first: {missing[0]}); "
            "was it searched for another architecture? run `repdeploy hypersearch --arch "
            f"{spec.name}`"
        )
    for key, length in expected.items():
        v = scales[key]
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.numel() != length:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{source}: {key} should be a 1-D tensor of {length}, got {shape}")
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{source}: {key} has NaN or Inf values")


def scales_from_search_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """The upstream scales dict of a trained hyper-search model (`models.build(spec, "hs")`)."""
    return {
        name: value.detach().clone().float()
        for name, value in model.state_dict().items()
        if name.rsplit(".", 2)[-2] in SCALE_KINDS
    }


def save_scales(scales: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a scales file (plain dict of 1-D tensors; loads with weights_only=True)."""
    from ..io import save_torch_atomic

    save_torch_atomic(path, {k: v.detach().clone().contiguous() for k, v in scales.items()})


def load_scales(path: str | os.PathLike, spec: ArchSpec | None = None) -> dict[str, torch.Tensor]:
    """Read an upstream-format scales file safely (weights_only) and check it against `spec`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"scales file {path} does not exist; make one with `repdeploy hypersearch`") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        from ..checkpoints.files import load_error_reason

        raise CheckpointError(f"scales file {path} cannot be read safely ({load_error_reason(exc)}); make it again "
                              "with `repdeploy hypersearch`") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"scales file {path} is not a dict of scale tensors")
    scales = {k.removeprefix("module."): v for k, v in obj.items()
              if isinstance(k, str) and k.rsplit(".", 2)[-2:-1] and k.rsplit(".", 2)[-2] in SCALE_KINDS}
    if not scales:
        raise CheckpointError(f"scales file {path} holds no *.scale_conv/scale_1x1/scale_identity weights; "
                              "is it a model checkpoint rather than a scales file?")
    if spec is not None:
        validate_scales(scales, spec, source=f"scales file {path}")
    return scales


__all__ = [
    "repopt_multiplier", "merged_kernel", "set_repopt_multipliers", "repopt_initialize",
    "expected_scale_keys", "validate_scales", "scales_from_search_model", "save_scales", "load_scales",
    "PRODUCER",
]
