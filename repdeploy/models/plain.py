"""PlainNet: the one deploy representation every family fuses into.

Each block is a 3x3 conv with bias, optional squeeze-excitation, ReLU. Quantization, export,
runtimes and reports only ever see a PlainNet, so they never branch on the family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SEBlock, StagedNet, se_internal
from .specs import ArchSpec, LayerSpec


class PlainBlock(nn.Module):
    def __init__(self, layer: LayerSpec, use_se: bool) -> None:
        super().__init__()
        self.layer = layer
        self.conv = nn.Conv2d(
            layer.in_channels, layer.out_channels, 3, layer.stride, 1, groups=layer.groups, bias=True
        )
        self.se = SEBlock(layer.out_channels, se_internal(layer.out_channels)) if use_se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.se is not None:
            out = self.se(out)
        return F.relu(out)


class PlainNet(StagedNet):
    """The fused model: `stage*.conv.{weight,bias}` (+ `se.*`) and `linear.*`."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec, lambda layer: PlainBlock(layer, spec.use_se))


def at_input_size(plain: nn.Module, input_size: int | None) -> nn.Module:
    """`plain` fed at `input_size` (None: its own), e.g. a D2se trained at 224 whose variant says 320.

    The network is fully convolutional with global pooling, so only the recorded size changes;
    a shallow copy keeps the caller's model as it was, and every output records the new size.
    """
    import copy
    import dataclasses

    if input_size is None or input_size == plain.spec.input_size:
        return plain
    resized = copy.copy(plain)
    resized.spec = dataclasses.replace(plain.spec, input_size=input_size)
    return resized
