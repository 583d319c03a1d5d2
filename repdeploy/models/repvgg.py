"""RepVGG in its training form (CVPR 2021): 3x3-BN + 1x1-BN (+ identity BN) branches per block.

Module names follow the official release, so `state_dict()` keys are the official train-form
keys (`stage1.0.rbr_dense.conv.weight`, `stage1.1.rbr_identity.running_var`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBN, SEBlock, StagedNet, se_internal
from .specs import ArchSpec, LayerSpec


class RepVGGBlock(nn.Module):
    def __init__(self, layer: LayerSpec, use_se: bool) -> None:
        super().__init__()
        self.layer = layer
        c_in, c_out, s, g = layer.in_channels, layer.out_channels, layer.stride, layer.groups
        self.rbr_dense = ConvBN(c_in, c_out, 3, s, 1, g)
        self.rbr_1x1 = ConvBN(c_in, c_out, 1, s, 0, g)
        # Upstream keeps the identity BN directly at `rbr_identity` (no `.bn.` level).
        self.rbr_identity = nn.BatchNorm2d(c_in) if layer.has_identity else None
        self.se = SEBlock(c_out, se_internal(c_out)) if use_se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        if self.se is not None:
            out = self.se(out)
        return F.relu(out)


class RepVGG(StagedNet):
    """RepVGG train form for any `ArchSpec` of the repvgg family."""

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__(spec, lambda layer: RepVGGBlock(layer, spec.use_se))
