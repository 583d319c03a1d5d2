"""Shared builders for the quantization tests: small fused models, calibration batches, checkpoints."""

from __future__ import annotations

import torch

from conftest import trained_like
from repdeploy.data import open_dataset
from repdeploy import fuse
from repdeploy.models import PlainNet
from repdeploy.quant.calib import calibrate
from repdeploy.quant.quantizer import QuantPlainNet


def fused(name: str = "RepVGG-mini", seed: int = 0) -> PlainNet:
    """A fused PlainNet of a trained-like (randomized BN) model."""
    return fuse(trained_like(name, "train" if name.startswith("RepVGG") else "target", seed)).plain.eval()


def digits(split: str = "train", size: int = 32):
    return open_dataset("builtin", split=split, image_size=size)


def batches(n: int = 128, split: str = "train", batch: int = 64):
    return [x for x, _ in digits(split).batches(batch, limit=n)]


def calibrated(plain: PlainNet, target: str = "ort", method: str = "max", n: int = 128) -> tuple[QuantPlainNet, object]:
    q = QuantPlainNet(plain, target)
    q.set_weight_ranges()
    cache = calibrate(q, batches(n), method=method)
    return q, cache


@torch.no_grad()
def with_fitted_head(plain: PlainNet, ridge: float = 1e-2) -> PlainNet:
    """Fit the classifier of a random-feature PlainNet to the digits by ridge regression.

    Gives a model with real, well-above-chance accuracy in a fraction of a second, so accuracy
    drops are meaningful before the trained zoo exists.
    """
    from repdeploy.models.layers import pool_flatten

    ds = digits("train")
    feats, labels = [], []
    for x, y in ds.batches(256):
        feats.append(pool_flatten(plain.forward_features(x)))
        labels.append(y)
    f = torch.cat(feats).double()
    y = torch.nn.functional.one_hot(torch.cat(labels), plain.spec.num_classes).double()
    mean, std = f.mean(0), f.std(0) + 1e-6
    z = (f - mean) / std
    a = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
    w = torch.linalg.solve(a.T @ a + ridge * len(z) * torch.eye(a.shape[1], dtype=z.dtype), a.T @ y)
    weight = (w[:-1] / std[:, None]).T
    bias = w[-1] - (mean / std) @ w[:-1]
    plain.linear.weight.copy_(weight.float())
    plain.linear.bias.copy_(bias.float())
    return plain
