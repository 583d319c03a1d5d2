"""repdeploy's fused format (fused.pt): a PlainNet's weights plus the ArchSpec that builds them.

Everything in it is plain data and tensors, so it loads with weights_only=True; `load` recognises
it by its marker key and reads it back here, checking the record as it would any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from ..version import __version__
from ..errors import CheckpointError, InputError
from ..io import save_torch_atomic
from ..models import ArchSpec, PlainNet, get_spec
from .files import is_state_dict
from .formats import FORMAT_REPDEPLOY, Loaded, check_dtypes, check_finite, load_strict

if TYPE_CHECKING:
    from ..fuse import Equivalence

REPDEPLOY_MARKER = "repdeploy_format"


@dataclass(frozen=True)
class FusedModel:
    """What `load_fused` returns: the inference-form model, what was loaded, and the fusion check.

    `equivalence` is None when the checkpoint was already plain (deploy form or fused.pt).
    Unpacks as the (plain, loaded, equivalence) triple it replaces, for existing callers.

    >>> from repdeploy.checkpoints import load_fused
    >>> from repdeploy.zoo import builtin_zoo
    >>> fused = load_fused(builtin_zoo()[0].file)
    >>> fused.plain.spec.name, fused.equivalence.max_abs_diff < 1e-4
    ('RepVGG-mini', True)
    """

    plain: PlainNet
    loaded: Loaded
    equivalence: Equivalence | None

    def __iter__(self) -> Iterator:
        return iter((self.plain, self.loaded, self.equivalence))


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


def read_fused(raw: Mapping, p: Path, *, arch: str | None, allow_nonfinite: bool) -> Loaded:
    """The fused file `p` deserialized as `raw`, checked like any checkpoint and loaded into a PlainNet."""
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{p} is a damaged repdeploy fused file ({what}); re-run repdeploy fuse")

    if not isinstance(raw.get("arch"), Mapping):
        raise damaged(f"'arch' is {type(raw.get('arch')).__name__}, not a record")
    try:
        spec = ArchSpec.from_dict(dict(raw["arch"]))
    except InputError as exc:
        raise damaged(str(exc)) from exc
    sd = raw.get("state_dict")
    if not is_state_dict(sd):
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
