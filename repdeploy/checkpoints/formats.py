"""What a state_dict is, read off its keys and shapes: format, form, variant and ArchSpec.

The file name never decides anything (one upstream `-train` file holds deploy keys): the key
format and the form come from the key names (`detect_format`), the architecture from the tensor
shapes (`infer_spec`, which gives the registry's ArchSpec when the layout is a known variant).
Then the weights are checked (float dtypes, finite values) and loaded strictly, naming the first
offending keys. `Loaded` is the record of a checkpoint read and understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InputError, NonFiniteWeightsError
from ..models import ArchSpec, PlainNet, get_spec, match_variant
from .files import SUPPORTED

FORMAT_OFFICIAL = "repvgg-official"
FORMAT_TIMM = "timm"
FORMAT_REPOPT = "repopt-vgg"
FORMAT_SCALES = "repopt-scales"
FORMAT_REPDEPLOY = "repdeploy"

# timm names -> official names (docs/facts.md §1); applied in order, prefixes first.
_TIMM_TO_OFFICIAL = [
    (re.compile(r"^stem\."), "stage0."),
    (re.compile(r"^stages\.(\d)\."), lambda m: f"stage{int(m.group(1)) + 1}."),
    (re.compile(r"\.conv_kxk\."), ".rbr_dense."),
    (re.compile(r"\.conv_1x1\."), ".rbr_1x1."),
    (re.compile(r"\.identity\."), ".rbr_identity."),
    (re.compile(r"\.reparam_conv\."), ".rbr_reparam."),
    (re.compile(r"\.attn\.fc1\."), ".se.down."),
    (re.compile(r"\.attn\.fc2\."), ".se.up."),
    (re.compile(r"^head\.fc\."), "linear."),
]
_BLOCK = re.compile(r"^(stage0|stage([1-4])\.(\d+))\.")


@dataclass
class Loaded:
    """A checkpoint read and understood: its module in the stored form plus what it is."""

    path: Path
    model: nn.Module | None  # None for a scales file, which carries no weights
    spec: ArchSpec | None
    format: str
    form: str  # train | deploy | target | hs | fused | scales
    container: str  # where the weights sat in the file, e.g. "model", "state_dict", "ema"
    variant: str  # registry name, or "custom"
    num_tensors: int
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.spec.family if self.spec else "repopt"

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0

    @property
    def deploy_params(self) -> int:
        return sum(p.numel() for p in PlainNet(self.spec).parameters()) if self.spec else 0

    @property
    def deploy_steps(self) -> str:
        return {
            "train": "fuse the branches into a PlainNet (repdeploy fuse), then quantize",
            "deploy": "already plain: quantize directly",
            "fused": "already plain: quantize directly",
            "target": "fold conv-BN into a PlainNet (repdeploy fuse), then quantize",
            "hs": "a hyper-search model: use its scales for `repdeploy train --optimizer repopt-sgd`, "
            "or fuse it as is",
            "scales": "no weights: train a RepOpt-VGG with `repdeploy train --optimizer repopt-sgd --scales FILE`",
        }[self.form]

    def to_dict(self) -> dict:
        spec = self.spec
        return {
            "path": str(self.path),
            "format": self.format,
            "family": self.family,
            "variant": self.variant,
            "form": self.form,
            "container": self.container,
            "num_classes": spec.num_classes if spec else None,
            "params": self.params,
            "deploy_params": self.deploy_params,
            "num_tensors": self.num_tensors,
            "arch": spec.to_dict() if spec else None,
            "to_deploy": self.deploy_steps,
        }


def timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm RepVGG keys to the official layout (same shapes, same function)."""
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _TIMM_TO_OFFICIAL:
            new = pattern.sub(repl, new)
        out[new] = value
    return out


def detect_format(sd: Mapping[str, torch.Tensor], path: Path | str = "checkpoint") -> tuple[str, str]:
    """(format, form) from the key names alone."""
    keys = list(sd)
    if keys and all(re.search(r"scale_(conv|1x1|identity)\.weight$", k) for k in keys):
        return FORMAT_SCALES, "scales"
    if any(k.startswith("stem.") for k in keys) and any(k.startswith("stages.") for k in keys):
        if any(".reparam_conv." in k for k in keys):
            return FORMAT_TIMM, "deploy"
        if any(".conv_kxk." in k for k in keys):
            return FORMAT_TIMM, "train"
    if any(k.startswith("stage0.") for k in keys):
        if "stage0.rbr_reparam.weight" in sd:
            return FORMAT_OFFICIAL, "deploy"
        if "stage0.rbr_dense.conv.weight" in sd:
            return FORMAT_OFFICIAL, "train"
        if "stage0.scale_conv.weight" in sd:
            return FORMAT_REPOPT, "hs"
        if "stage0.conv.weight" in sd and "stage0.bn.weight" in sd:
            return FORMAT_REPOPT, "target"
    sample = ", ".join(keys[:4])
    raise CheckpointError(
        f"{path} is not a RepVGG-family checkpoint (first keys: {sample}); expected {SUPPORTED}"
    )


