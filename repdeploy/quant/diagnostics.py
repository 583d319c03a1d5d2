"""Per-layer quantization diagnostics: why a model loses accuracy in INT8, layer by layer.

- weight statistics per layer: range, std, and the share of kernel magnitude at the 3x3 centre
  tap. Fused RepVGG kernels carry the 1x1 and identity branches in that tap, which makes it an
  outlier that stretches the per-channel int8 range (reference.md §4); RepOpt-VGG kernels do not.
- per-layer SQNR: each layer's output in the fully quantized model against the float model
  (cumulative error up to that layer), and with only that layer quantized (its own sensitivity).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..evaluate import sqnr_db
from ..models.plain import PlainNet
from .quantizer import QuantConv2d, QuantPlainNet


@dataclass
class LayerDiagnostics:
    """One quantized layer's weight statistics and SQNR figures."""

    layer: str
    kind: str  # "conv3x3" | "conv1x1" | "linear"
    out_channels: int
    weight_min: float
    weight_max: float
    weight_std: float
    centre_std: float | None  # std of the centre taps (3x3 convs)
    centre_share: float | None  # sum |centre tap| / sum |kernel| (1/9 for a flat kernel)
    channel_range_ratio: float  # largest / median per-channel max |w|: per-tensor int8 would lose this
    weight_sqnr_db: float  # weights alone, per-channel int8 vs float
    activation_amax: float | None
    sqnr_db: float | None = None  # layer output, whole model quantized vs float
    isolated_sqnr_db: float | None = None  # model logits, only this layer quantized vs float

    def to_dict(self) -> dict:
        return {k: _finite(v) for k, v in asdict(self).items()}


def _finite(v):
    # JSON has no inf/nan; a layer that quantizes exactly reports None, not Infinity.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@torch.no_grad()
def weight_diagnostics(qnet: QuantPlainNet) -> list[LayerDiagnostics]:
    """Weight statistics of every quantized layer of `qnet` (its weight ranges must be set)."""
    out = []
    ranges = qnet.ranges()
    for name, layer in qnet.layers().items():
        module: nn.Module = layer.conv if isinstance(layer, QuantConv2d) else layer.linear
        w = module.weight.detach().float()
        kind = "linear" if w.dim() == 2 else ("conv3x3" if w.shape[-1] == 3 else "conv1x1")
        centre_std = centre_share = None
        if kind == "conv3x3":
            centre = w[:, :, 1, 1]
            centre_std = float(centre.std()) if centre.numel() > 1 else 0.0
            total = float(w.abs().sum())
            centre_share = float(centre.abs().sum()) / total if total > 0 else None
        per_channel = w.abs().flatten(1).amax(1)
        median = float(per_channel.median())
        wq = layer.weight_quantizer
        was = wq.enabled
        wq.enabled = True
        w_fq = wq(module.weight).detach()
        wq.enabled = was
        out.append(LayerDiagnostics(
            layer=name, kind=kind, out_channels=int(w.shape[0]), weight_min=float(w.min()),
            weight_max=float(w.max()), weight_std=float(w.std()), centre_std=centre_std,
            centre_share=centre_share,
            channel_range_ratio=float(per_channel.max()) / median if median > 0 else float("inf"),
            weight_sqnr_db=sqnr_db(w.numpy(), w_fq.numpy()),
            activation_amax=ranges.get(layer.input_quantizer.name),
        ))
    return out


def _layer_outputs(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> dict[str, np.ndarray]:
    outputs: dict[str, np.ndarray] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=name: outputs.__setitem__(n, o.detach().numpy()))
               for name, m in modules.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


@torch.no_grad()
def layer_sqnr(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, isolated: bool = True) -> dict[str, dict]:
    """Per-layer SQNR (dB) on inputs `x`: {layer: {"sqnr_db", "isolated_sqnr_db"}}.

    `sqnr_db` compares each layer's output with every quantizer on; `isolated_sqnr_db` compares
    the logits with only that layer quantized, which ranks layers for mixed precision.
    """
    plain.eval()
    qnet.eval()
    float_modules = dict(plain.named_modules())
    layers = qnet.layers()
    ref = _layer_outputs(plain, {n: float_modules[n] for n in layers}, x)
    quant = _layer_outputs(qnet, layers, x)
    result = {n: {"sqnr_db": sqnr_db(ref[n], quant[n])} for n in layers}
    if isolated:
        logits = plain(x).numpy()
        enabled = {q: q.enabled for q in qnet.quantizers()}
        try:
            qnet.disable()
            for n in layers:
                qnet.enable(n)
                result[n]["isolated_sqnr_db"] = sqnr_db(logits, qnet(x).numpy())
                qnet.disable(n)
        finally:
            for q, on in enabled.items():
                q.enabled = on
    return result


def diagnose(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, isolated: bool = True) -> list[LayerDiagnostics]:
    """Weight statistics and SQNR of every layer, in forward order."""
    records = weight_diagnostics(qnet)
    sq = layer_sqnr(plain, qnet, x, isolated=isolated)
    for r in records:
        r.sqnr_db = sq[r.layer]["sqnr_db"]
        r.isolated_sqnr_db = sq[r.layer].get("isolated_sqnr_db")
    return records


def summary(records: list[LayerDiagnostics]) -> dict:
    """The figures a reader compares across models (e.g. RepVGG vs RepOpt-VGG)."""
    convs = [r for r in records if r.kind == "conv3x3"]
    shares = [r.centre_share for r in convs if r.centre_share is not None]
    ranked = sorted((r for r in records if r.isolated_sqnr_db is not None and math.isfinite(r.isolated_sqnr_db)),
                    key=lambda r: r.isolated_sqnr_db)
    return {
        "mean_centre_share": float(np.mean(shares)) if shares else None,
        "max_centre_share": float(np.max(shares)) if shares else None,
        "max_channel_range_ratio": _finite(max((r.channel_range_ratio for r in records), default=None)),
        "min_weight_sqnr_db": _finite(min((r.weight_sqnr_db for r in records), default=None)),
        "most_sensitive_layers": [r.layer for r in ranked[:3]],
    }
