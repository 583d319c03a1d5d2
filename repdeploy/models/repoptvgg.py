"""RepOpt-VGG (ICLR 2023): a plain VGG trained with a RepOptimizer.

Two forms share the layout:
- target form (`RepOptVGG`): conv 3x3 (no bias) + BN + ReLU per block; the model that is
  trained with gradient multipliers and deployed after plain conv-BN folding;
- hyper-search form (`RepOptVGGSearch`): 3x3 and 1x1 convs and an identity, each times a
  trainable per-channel scale, summed, then one BN. Training it on a search set yields the
  scales that define the RepOptimizer's multipliers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ScaleLayer, StagedNet
from .specs import ArchSpec, LayerSpec


class RepOptVGGBlock(nn.Module):
    def __init__(self, layer: LayerSpec) -> None:
        super().__init__()
        self.layer = layer
        self.conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, layer.stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(layer.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def initial_scale(layer: LayerSpec) -> float:
    """Hyper-search initial scale: 1 for a stage's first block, sqrt(2 / i) for block i >= 1.

    Deeper blocks start with smaller branch scales so the residual-like sum does not grow
    with depth at initialisation.
    """
    if layer.name == "stage0":
        return 1.0
    block = int(layer.name.split(".")[1])
    return 1.0 if block == 0 else math.sqrt(2.0 / block)


class RepOptVGGSearchBlock(nn.Module):
    def __init__(self, layer: LayerSpec) -> None:
        super().__init__()
        self.layer = layer
        c_in, c_out, s = layer.in_channels, layer.out_channels, layer.stride
        init = initial_scale(layer)
        self.conv = nn.Conv2d(c_in, c_out, 3, s, 1, bias=False)
        self.scale_conv = ScaleLayer(c_out, init)
        self.conv_1x1 = nn.Conv2d(c_in, c_out, 1, s, 0, bias=False)
        self.scale_1x1 = ScaleLayer(c_out, init)
        self.scale_identity = ScaleLayer(c_out, 1.0) if layer.has_identity else None
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.scale_identity is not None:
            out = out + self.scale_identity(x)
        return F.relu(self.bn(out))


class RepOptVGG(StagedNet):
    """RepOpt-VGG target form."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec, RepOptVGGBlock)


class RepOptVGGSearch(StagedNet):
    """RepOpt-VGG hyper-search form."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec, RepOptVGGSearchBlock)