def _kernel_key(form: str, prefix: str) -> str:
    return {
        "train": f"{prefix}.rbr_dense.conv.weight",
        "deploy": f"{prefix}.rbr_reparam.weight",
        "target": f"{prefix}.conv.weight",
        "hs": f"{prefix}.conv.weight",
    }[form]


def infer_spec(sd: Mapping[str, torch.Tensor], form: str, path: Path | str = "checkpoint") -> ArchSpec:
    """Read the architecture off tensor shapes: widths, depths, groups, SE and classes.

    Produces the same ArchSpec a user could have named when the layout is a known variant.
    """
    family = "repopt" if form in ("target", "hs") else "repvgg"
    blocks: dict[int, set[int]] = {k: set() for k in range(1, 5)}
    for key in sd:
        m = _BLOCK.match(key)
        if m and m.group(2):
            blocks[int(m.group(2))].add(int(m.group(3)))
    depths = []
    for stage in range(1, 5):
        found = sorted(blocks[stage])
        if not found or found != list(range(len(found))):
            raise CheckpointError(
                f"{path}: stage{stage} blocks are missing or not numbered 0..n-1 (found {found}); "
                "the file is incomplete or not a RepVGG-family model"
            )
        depths.append(len(found))
    prefixes = ["stage0"] + [f"stage{s}.{i}" for s in range(1, 5) for i in range(depths[s - 1])]
    try:
        kernels = [sd[_kernel_key(form, p)] for p in prefixes]
        head = sd["linear.weight"]
    except KeyError as exc:
        raise CheckpointError(
            f"{path}: missing tensor {exc.args[0]} for the {form} form; the file is incomplete"
        ) from exc
    if head.dim() != 2 or 0 in head.shape:
        raise CheckpointError(f"{path}: linear.weight has shape {tuple(head.shape)}, expected (classes, features)")
    for p, k in zip(prefixes, kernels):
        if k.dim() != 4 or tuple(k.shape[2:]) != (3, 3):
            raise CheckpointError(f"{path}: {_kernel_key(form, p)} has shape {tuple(k.shape)}, expected a 3x3 kernel")
    in_channels = kernels[0].shape[1]
    widths = [kernels[0].shape[0]] + [kernels[1 + sum(depths[:s])].shape[0] for s in range(4)]
    groups, c_in = [], in_channels
    for index, k in enumerate(kernels):
        g = c_in // k.shape[1] if k.shape[1] else 0
        if g < 1 or c_in != g * k.shape[1]:
            raise CheckpointError(
                f"{path}: {_kernel_key(form, prefixes[index])} has {k.shape[1]} input channels but the previous "
                f"layer gives {c_in}; the weights do not form a RepVGG-family network"
            )
        if g > 1:
            groups.append((index, g))
        c_in = k.shape[0]
    spec = _spec_or_error(path, dict(
        name="custom",
        family=family,
        depths=tuple(depths),  # type: ignore[arg-type]
        widths=tuple(int(w) for w in widths),  # type: ignore[arg-type]
        groups=tuple(groups),
        use_se="stage0.se.down.weight" in sd,
        num_classes=int(head.shape[0]),
        in_channels=int(in_channels),
    ))
    known = match_variant(spec)
    if known:
        return get_spec(known, spec.num_classes)
    return spec


def _spec_or_error(path: Path | str, fields: dict) -> ArchSpec:
    try:
        return ArchSpec(**fields)
    except InputError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def to_module_keys(sd: Mapping[str, torch.Tensor], form: str) -> dict[str, torch.Tensor]:
    """Official deploy keys -> PlainNet keys (`rbr_reparam` -> `conv`); other forms are 1:1."""
    if form != "deploy":
        return dict(sd)
    return {k.replace(".rbr_reparam.", ".conv."): v for k, v in sd.items()}


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], assumed: str, path: Path | str) -> None:
    """Load weights, listing the first offenders when keys or shapes disagree."""
    expected = model.state_dict()
    # num_batches_tracked is bookkeeping for training; its absence changes nothing at inference.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)} (e.g. {'; '.join(misshaped[:3])})")
    if problems:
        raise CheckpointError(f"{path} does not match {assumed}: " + "; ".join(problems) + "; pass the right --arch or file")
    merged = {k: sd.get(k, v) for k, v in expected.items()}
    model.load_state_dict(merged, strict=True)


def check_dtypes(sd: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Refuse non-float weights: int32 kernels would run (at 4.7 % top-1) without a word."""
    bad = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in sd.items()
           if not (v.is_floating_point() or k.endswith("num_batches_tracked"))]
    if bad:
        raise CheckpointError(f"{path} holds non-floating-point weights ({', '.join(bad[:3])}); a model's weights "
                              "must be float16/bfloat16/float32/float64; re-save the original float checkpoint")


def check_finite(sd: Mapping[str, torch.Tensor], path: Path | str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteWeightsError(
            f"{path} has NaN or Inf in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}); the training run diverged "
            "or the file is damaged; pass --allow-nonfinite to proceed anyway"
        )


def describe(spec: ArchSpec) -> str:
    groups = f", groups at layers {[i for i, _ in spec.groups]}" if spec.groups else ""
    se = ", SE" if spec.use_se else ""
    return f"{spec.family} net with depths {list(spec.depths)}, widths {list(spec.widths)}{groups}{se}"
