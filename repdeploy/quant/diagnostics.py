"""Per-layer quantization diagnostics: why a model loses accuracy in INT8, layer by layer.

- weight statistics per layer: range, std, and the share of kernel magnitude at the 3x3 centre
  tap. Fused RepVGG kernels carry the 1x1 and identity branches in that tap, which makes it an
  outlier that stretches the per-channel int8 range (docs/facts.md §4); RepOpt-VGG kernels do not.
- per-layer SQNR from forward hooks, in one pass of the float model and one of the fake-quant
  model: each layer's output in the fully quantized model against the float model (cumulative
  error up to that layer), and with only that layer's quantizers applied to its float input
  (the error it adds itself). `--diagnostics full` adds the logit SQNR with only that layer
  quantized, which needs one forward per layer: 27 of A0's 41 s and 28 minutes of D2se's run
  when it was the default (issue 22).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..evaluate import sqnr_db
from ..models.plain import PlainNet
from ..progress import steps
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
    own_sqnr_db: float | None = None  # layer output, only this layer quantized, on float inputs
    isolated_sqnr_db: float | None = None  # model logits, only this layer quantized (--diagnostics full)

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
            weight_sqnr_db=_db(float(w.square().sum(dtype=torch.float64)),
                               float((w - w_fq).square().sum(dtype=torch.float64))),
            activation_amax=ranges.get(layer.input_quantizer.name),
        ))
    return out


#: --diagnostics: "sample" (default) one float and one fake-quant pass over a sample, with
#: hooks; "full" adds each layer's isolated logit SQNR (one more forward per layer: minutes on a
#: deep model at 224-320 px); "off" writes no per-layer records.
MODES = ("full", "sample", "off")
HOOK_BATCH = 8  # images per hooked pass: one batch's layer outputs are held, never the sample's
def check_mode(mode: str) -> str:
    if mode not in MODES:
        from ..errors import InputError

        raise InputError(f"--diagnostics {mode!r}: use one of {', '.join(MODES)}")
    return mode


def _db(signal: float, noise: float) -> float:
    # The same figure as evaluate.sqnr_db, accumulated over batches.
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


class _Power:
    """Running sums of signal and noise power for one layer."""

    __slots__ = ("signal", "noise")

    def __init__(self) -> None:
        self.signal = self.noise = 0.0

    def add(self, ref: torch.Tensor, cand: torch.Tensor) -> None:
        # float64 accumulators over float32 elements: no double copy of a layer's output
        self.signal += float(ref.square().sum(dtype=torch.float64))
        self.noise += float((ref - cand).square().sum(dtype=torch.float64))

    def db(self) -> float:
        return _db(self.signal, self.noise)


@torch.no_grad()
def layer_sqnr(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, batch: int = HOOK_BATCH) -> dict[str, dict]:
    """Per-layer SQNR (dB) on inputs `x` from forward hooks: {layer: {"sqnr_db", "own_sqnr_db"}}.

    One pass of the float model and one of the fake-quant model per batch, whatever the depth.
    `sqnr_db` compares each layer's output with every quantizer on (the error accumulated up to
    that layer); `own_sqnr_db` compares it with only that layer's own quantizers applied, to the
    float model's input of that layer (the error the layer adds by itself), computed inside the
    float pass.
    """
    plain.eval()
    qnet.eval()
    float_modules = dict(plain.named_modules())
    layers = qnet.layers()
    cumulative = {n: _Power() for n in layers}
    own = {n: _Power() for n in layers}
    reference: dict[str, torch.Tensor] = {}
    in_quant_pass = [False]  # the float hooks call the quantized layers too; only the quant pass counts
    batches = x.split(batch)
    advance = [lambda: None]  # a terminal's bar, one step per layer and pass (deep models take a while)

    def float_hook(name: str):
        def hook(_m, inputs, output):
            reference[name] = output
            own[name].add(output, layers[name](inputs[0]))  # this layer's quantizers only
            advance[0]()
        return hook

    def quant_hook(name: str):
        def hook(_m, _inputs, output):
            if in_quant_pass[0]:
                cumulative[name].add(reference[name], output)
                advance[0]()
        return hook

    handles = [float_modules[n].register_forward_hook(float_hook(n)) for n in layers]
    handles += [m.register_forward_hook(quant_hook(n)) for n, m in layers.items()]
    try:
        with steps("per-layer diagnostics", 2 * len(layers) * len(batches)) as advance[0]:
            for xb in batches:
                in_quant_pass[0] = False
                plain(xb)
                in_quant_pass[0] = True
                qnet(xb)
    finally:
        for h in handles:
            h.remove()
        reference.clear()
    return {n: {"sqnr_db": cumulative[n].db(), "own_sqnr_db": own[n].db()} for n in layers}


@torch.no_grad()
def isolated_sqnr(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor) -> dict[str, float]:
    """Logit SQNR (dB) with only one layer quantized, per layer: one forward of `x` per layer.

    The exact ranking for mixed precision (quant/sensitivity.py) and `--diagnostics full`; its
    cost grows with depth, which is why the default diagnostics leave it out.
    """
    from ..progress import track

    plain.eval()
    qnet.eval()
    logits = plain(x).numpy()
    enabled = {q: q.enabled for q in qnet.quantizers()}
    out: dict[str, float] = {}
    layers = list(qnet.layers())
    try:
        qnet.disable()
        for n in track(layers, "isolated SQNR per layer", total=len(layers)):
            qnet.enable(n)
            out[n] = sqnr_db(logits, qnet(x).numpy())
            qnet.disable(n)
    finally:
        for q, on in enabled.items():
            q.enabled = on
    return out


def diagnose(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, mode: str = "sample") -> list[LayerDiagnostics]:
    """Weight statistics and SQNR of every layer, in forward order (none with mode "off")."""
    if check_mode(mode) == "off":
        return []
    records = weight_diagnostics(qnet)
    sq = layer_sqnr(plain, qnet, x)
    isolated = isolated_sqnr(plain, qnet, x) if mode == "full" else {}
    for r in records:
        r.sqnr_db = sq[r.layer]["sqnr_db"]
        r.own_sqnr_db = sq[r.layer]["own_sqnr_db"]
        r.isolated_sqnr_db = isolated.get(r.layer)
    return records


def summary(records: list[LayerDiagnostics]) -> dict:
    """The figures a reader compares across models (e.g. RepVGG vs RepOpt-VGG)."""
    convs = [r for r in records if r.kind == "conv3x3"]
    shares = [r.centre_share for r in convs if r.centre_share is not None]
    # The logit figure ranks best where it was measured (full); the layer's own error otherwise.
    key = "isolated_sqnr_db" if any(r.isolated_sqnr_db is not None for r in records) else "own_sqnr_db"
    ranked = sorted((r for r in records if getattr(r, key) is not None and math.isfinite(getattr(r, key))),
                    key=lambda r: getattr(r, key))
    return {
        "mean_centre_share": float(np.mean(shares)) if shares else None,
        "max_centre_share": float(np.max(shares)) if shares else None,
        "max_channel_range_ratio": _finite(max((r.channel_range_ratio for r in records), default=None)),
        "min_weight_sqnr_db": _finite(min((r.weight_sqnr_db for r in records), default=None)),
        "most_sensitive_layers": [r.layer for r in ranked[:3]],
        "ranked_by": key if records else None,
    }
