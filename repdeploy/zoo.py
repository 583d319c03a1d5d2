"""The built-in zoo: small models repdeploy trained on the built-in digits, listed in zoo.json.

They are the default models of `pipeline`, `quantize` and `qat` when no checkpoint is given,
and each entry records the exact command that made it (docs/training.md). Beside the two 32-px
minis, whose convolutions are too small for INT8 to beat per-call overhead, the default set has
repvgg_a0_96: real RepVGG-A0 widths at 96 px, where INT8 runs at a fraction of FP32's latency, so
`make demo` shows what INT8 is for. It is stored by `pack` (fused, float16: 14 MB) and loads like
any repdeploy fused file. Entries belong to a
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


def pack(checkpoint: str | Path, output: str | Path, *, input_size: int, half: bool = True,
         arch: str | None = None) -> dict:
    """Store a trained checkpoint the way the zoo ships its larger models: fused (deploy form,
    the fusion proved equivalent on load), its intended input size in the recorded ArchSpec, and
    float16 tensors when `half`, so an A0-width model fits in 15 MB (7.0 M parameters: 28 MB as
    float32 in any form). Loading is unchanged: `load` reads it with weights_only=True as a
    repdeploy fused file and casts the tensors to the model's float32.

    Returns what was written: the path, parameter count, bytes, and the largest logit difference
    the float16 rounding makes relative to the logit scale (seeded random input).

    >>> pack("a0_96.pth", "repdeploy/assets/zoo/repvgg_a0_96.pt", input_size=96)   # doctest: +SKIP
    """
    import dataclasses

    import torch

    from .checkpoints import load_fused, save_fused
    from .validate import integer

    integer("--input-size", input_size, low=8, high=4096, allow_none=False)
    plain, loaded, equivalence = load_fused(checkpoint, arch=arch)
    plain.spec = dataclasses.replace(plain.spec, input_size=input_size)
    plain.eval()
    x = torch.randn(4, plain.spec.in_channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = plain(x)
        if half:
            plain.half()
            rounded = plain.float()(x)
        else:
            rounded = reference
    scale = float(reference.abs().max())
    rel = float((rounded - reference).abs().max()) / scale if scale > 0 else 0.0
    extra = {"source": Path(checkpoint).name, "source_form": loaded.form, "float16": half,
             "fusion": equivalence.to_dict() if equivalence is not None else {"already_plain": True},
             "float16_max_rel_logit_diff": rel}
    if half:
        plain.half()  # stored as float16; the loader casts back to the model's float32
    path = save_fused(plain, output, extra=extra)
    return {"path": str(path), "params": sum(p.numel() for p in plain.parameters()),
            "bytes": Path(path).stat().st_size, "float16_max_rel_logit_diff": rel}


def main(argv: list[str] | None = None) -> None:
    """`python -m repdeploy.zoo pack CHECKPOINT -o OUT --input-size N`: the zoo's packing step."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m repdeploy.zoo", description=pack.__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="fuse, record the input size, store float16")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--arch", default=None)
    p.add_argument("--float32", action="store_true", help="keep float32 tensors")
    args = ap.parse_args(argv)
    print(json.dumps(pack(args.checkpoint, args.output, input_size=args.input_size, half=not args.float32,
                          arch=args.arch)))


if __name__ == "__main__":
    main()
