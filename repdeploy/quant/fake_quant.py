"""The fake-quantized tensor and layers: `TensorQuantizer`, `QuantConv2d`, `QuantLinear`.

One quantizer fake-quantizes one tensor (per tensor for activations, per output channel for
weights) through torch's native `torch.fake_quantize_per_*_affine` ops, whose gradients are
straight-through; the layers put one on their input and one on their weight, and round their
bias as ONNX Runtime's integer kernels do. quantizer.py assembles them into a `QuantPlainNet`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CalibrationError

INT8_MAX = 127
UINT8_MAX = 255
# A zero range (an all-zero channel or a dead activation) must still give a usable scale.
MIN_AMAX = 1e-8

Observer = Callable[[str, torch.Tensor], None]


class TensorQuantizer(nn.Module):
    """Fake-quantizes one tensor; can be disabled, observed for calibration, and inspected.

    `amax` is a scalar for activations, one value per output channel for weights. While an
    `observer` is set the quantizer passes its input through unchanged and reports it.
    """

    def __init__(self, name: str, *, per_channel: bool = False, unsigned: bool = False) -> None:
        super().__init__()
        self.name = name
        self.per_channel = per_channel
        self.unsigned = unsigned
        self.enabled = True
        self.observer: Observer | None = None
        self._weight_cache: tuple | None = None  # (key, fake-quantized weight): see _cached
        self.register_buffer("amax", torch.tensor([]))

    @property
    def calibrated(self) -> bool:
        return self.amax.numel() > 0

    @property
    def qmin(self) -> int:
        return 0 if self.unsigned else -INT8_MAX - 1

    @property
    def qmax(self) -> int:
        return UINT8_MAX if self.unsigned else INT8_MAX

    def set_amax(self, amax: float | torch.Tensor) -> None:
        # The range lives where the module lives (a CUDA model keeps CUDA ranges).
        value = torch.as_tensor(amax, dtype=torch.float32).detach().clone().reshape(-1).to(self.amax.device)
        if not torch.isfinite(value).all() or (value < 0).any():
            raise CalibrationError(f"range of {self.name} must be finite and >= 0, got {value.tolist()[:4]}")
        self.amax = value if self.per_channel else value[:1].reshape(())

    def scale(self) -> torch.Tensor:
        """Step size: amax/127 signed (range -128..127, docs/facts.md §4), amax/255 unsigned."""
        if not self.calibrated:
            raise CalibrationError(f"quantizer {self.name} has no range; calibrate or load a calib cache first")
        return self.amax.clamp_min(MIN_AMAX) / float(self.qmax)

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """`x` on this quantizer's integer grid (per channel along axis 0 for weights), as int8:
        what the exporter writes into a QDQ graph and what its check expects there."""
        scale = self.scale().to(torch.float32)
        if self.per_channel:
            scale = scale.reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.clamp(torch.round(x.to(torch.float32) / scale), self.qmin, self.qmax).to(torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(self.name, x.detach())
        if not self.enabled or not self.calibrated:
            return x
        if self.per_channel and not torch.is_grad_enabled():
            return self._cached(x)
        return self._fake_quantize(x)

    def _cached(self, weight: torch.Tensor) -> torch.Tensor:
        # Without autograd a weight's fake-quant is the same every forward until the weight or its
        # range changes; recomputing it cost 0.5-0.8 s per forward of RepVGG-B1g4 (36 M weights),
        # more than a batch of a few images at 224 px (docs/benchmarks.md). The key holds both
        # tensors (so neither id can be reused) and their version counters (bumped by in-place
        # updates: an optimizer step, load_state_dict) and storage (moved by .to()).
        try:
            key = (weight, weight._version, weight.data_ptr(), self.amax, self.amax._version, self.amax.data_ptr())
        except RuntimeError:  # inference-mode tensors have no version counter: nothing to key on
            return self._fake_quantize(weight)
        cache = self._weight_cache
        if cache is not None and len(cache[0]) == len(key) and all(
                a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(cache[0], key)):
            return cache[1]
        out = self._fake_quantize(weight)
        self._weight_cache = (key, out)
        return out

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale().to(x.device, x.dtype)
        if self.per_channel:
            zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
            return torch.fake_quantize_per_channel_affine(x, scale, zero, 0, self.qmin, self.qmax)
        zero = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        grid = "uint8" if self.unsigned else "int8"
        return f"{self.name}, {kind} {grid}, enabled={self.enabled}, calibrated={self.calibrated}"


def _quantized_bias(bias: torch.Tensor | None, x_q: TensorQuantizer, w_q: TensorQuantizer,
                    quantize: bool) -> torch.Tensor | None:
    # ONNX Runtime adds an int32 bias at scale s_x*s_w inside its integer kernels; rounding it the
    # same way here keeps torch and ORT within one output step of each other.
    if bias is None or not quantize or not (x_q.enabled and w_q.enabled and x_q.calibrated and w_q.calibrated):
        return bias
    step = x_q.scale() * w_q.scale()
    rounded = torch.round(bias / step) * step
    return bias + (rounded - bias).detach()  # straight-through, like the fake-quant ops


def _quantized_params(layer, module: nn.Module, out_channels: slice | None):
    """A layer's fake-quantized weight and rounded bias, only `out_channels` of them when given."""
    bias = _quantized_bias(module.bias, layer.input_quantizer, layer.weight_quantizer, layer.quantize_bias)
    weight = layer.weight_quantizer(module.weight)
    if out_channels is not None:
        weight, bias = weight[out_channels], None if bias is None else bias[out_channels]
    return weight, bias


class QuantConv2d(nn.Module):
    """A Conv2d whose input and weight pass through fake quantizers (and, optionally, its output)."""

    def __init__(self, conv: nn.Conv2d, name: str, *, unsigned_input: bool, quantize_bias: bool) -> None:
        super().__init__()
        self.conv = conv
        self.layer_name = name
        self.quantize_bias = quantize_bias
        self.input_quantizer = TensorQuantizer(f"{name}.input", unsigned=unsigned_input)
        self.weight_quantizer = TensorQuantizer(f"{name}.weight", per_channel=True)
        self.output_quantizer: TensorQuantizer | None = None

    def forward(self, x: torch.Tensor, out_channels: slice | None = None) -> torch.Tensor:
        """`out_channels`: compute only these outputs (a share of them, evenly within each group
        of a grouped conv): the diagnostics estimate a layer's own error from a share."""
        c = self.conv
        weight, bias = _quantized_params(self, c, out_channels)
        out = F.conv2d(self.input_quantizer(x), weight, bias, c.stride, c.padding, c.dilation, c.groups)
        return out if self.output_quantizer is None else self.output_quantizer(out)


class QuantLinear(nn.Module):
    """A Linear layer whose input and weight pass through fake quantizers."""

    def __init__(self, linear: nn.Linear, name: str, *, unsigned_input: bool, quantize_bias: bool) -> None:
        super().__init__()
        self.linear = linear
        self.layer_name = name
        self.quantize_bias = quantize_bias
        self.input_quantizer = TensorQuantizer(f"{name}.input", unsigned=unsigned_input)
        self.weight_quantizer = TensorQuantizer(f"{name}.weight", per_channel=True)

    def forward(self, x: torch.Tensor, out_channels: slice | None = None) -> torch.Tensor:
        """`out_channels`: compute only these outputs (as QuantConv2d)."""
        weight, bias = _quantized_params(self, self.linear, out_channels)
        return F.linear(self.input_quantizer(x), weight, bias)


QuantLayer = QuantConv2d | QuantLinear
