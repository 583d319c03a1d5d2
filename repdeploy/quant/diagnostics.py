"""Per-layer quantization diagnostics: why a model loses accuracy in INT8, layer by layer.

- weight statistics per layer: range, std, and the share of kernel magnitude at the 3x3 centre
  tap. Fused RepVGG kernels carry the 1x1 and identity branches in that tap, which makes it an
  outlier that stretches the per-channel int8 range (docs/facts.md §4); RepOpt-VGG kernels do not.
- per-layer SQNR from forward hooks (`SQNRProbe`) on a float pass and a fake-quant pass of the
  same images: `sqnr_db`, each layer's output in the fully quantized model against the float
  model (the error accumulated up to it), and `own_sqnr_db`, the error the layer adds itself
  (its own quantizers applied to the float model's input of the layer), by default estimated on
  every 4th output channel of half the sample. Inside `quantize` and `qat` the hooks ride on the
  verification's own torch passes (quant/int8_set.py), so the default diagnostics run no forward
  pass of their own (docs/benchmarks.md measures their cost against an FP32 pass).
- `--diagnostics full` takes `own_sqnr_db` on every channel and adds `isolated_sqnr_db`, the
  logit SQNR with only that layer quantized: one forward per layer, which took 27 of A0's 41 s
  and 28 minutes of D2se's run when it was the default (issue 22).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..evaluate import sqnr_db
from ..models.plain import PlainNet
from .fake_quant import QuantConv2d, QuantLayer
from .quantizer import QuantPlainNet


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
        # Few passes over each weight (it has millions of elements at real size): no abs() copy,
        # min/max per channel in one, norms without a squared copy.
        kind = "linear" if w.dim() == 2 else ("conv3x3" if w.shape[-1] == 3 else "conv1x1")
        centre_std = centre_share = None
        if kind == "conv3x3":
            centre = w[:, :, 1, 1]
            centre_std = float(centre.std()) if centre.numel() > 1 else 0.0
            total = float(torch.linalg.vector_norm(w, 1))
            centre_share = float(torch.linalg.vector_norm(centre, 1)) / total if total > 0 else None
        low, high = w.flatten(1).aminmax(dim=1)
        per_channel = torch.maximum(high, -low)  # max |w| per output channel
        median = float(per_channel.median())
        wq = layer.weight_quantizer
        was = wq.enabled
        wq.enabled = True
        w_fq = wq(module.weight).detach()  # the fake-quant the passes cached (quantizer._cached)
        wq.enabled = was
        out.append(LayerDiagnostics(
            layer=name, kind=kind, out_channels=int(w.shape[0]), weight_min=float(low.min()),
            weight_max=float(high.max()), weight_std=float(w.std()), centre_std=centre_std,
            centre_share=centre_share,
            channel_range_ratio=float(per_channel.max()) / median if median > 0 else float("inf"),
            weight_sqnr_db=_db(_power(w), _power(w - w_fq)),
            activation_amax=ranges.get(layer.input_quantizer.name),
        ))
    return out


#: --diagnostics: "sample" (default) hooks on a float and a fake-quant pass over a sample; "full"
#: adds the exact own and the isolated logit SQNR (one forward per layer); "off" writes none.
MODES = ("full", "sample", "off")
HOOK_BATCH = 8  # images per pass when the diagnostics run their own passes (`layer_sqnr`)


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


def _power(t: torch.Tensor) -> float:
    # sum of squares in one pass, with no squared copy (a strided view is read as it is); the
    # CPU reduction accumulates float32 in double
    return float(torch.linalg.vector_norm(t)) ** 2


class _Power:
    """Running sums of signal and noise power for one layer."""

    __slots__ = ("signal", "noise")

    def __init__(self) -> None:
        self.signal = self.noise = 0.0

    def add(self, ref: torch.Tensor, cand: torch.Tensor, signal: float | None = None) -> None:
        self.signal += _power(ref) if signal is None else signal
        self.noise += _power(ref - cand)

    def db(self) -> float:
        return _db(self.signal, self.noise)


#: The "sample" figure of a layer's own error is taken on every OWN_STRIDE-th output channel
#: (evenly within each group of a grouped conv), never on fewer than OWN_MIN_CHANNELS, and on the
#: first half of the sample's images (the layer's input fake-quant costs per image, whatever the
#: channels): about a sixth of a quantized pass instead of a whole one. Quantization noise is
#: spread over channels and images, so the share estimates the whole (docs/quantization.md shows
#: it against the exact `full` figure); a narrow layer keeps every channel.
OWN_STRIDE = 4
OWN_MIN_CHANNELS = 32

_OTHER = {"float": "quant", "quant": "float"}


def own_channels(layer: QuantLayer, stride: int) -> slice | None:
    """The output channels a layer's own error is measured on: every s-th, for the largest
    s <= `stride` that divides the group width and leaves OWN_MIN_CHANNELS (None: all)."""
    module = layer.conv if isinstance(layer, QuantConv2d) else layer.linear
    out = module.weight.shape[0]
    per_group = out // getattr(module, "groups", 1)
    s = next((s for s in range(stride, 1, -1) if per_group % s == 0 and out // s >= OWN_MIN_CHANNELS), 1)
    return slice(None, None, s) if s > 1 else None


class SQNRProbe:
    """Per-layer SQNR from forward hooks on a float pass and a fake-quant pass of the same images.

    While entered, hooks on every quantized layer of `qnet` and its float twin in `plain` take
    the layer's output (and, in the float model, its input) for the first `images` images each
    model runs; both models must see the images in the same batches and order (verification runs
    them so). Whichever model runs a batch first keeps those tensors; the other compares with
    them and lets them go. The probe runs no forward pass of its own: `quantize` enters it around
    verification, whose torch FP32 and fake-quant passes run anyway. The layer's own error is
    measured by running the quantized layer on the float model's input of the layer, on every
    `own_stride`-th output channel and the first half of the images (stride 1: all channels and
    images, the `--diagnostics full` figure). `seconds`
    is the time spent inside the hooks: all the probe adds to those passes.
    """

    def __init__(self, plain: PlainNet, qnet: QuantPlainNet, images: int, *, own_stride: int = OWN_STRIDE) -> None:
        self.plain, self.qnet, self.images, self.own_stride = plain, qnet, images, own_stride
        # the estimate (stride > 1) takes half the images too: its input fake-quant costs per image
        self.own_images = images if own_stride == 1 else max(1, (images + 1) // 2)
        self.layers = qnet.layers()
        floats = dict(plain.named_modules())
        self._modules = {"float": {n: floats[n] for n in self.layers}, "quant": self.layers}
        self._channels = {n: own_channels(layer, own_stride) for n, layer in self.layers.items()}
        self._start = {"float": 0, "quant": 0}  # first image of the batch each model is running
        self._seen = {"float": 0, "quant": 0}
        self._held: dict[str, dict] = {"float": {}, "quant": {}}  # (layer, first image) -> tensors
        self._cumulative = {n: _Power() for n in self.layers}
        self._own = {n: _Power() for n in self.layers}
        self._compared = dict.fromkeys(self.layers, 0)
        self._handles: list = []
        self.seconds = 0.0

    def __enter__(self) -> "SQNRProbe":
        if self.images > 0:
            for role, model in (("float", self.plain), ("quant", self.qnet)):
                self._handles.append(model.register_forward_pre_hook(self._batch_hook(role)))
                self._handles += [m.register_forward_hook(self._layer_hook(role, n))
                                  for n, m in self._modules[role].items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._held = {"float": {}, "quant": {}}  # an unmatched batch (a pass cut short) is let go

    @property
    def complete(self) -> bool:
        """Whether every layer was compared on all `images` images (both passes ran them)."""
        return self.images > 0 and all(c >= self.images for c in self._compared.values())

    def figures(self) -> dict[str, dict[str, float]]:
        """{layer: {"sqnr_db": cumulative, "own_sqnr_db": the layer's own error}}."""
        return {n: {"sqnr_db": self._cumulative[n].db(), "own_sqnr_db": self._own[n].db()} for n in self.layers}

    def _batch_hook(self, role: str):
        def hook(_model, args):
            self._start[role] = self._seen[role]
            self._seen[role] += int(args[0].shape[0])
        return hook

    def _layer_hook(self, role: str, name: str):
        def hook(_m, inputs, output):
            first = self._start[role]
            k = min(int(output.shape[0]), self.images - first)
            if k <= 0:
                return
            t0 = time.perf_counter()
            # the float model's input is what the layer's own error is measured on
            mine = (inputs[0].detach()[:k], output.detach()[:k]) if role == "float" else output.detach()[:k]
            other = self._held[_OTHER[role]].pop((name, first), None)
            if other is None:  # kept until the other pass: a copy of the sample's part only
                self._held[role][(name, first)] = _kept(mine, k < output.shape[0])
            else:
                self._compare(name, *((mine, other) if role == "float" else (other, mine)))
            self.seconds += time.perf_counter() - t0
        return hook

    @torch.no_grad()
    def _compare(self, name: str, fp32: tuple, q_out: torch.Tensor) -> None:
        f_in, f_out = fp32
        signal = _power(f_out)
        self._cumulative[name].add(f_out, q_out.to(f_out.device), signal)
        layer, channels = self.layers[name], self._channels[name]
        first = self._compared[name]
        m = min(len(f_out), self.own_images - first)  # the own figure's images: the first of the sample
        if m > 0:
            device = layer.input_quantizer.amax.device  # verification moves one model at a time to its device
            # .forward: the layer's own hook must not see this call
            own = layer.forward(f_in[:m].to(device), channels).to(f_out.device)
            whole = channels is None and m == len(f_out)
            self._own[name].add(f_out[:m] if channels is None else f_out[:m, channels], own, signal if whole else None)
        self._compared[name] += int(f_out.shape[0])


def _kept(tensors, part: bool):
    # A part of a batch is copied, so the rest of the batch is not held alive by a view.
    if isinstance(tensors, tuple):
        return tuple(_kept(t, part) for t in tensors)
    return tensors.clone() if part else tensors


@torch.no_grad()
def layer_sqnr(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, batch: int = HOOK_BATCH,
               own_stride: int = OWN_STRIDE) -> dict[str, dict]:
    """Per-layer SQNR (dB) on inputs `x`, running the float and the fake-quant model once over
    them in batches of `batch` (what `SQNRProbe` reads off passes that run anyway): {layer:
    {"sqnr_db", "own_sqnr_db"}}."""
    plain.eval()
    qnet.eval()
    with SQNRProbe(plain, qnet, len(x), own_stride=own_stride) as probe:
        for xb in x.split(batch):
            plain(xb)
            qnet(xb)
    return probe.figures()


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


def diagnose(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, *, mode: str = "sample",
             probe: SQNRProbe | None = None) -> list[LayerDiagnostics]:
    """Weight statistics and SQNR of every layer, in forward order (none with mode "off").

    `probe`: an `SQNRProbe` that was entered around passes over `x` that ran anyway (quantize's
    verification); when it saw all of `x`, its figures are used and no pass is run here.
    """
    if check_mode(mode) == "off":
        return []
    records = weight_diagnostics(qnet)
    full = mode == "full"
    stride = 1 if full else OWN_STRIDE
    if probe is not None and probe.complete and probe.own_stride == stride:
        sq = probe.figures()
    else:
        sq = layer_sqnr(plain, qnet, x, own_stride=stride)
    isolated = isolated_sqnr(plain, qnet, x) if full else {}
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
