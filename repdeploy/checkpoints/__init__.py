"""Read any RepVGG-family checkpoint: safely, strictly, and knowing what it is from its keys.

The file name never decides anything (one upstream `-train` file holds deploy keys): the
container, the key format, the form and the architecture are all read off the tensors.
Checkpoints are untrusted pickles, so they are opened with `weights_only=True`; a file that
needs more is refused unless the user opts in with `--trust-checkpoint`.

`load` runs the steps in order: `files` (safe reading, containers), `formats` (format and form
from the keys, ArchSpec from the shapes, weight checks, strict loading) and, for repdeploy's own
files, `fused` (fused.pt, written by `save_fused`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..models import PlainNet, build, get_spec
from .files import read_file, unwrap
from .formats import (FORMAT_SCALES, FORMAT_TIMM, Loaded, check_dtypes, check_finite, describe, detect_format,
                      infer_spec, load_strict, timm_to_official, to_module_keys)
from .fused import REPDEPLOY_MARKER, FusedModel, read_fused, save_fused

__all__ = ["FusedModel", "Loaded", "load", "load_fused", "save_fused"]


def load(
    path: str | Path,
    *,
    arch: str | None = None,
    use_ema: bool = False,
    trust_checkpoint: bool = False,
    allow_nonfinite: bool = False,
) -> Loaded:
    """Load a checkpoint into its module, detecting format, form and variant from the weights.

    >>> from repdeploy.zoo import builtin_zoo
    >>> loaded = load(builtin_zoo()[0].file)          # the shipped RepVGG-mini, train form
    >>> loaded.variant, loaded.form
    ('RepVGG-mini', 'train')

    `arch` names the expected variant; it is checked against the weights, never trusted blindly.
    """
    p = Path(path)
    raw = read_file(p, trust_checkpoint=trust_checkpoint)
    if isinstance(raw, Mapping) and REPDEPLOY_MARKER in raw:
        return read_fused(raw, p, arch=arch, allow_nonfinite=allow_nonfinite)
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
    load_strict(model, to_module_keys(sd, form), f"{fmt} {form} form of {variant}", p)
    return Loaded(p, model.eval(), spec, fmt, form, container, variant, len(sd))


def load_fused(path: str | Path, **kwargs: Any) -> FusedModel:
    """Load any checkpoint as its fused PlainNet: a `FusedModel` (plain, loaded, equivalence).

    Train, target and hs forms are fused and verified; deploy and fused forms are already plain
    (equivalence None). `kwargs` are `load`'s.
    """
    from ..fuse import fuse

    loaded = load(path, **kwargs)
    if loaded.model is None:
        raise CheckpointError(f"{path} is a RepOpt-VGG scales file: it carries no weights; {loaded.deploy_steps}")
    if isinstance(loaded.model, PlainNet):
        return FusedModel(loaded.model, loaded, None)
    result = fuse(loaded.model)
    return FusedModel(result.plain, loaded, result.equivalence)
