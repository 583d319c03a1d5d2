"""Read any RepVGG-family checkpoint: safely, strictly, and knowing what it is from its keys.

The file name never decides anything (one upstream `-train` file holds deploy keys): the
container, the key format, the form and the architecture are all read off the tensors.
Checkpoints are untrusted pickles, so they are opened with `weights_only=True`; a file that
needs more is refused unless the user opts in with `--trust-checkpoint`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .version import __version__
from .errors import CheckpointError, InputError, NonFiniteWeightsError, UnsafeCheckpointError
from .io import save_torch_atomic
from .models import ArchSpec, PlainNet, build, get_spec, match_variant

FORMAT_OFFICIAL = "repvgg-official"
FORMAT_TIMM = "timm"
FORMAT_REPOPT = "repopt-vgg"
FORMAT_SCALES = "repopt-scales"
FORMAT_REPDEPLOY = "repdeploy"
REPDEPLOY_MARKER = "repdeploy_format"

SUPPORTED = "official RepVGG (train/deploy), timm RepVGG, RepOpt-VGG (target/hs/scales) or a repdeploy fused file"

# timm names -> official names (reference.md §1); applied in order, prefixes first.
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
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


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


# --------------------------------------------------------------------------- reading files


def read_file(path: str | Path, *, trust_checkpoint: bool = False) -> Any:
    """Deserialize a .pth/.pt/.pth.tar/.safetensors file, refusing anything unsafe or broken."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; check the path")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory; give the checkpoint file inside it")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-download or re-save it")
    with open(p, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head, size):
        return _read_safetensors(p)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"checkpoint {p} is not a PyTorch or safetensors file (unknown leading bytes); "
            "give a .pth/.pt/.pth.tar/.safetensors checkpoint"
        )
    if head.startswith(b"PK"):
        verify_zip(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        what = _unsafe_global(str(exc))
        # Only a pickle that names a class or function is unsafe; any other refusal of the
        # weights-only unpickler (an unknown opcode, a bad frame) means damaged bytes, and
        # --trust-checkpoint would not repair those, only run whatever they happen to encode.
        if what and ("weights_only" in str(exc) or "Weights only load failed" in str(exc)):
            raise UnsafeCheckpointError(
                f"checkpoint {p} needs arbitrary unpickling{what}, which can run code from the file; "
                "if you trust its source, pass --trust-checkpoint"
            ) from exc
        raise CheckpointError(f"checkpoint {p} is damaged: its pickle data is invalid ({_unpickler_reason(exc)}); "
                              "re-download or re-save it (--trust-checkpoint would not repair it)") from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt ({_first_line(exc)}); re-download it") from exc


def verify_zip(p: Path) -> None:
    """Check every member's CRC-32: torch.load does not, and reads damaged tensor bytes as weights."""
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"checkpoint {p} is truncated or corrupt (broken zip archive: {_first_line(exc)}); "
                              "re-download or re-save it") from exc
    except Exception as exc:  # noqa: BLE001 - zlib errors on a damaged deflate stream
        raise CheckpointError(f"checkpoint {p} is corrupt ({type(exc).__name__}: {_first_line(exc)}); "
                              "re-download or re-save it") from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint {p} is corrupt: member {bad} fails its CRC check (the bytes changed "
                              "after it was saved); re-download or re-save it")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < size and head[8:9] == b"{"


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {p} is a truncated or corrupt safetensors file ({exc}); re-download it") from exc


def _unsafe_global(message: str) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return f" (it holds a pickled {m.group(1)})" if m else ""


def _unpickler_reason(exc: BaseException) -> str:
    # torch prefixes the real reason with paragraphs about the weights_only default.
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
    return m.group(1).strip()[:160] if m else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# --------------------------------------------------------------------------- containers


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap(obj: Any, *, use_ema: bool = False, path: Path | str = "checkpoint") -> tuple[dict, str]:
    """Find the state_dict inside a training checkpoint: plain, `model`, `state_dict`, `ema`, ...

    Returns the state_dict with wrapper prefixes (`module.` from DDP, `_orig_mod.` from
    torch.compile) removed, and a description of where it was found.
    """
    if isinstance(obj, nn.Module):  # only reachable with --trust-checkpoint (a pickled module)
        return _strip_prefixes(obj.state_dict()), "pickled module"
    if _is_state_dict(obj):
        if use_ema:
            raise CheckpointError(f"{path} holds a single state_dict, no EMA weights; drop --ema")
        return _strip_prefixes(dict(obj)), "state_dict"
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict; expected {SUPPORTED}"
        )
    order = ("ema", "model_ema", "state_dict_ema") if use_ema else ("model", "state_dict", "model_state_dict", "net")
    for key in order:
        if key in obj:
            inner = obj[key]
            if isinstance(inner, Mapping) and not _is_state_dict(inner):
                for sub in ("module", "state_dict", "model"):
                    if sub in inner and _is_state_dict(inner[sub]):
                        inner = inner[sub]
                        break
            if _is_state_dict(inner) or isinstance(inner, nn.Module):
                sd, _ = unwrap(inner, path=path)
                return sd, key
    if use_ema:
        raise CheckpointError(f"{path} has no EMA weights (no 'ema' entry); drop --ema")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and len(tensors) >= len(obj) / 2:
        return _strip_prefixes(tensors), "state_dict"
    keys = ", ".join(map(str, list(obj)[:6]))
    raise CheckpointError(f"{path} has no weights in any known entry (top-level keys: {keys}); expected {SUPPORTED}")


