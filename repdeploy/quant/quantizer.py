"""Fake-quantization of a fused PlainNet: the `QuantPlainNet` every INT8 path starts from.

Weights are quantized per output channel (axis 0), symmetric int8; activations per tensor on
the input of every conv and linear layer (quant/fake_quant.py: the quantizer and the layers).
Fake quantization's gradients are straight-through, so QAT trains the same module that PTQ
calibrates and export reads.

Two activation layouts exist, chosen by the export target:
- "tensorrt": every activation signed int8, zero point 0, scale amax/127 (TensorRT explicit
  quantization). Bias stays float.
- "ort": tensors that are non-negative by construction (ReLU outputs) are uint8 with zero point 0
  and scale amax/255, which is the layout ONNX Runtime fuses into integer convolutions; signed
  tensors (the image, SE pooled features) use the signed grid. The last block's output gets its
  own quantizer so the last conv is fused too, and the conv/linear bias is quantized to int32 at
  scale s_x * s_w, as ONNX Runtime's integer kernels do.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

from ..errors import CalibrationError
from ..models.layers import pool_flatten
from ..models.plain import PlainNet
from .fake_quant import Observer, QuantConv2d, QuantLayer, QuantLinear, TensorQuantizer

TARGETS = ("ort", "tensorrt")
FEATURES = "features"  # name of the quantizer on the last block's output (ort layout only)


@dataclass(frozen=True)
class QuantizerInfo:
    """What `QuantPlainNet.describe()` reports about one quantizer."""

    name: str
    kind: str  # "activation" | "weight"
    grid: str  # "int8" | "uint8"
    enabled: bool
    calibrated: bool
    amax: float | None  # the scalar range, or the largest per-channel range

    def to_dict(self) -> dict:
        return asdict(self)


class QuantPlainNet(nn.Module):
    """A copy of a PlainNet with every conv and linear layer fake-quantized.

    Weight ranges (per output channel) are set on construction: weights are known. After
    changing the weights in place, call `set_weight_ranges()` again.

    >>> from repdeploy.checkpoints import load_fused
    >>> from repdeploy.zoo import builtin_zoo
    >>> qnet = QuantPlainNet(load_fused(builtin_zoo()[0].file).plain, target="ort")
    >>> qnet.disable("stage0.conv")                     # keep the first conv in float
    >>> qnet.float_layers()
    ['stage0.conv']
    """

    def __init__(self, plain: PlainNet, target: str = "ort") -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.target = target
        self.spec = plain.spec
        self.net = copy.deepcopy(plain).eval()
        ort = target == "ort"
        self._layers: dict[str, QuantLayer] = {}
        self._outputs: dict[str, TensorQuantizer] = {}  # layer -> quantizer on its output
        for prefix, block in self.net.named_blocks():
            # Block inputs after stage0 are ReLU outputs; the image itself is signed.
            self._wrap(block, "conv", f"{prefix}.conv", unsigned=ort and prefix != "stage0", ort=ort)
            if block.se is not None:
                # The main conv of an SE block feeds the SE multiply, not a ReLU + Q: without a
                # quantizer on its own (signed) output ONNX Runtime would run it in float.
                out_q = TensorQuantizer(f"{prefix}.conv.output")
                out_q.enabled = ort
                block.conv.output_quantizer = out_q
                self._outputs[f"{prefix}.conv"] = out_q
                # SE squeezes the (signed) conv output; its `up` conv reads a ReLU output.
                self._wrap(block.se, "down", f"{prefix}.se.down", unsigned=False, ort=ort)
                self._wrap(block.se, "up", f"{prefix}.se.up", unsigned=ort, ort=ort)
        # The pooled features are averages of ReLU outputs, hence non-negative as well.
        self._wrap(self.net, "linear", "linear", unsigned=ort, ort=ort)
        self.features_quantizer = TensorQuantizer(FEATURES, unsigned=True)
        self.features_quantizer.enabled = ort
        try:
            self.set_weight_ranges()
        except CalibrationError:
            pass  # non-finite weights: left unset here; calibration names the tensor the NaN reaches

    def _wrap(self, parent: nn.Module, attr: str, name: str, *, unsigned: bool, ort: bool) -> None:
        layer = getattr(parent, attr)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        wrapped = cls(layer, name, unsigned_input=unsigned, quantize_bias=ort)
        setattr(parent, attr, wrapped)
        self._layers[name] = wrapped

    # ------------------------------------------------------------------ inspection and control

    def layers(self) -> dict[str, QuantLayer]:
        """Quantized layers by name ("stage0.conv", "stage1.0.conv", ..., "linear")."""
        return dict(self._layers)

    def quantizers(self) -> Iterator[TensorQuantizer]:
        """Every quantizer, activation and weight, in forward order."""
        for name, layer in self._layers.items():
            yield layer.input_quantizer
            yield layer.weight_quantizer
            if self.target == "ort" and name in self._outputs:
                yield self._outputs[name]
        if self.target == "ort":
            yield self.features_quantizer

    def activation_quantizers(self) -> dict[str, TensorQuantizer]:
        """Activation quantizers by name: "<layer>.input" and, for ort, "features" and the
        "<block>.conv.output" of SE blocks."""
        out = {layer.input_quantizer.name: layer.input_quantizer for layer in self._layers.values()}
        if self.target == "ort":
            out.update({q.name: q for q in self._outputs.values()})
            out[FEATURES] = self.features_quantizer
        return out

    def enable(self, layer: str | None = None) -> None:
        """Quantize `layer` (both quantizers), or every layer when None."""
        self._set_enabled(layer, True)

    def disable(self, layer: str | None = None) -> None:
        """Run `layer` in float (sensitivity analysis, mixed precision), or every layer when None."""
        self._set_enabled(layer, False)

    def _set_enabled(self, layer: str | None, on: bool) -> None:
        if layer is not None and layer not in self._layers:
            raise KeyError(f"no quantized layer {layer!r}; known: {', '.join(self._layers)}")
        for name, q in self._layers.items():
            if layer is None or name == layer:
                q.input_quantizer.enabled = on
                q.weight_quantizer.enabled = on
                if name in self._outputs:
                    self._outputs[name].enabled = on and self.target == "ort"
        if layer is None and self.target == "ort":
            self.features_quantizer.enabled = on

    def float_layers(self) -> list[str]:
        """Layers currently left in float."""
        return [n for n, q in self._layers.items() if not q.weight_quantizer.enabled]

    def describe(self) -> list[QuantizerInfo]:
        """One record per quantizer: grid, state and range."""
        out = []
        for q in self.quantizers():
            amax = float(q.amax.max()) if q.calibrated else None
            out.append(QuantizerInfo(q.name, "weight" if q.per_channel else "activation",
                                     "uint8" if q.unsigned else "int8", q.enabled, q.calibrated, amax))
        return out

    # ------------------------------------------------------------------ ranges

    @torch.no_grad()
    def set_weight_ranges(self) -> None:
        """Per-output-channel max |w|: weights are known, so their ranges need no calibration."""
        for layer in self._layers.values():
            w = layer.weight_quantizer
            weight = (layer.conv if isinstance(layer, QuantConv2d) else layer.linear).weight
            w.set_amax(weight.detach().abs().flatten(1).amax(1))

    def load_ranges(self, amax: dict[str, float]) -> None:
        """Set every activation range from a name -> amax mapping (a calibration cache)."""
        quantizers = self.activation_quantizers()
        missing = sorted(set(quantizers) - set(amax))
        if missing:
            raise CalibrationError(
                f"calibration ranges miss {len(missing)} tensors of {self.spec.name} ({', '.join(missing[:3])}...); "
                "re-run calibration without --calib-cache"
            )
        for name, q in quantizers.items():
            q.set_amax(amax[name])

    def ranges(self) -> dict[str, float]:
        """Current activation ranges by quantizer name."""
        return {n: float(q.amax) for n, q in self.activation_quantizers().items() if q.calibrated}

    def observe(self, observer: Observer | None) -> None:
        """Report every activation quantizer's input to `observer` (None stops observing)."""
        # Quantizers unused by this target are observed too, so one cache serves both targets.
        quantizers = [layer.input_quantizer for layer in self._layers.values()]
        for q in (*quantizers, *self._outputs.values(), self.features_quantizer):
            q.observer = observer

    def float_model(self) -> PlainNet:
        """The float PlainNet these quantizers wrap (weights as they are now, e.g. after QAT)."""
        inner = {}
        for key, value in self.net.state_dict().items():
            if "_quantizer." in key:
                continue
            for name, layer in self._layers.items():
                wrapped = f"{name}.{'conv' if isinstance(layer, QuantConv2d) else 'linear'}."
                if key.startswith(wrapped):
                    key = f"{name}.{key[len(wrapped):]}"
                    break
            inner[key] = value
        plain = PlainNet(self.spec)
        plain.load_state_dict(inner, strict=True)
        return plain.eval()

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features_quantizer(self.net.forward_features(x))
        return self.net.linear(pool_flatten(features))
