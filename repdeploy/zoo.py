"""The built-in zoo: small models repdeploy trained on the built-in digits, listed in zoo.json.

They are the default models of `pipeline`, `quantize` and `qat` when no checkpoint is given,
and each entry records the exact command that made it (docs/training.md). Entries belong to a
named set ("zoo" key, default "default"): "stress" is a RepVGG / RepOpt-VGG pair trained so that
PTQ of the RepVGG model really loses accuracy (`repdeploy pipeline --zoo stress --qat`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

ZOO_DIR = Path(__file__).resolve().parent / "assets" / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: Path
    arch: str
    family: str
    input_size: int
    val_top1: float | None = None
    scales: Path | None = None  # the RepOpt scales file it was trained with, if any
    command: str | None = None
    zoo: str = "default"  # the named set it belongs to (ZOOS)


#: the named sets of zoo.json: "default" is what `make demo` runs; "stress" is opt-in
ZOOS = ("default", "stress")


def builtin_zoo(zoo: str | None = "default") -> list[ZooEntry]:
    """The models of one named set of the shipped zoo.json (None: every set), with absolute paths."""
    if zoo is not None and zoo not in ZOOS:
        raise InputError(f"unknown zoo {zoo!r}: choose one of {', '.join(ZOOS)}")
    index = ZOO_DIR / "zoo.json"
    if not index.is_file():
        raise InputError(f"the built-in zoo index {index} is missing; reinstall repdeploy or pass a checkpoint")
    try:
        raw = json.loads(index.read_text())
        entries = []
        for e in raw["models"]:
            scales = next((m["file"] for m in e.get("made_with", []) if m.get("kind") == "repopt-scales"), None)
            entries.append(ZooEntry(
                name=e.get("name") or Path(e["file"]).stem, file=ZOO_DIR / e["file"], arch=e["arch"],
                family=e.get("family", "repvgg"), input_size=int(e["input_size"]), val_top1=e.get("val_top1"),
                scales=ZOO_DIR / scales if scales else None, command=e.get("command"),
                zoo=e.get("zoo", "default"),
            ))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the built-in zoo index {index} is malformed ({exc}); reinstall repdeploy") from exc
    entries = [e for e in entries if zoo is None or e.zoo == zoo]
    if not entries:
        raise InputError(f"{index} lists no models{f' in zoo {zoo!r}' if zoo else ''}; reinstall repdeploy or pass "
                         "a checkpoint")
    return entries


def zoo_entry(family: str) -> ZooEntry:
    """The first default-zoo model of a family ("repvgg" or "repopt")."""
    for entry in builtin_zoo():
        if entry.family == family:
            return entry
    raise InputError(f"the built-in zoo has no {family} model; pass a checkpoint")


def is_zoo_path(path: str | Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(ZOO_DIR)
    except OSError:
        return False