def _strip_prefixes(sd: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------- formats


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


def _to_module_keys(sd: Mapping[str, torch.Tensor], form: str) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------- public API


def load(
    path: str | Path,
    *,
    arch: str | None = None,
    use_ema: bool = False,
    trust_checkpoint: bool = False,
    allow_nonfinite: bool = False,
) -> Loaded:
    """Load a checkpoint into its module, detecting format, form and variant from the weights.

    >>> loaded = load("RepVGG-A0-train.pth")        # doctest: +SKIP
    >>> loaded.variant, loaded.form
    ('RepVGG-A0', 'deploy')

    `arch` names the expected variant; it is checked against the weights, never trusted blindly.
    """
    p = Path(path)
    raw = read_file(p, trust_checkpoint=trust_checkpoint)
    if isinstance(raw, Mapping) and REPDEPLOY_MARKER in raw:
        return _load_repdeploy(raw, p, arch=arch, allow_nonfinite=allow_nonfinite)
    sd, container = unwrap(raw, use_ema=use_ema, path=p)
    fmt, form = detect_format(sd, p)
    if fmt == FORMAT_SCALES:
        return Loaded(p, None, None, fmt, form, container, "-", len(sd), extra={"scales": sorted(sd)})
    if fmt == FORMAT_TIMM:
        sd = timm_to_official(sd)
    check_dtypes(sd, p)
    if not allow_nonfinite:
        check_finite(sd, p)
    spec = infer_spec(sd, form, p)
    variant = spec.name
    if arch is not None:
        wanted = get_spec(arch, spec.num_classes)
        if not wanted.same_architecture(spec):
            raise CheckpointError(
                f"{p} holds a {describe(spec)} but --arch {arch} is a {describe(wanted)}; "
                "drop --arch to use what the weights say"
            )
        spec, variant = wanted, wanted.name
    model = build(spec, form)
    load_strict(model, _to_module_keys(sd, form), f"{fmt} {form} form of {variant}", p)
    return Loaded(p, model.eval(), spec, fmt, form, container, variant, len(sd))


def _load_repdeploy(raw: Mapping, p: Path, *, arch: str | None, allow_nonfinite: bool) -> Loaded:
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{p} is a damaged repdeploy fused file ({what}); re-run repdeploy fuse")

    if not isinstance(raw.get("arch"), Mapping):
        raise damaged(f"'arch' is {type(raw.get('arch')).__name__}, not a record")
    try:
        spec = ArchSpec.from_dict(dict(raw["arch"]))
    except InputError as exc:
        raise damaged(str(exc)) from exc
    sd = raw.get("state_dict")
    if not _is_state_dict(sd):
        raise damaged(f"'state_dict' is {type(sd).__name__}, not a mapping of names to tensors")
    if raw.get("extra") is not None and not isinstance(raw.get("extra"), Mapping):
        raise damaged(f"'extra' is {type(raw.get('extra')).__name__}, not a record")
    check_dtypes(sd, p)
    if arch is not None and not get_spec(arch, spec.num_classes).same_architecture(spec):
        raise CheckpointError(f"{p} holds a fused {spec.name}, not {arch}; drop --arch")
    if not allow_nonfinite:
        check_finite(sd, p)
    model = PlainNet(spec)
    load_strict(model, sd, f"repdeploy fused {spec.name}", p)
    extra = raw.get("extra") or {}
    return Loaded(p, model.eval(), spec, FORMAT_REPDEPLOY, "fused", "repdeploy", spec.name, len(sd), extra=dict(extra))


def load_fused(path: str | Path, **kwargs: Any):
    """Load any checkpoint and return (PlainNet, Loaded, Equivalence or None).

    Train, target and hs forms are fused and verified; deploy and fused forms are already plain.
    """
    from .fuse import fuse

    loaded = load(path, **kwargs)
    if loaded.model is None:
        raise CheckpointError(f"{path} is a RepOpt-VGG scales file: it carries no weights; {loaded.deploy_steps}")
    if isinstance(loaded.model, PlainNet):
        return loaded.model, loaded, None
    result = fuse(loaded.model)
    return result.plain, loaded, result.equivalence


def save_fused(plain: PlainNet, path: str | Path, extra: dict | None = None) -> Path:
    """Write repdeploy's fused format: the PlainNet weights plus the ArchSpec that builds them.

    Everything in it is plain data and tensors, so it loads with weights_only=True.
    """
    record = {
        REPDEPLOY_MARKER: 1,
        "version": __version__,
        "arch": plain.spec.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in plain.state_dict().items()},
        "extra": extra or {},
    }
    return save_torch_atomic(path, record)


def describe(spec: ArchSpec) -> str:
    groups = f", groups at layers {[i for i, _ in spec.groups]}" if spec.groups else ""
    se = ", SE" if spec.use_se else ""
    return f"{spec.family} net with depths {list(spec.depths)}, widths {list(spec.widths)}{groups}{se}"
