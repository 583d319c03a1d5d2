"""Small building blocks shared by every family's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Conv without bias followed by BN: the `rbr_dense` / `rbr_1x1` branch of RepVGG."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SEBlock(nn.Module):
    """Squeeze-excitation as in RepVGG-D2se: keys `se.down.*` and `se.up.*`.

    Upstream pools with a kernel equal to the input width, which freezes the spatial size into
    an exported ONNX graph; a global mean is the same function for square inputs and stays
    valid for any input size.
    """

    def __init__(self, channels: int, internal: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.up(F.relu(self.down(w))))
        return x * w


def se_internal(channels: int) -> int:
    # Upstream reduction is C/16; keep at least one neuron for the tiny test variants.
    return max(1, channels // 16)


class ScaleLayer(nn.Module):
    """Per-channel constant multiplier of RepOpt-VGG's hyper-search form (`scale_*.weight`)."""

    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


def pool_flatten(x: torch.Tensor) -> torch.Tensor:
    # adaptive_avg_pool2d exports as GlobalAveragePool, which ONNX Runtime runs in int8 too.
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class StagedNet(nn.Module):
    """The macro layout every family shares: `stage0`, `stage1`..`stage4`, pool, `linear`.

    One builder for all families (timm's byobnet is the model): a family supplies only the
    block constructor, so module names, and therefore checkpoint keys, follow upstream.
    """

    def __init__(self, spec, make_block) -> None:
        super().__init__()
        self.spec = spec
        layers = spec.layers()
        self.stage0 = make_block(layers[0])
        start = 1
        for stage, depth in enumerate(spec.depths, start=1):
            blocks = [make_block(layer) for layer in layers[start : start + depth]]
            self.add_module(f"stage{stage}", nn.Sequential(*blocks))
            start += depth
        self.linear = nn.Linear(spec.widths[-1], spec.num_classes)

    def named_blocks(self):
        """(checkpoint prefix, block) for every 3x3 block, stage0 first."""
        yield "stage0", self.stage0
        for stage in range(1, 5):
            for i, block in enumerate(getattr(self, f"stage{stage}")):
                yield f"stage{stage}.{i}", block

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, block in self.named_blocks():
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(pool_flatten(self.forward_features(x)))


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN and scale layer non-trivial statistics, as a trained model would have.

    Freshly built models have mean 0 / var 1 / gamma 1, under which fusion bugs in the
    statistics path stay invisible; tests and latency benchmarks use this instead.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
        elif isinstance(m, ScaleLayer):
            m.weight.copy_(torch.randn(m.weight.shape[0], generator=g) * 0.5 + 0.5)
    return model
