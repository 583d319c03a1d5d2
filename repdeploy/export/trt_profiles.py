"""TensorRT optimization profiles from trtexec-style shapes (`input:1x3x224x224`).

`parse_shapes` reads trtexec's --shapes / --minShapes / --optShapes / --maxShapes syntax into
`ShapeRange`s; `profile_ranges` fits them to an ONNX file's inputs (or makes the default batch
range when none are given); `profile_summary` prints them. Plain data and parsing: nothing here
needs TensorRT, so the command line checks shapes before TensorRT is even imported.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import InputError

DEFAULT_BATCHES = (1, 8, 64)  # max covers eval batches of 64


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimization-profile shapes (min <= opt <= max, dimension by dimension)."""

    name: str | None  # None: the model's only input
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return asdict(self)


_DIMS = re.compile(r"^\d+(x\d+)*$")


def _parse_one(text: str, option: str) -> dict[str | None, tuple[int, ...]]:
    shapes: dict[str | None, tuple[int, ...]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, dims = item.rpartition(":")
        if not _DIMS.match(dims):
            raise InputError(f"{option} {text!r}: give trtexec shapes like input:1x3x224x224 (name optional "
                             "for a one-input model), several separated by commas")
        shapes[name or None] = tuple(int(d) for d in dims.split("x"))
    if not shapes:
        raise InputError(f"{option} is empty; give e.g. input:1x3x224x224")
    return shapes


def parse_shapes(shapes: str | None = None, *, min_shapes: str | None = None, opt_shapes: str | None = None,
                 max_shapes: str | None = None) -> list[ShapeRange]:
    """trtexec's shape syntax -> profile ranges.

    `shapes` alone fixes min = opt = max (trtexec --shapes); the min/opt/max triple gives a
    dynamic range (trtexec --minShapes/--optShapes/--maxShapes), all three required together.

    >>> parse_shapes(min_shapes="input:1x3x224x224", opt_shapes="input:8x3x224x224", max_shapes="input:64x3x256x256")[0].max
    (64, 3, 256, 256)
    """
    triple = (min_shapes, opt_shapes, max_shapes)
    if shapes is not None and any(t is not None for t in triple):
        raise InputError("give either --shapes or --min-shapes/--opt-shapes/--max-shapes, not both")
    if shapes is not None:
        fixed = _parse_one(shapes, "--shapes")
        return [ShapeRange(n, s, s, s) for n, s in fixed.items()]
    if all(t is None for t in triple):
        return []
    if any(t is None for t in triple):
        raise InputError("--min-shapes, --opt-shapes and --max-shapes go together; give all three")
    lo, mid, hi = (_parse_one(t, o) for t, o in zip(triple, ("--min-shapes", "--opt-shapes", "--max-shapes")))
    if not (lo.keys() == mid.keys() == hi.keys()):
        raise InputError("--min-shapes, --opt-shapes and --max-shapes must name the same inputs")
    ranges = []
    for name in lo:
        a, b, c = lo[name], mid[name], hi[name]
        if not (len(a) == len(b) == len(c)) or not all(x <= y <= z for x, y, z in zip(a, b, c)):
            raise InputError(f"shapes of {name or 'the input'}: need min <= opt <= max in every dimension, "
                             f"got {a}, {b}, {c}")
        ranges.append(ShapeRange(name, a, b, c))
    return ranges


def default_profile(input_shape: tuple[int | None, ...], batch_sizes: tuple[int, int, int] = DEFAULT_BATCHES,
                    input_size: int | None = None) -> ShapeRange:
    """A batch range over an NCHW input whose dynamic spatial axes take the nominal size.

    A dimension the ONNX fixes keeps its size in min, opt and max: TensorRT refuses a profile that
    ranges over a static dimension ("dimension number 0 in profile 0 does not match network
    definition"), so a fixed batch gets no batch range.

    >>> default_profile((2, 3, None, None), input_size=32).max
    (2, 3, 32, 32)
    """
    rest = [d if isinstance(d, int) and d > 0 else input_size for d in input_shape[1:]]
    if any(d is None for d in rest):
        raise InputError(f"input shape {input_shape} has dynamic spatial axes: give --input-size or --shapes")
    batch = input_shape[0] if input_shape and isinstance(input_shape[0], int) and input_shape[0] > 0 else None
    lo, opt, hi = (batch, batch, batch) if batch is not None else batch_sizes
    return ShapeRange(None, (lo, *rest), (opt, *rest), (hi, *rest))


def profile_ranges(profiles: list[ShapeRange], facts: dict, batch_sizes: tuple[int, int, int],
                   input_size: int | None) -> list[ShapeRange]:
    """The profile for an ONNX file's inputs: `profiles` checked against them and named, or the
    default batch range. `facts` carries the ONNX's `inputs` as (name, dims, elem type) and its
    `nominal_size` (export.tensorrt reads them)."""
    names = [n for n, _, _ in facts["inputs"]]
    input_size = input_size or facts["nominal_size"]  # the exporter records the nominal size
    if not profiles:
        if len(names) != 1:
            raise InputError(f"the ONNX has inputs {names}; give --shapes for each")
        name, dims, _ = facts["inputs"][0]
        r = default_profile(dims, batch_sizes, input_size)
        return [ShapeRange(name, r.min, r.opt, r.max)]
    out = []
    for r in profiles:
        name = r.name
        if name is None:
            if len(names) != 1:
                raise InputError(f"the ONNX has inputs {names}; name the input in --shapes (e.g. {names[0]}:1x3x224x224)")
            name = names[0]
        if name not in names:
            raise InputError(f"--shapes names input {name!r}, but the ONNX has {names}")
        dims = next(d for n, d, _ in facts["inputs"] if n == name)
        for shape in (r.min, r.opt, r.max):
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise InputError(f"--shapes {name}:{'x'.join(map(str, shape))} does not fit the ONNX input "
                                 f"{tuple(d if d is not None else '?' for d in dims)}")
        out.append(ShapeRange(name, r.min, r.opt, r.max))
    return out


def profile_summary(ranges: Mapping[str, Any] | list[ShapeRange]) -> str:
    """`input: 1x3x224x224 .. 64x3x224x224 (opt 8x...)` for messages."""
    def dims(s):
        return "x".join(map(str, s))

    return ", ".join(f"{r.name}: {dims(r.min)} .. {dims(r.max)} (opt {dims(r.opt)})" for r in ranges)
