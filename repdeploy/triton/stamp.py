"""What a TensorRT plan was built for: GPU compute capability, TensorRT version, source ONNX, profile.

A serialized engine runs only on the GPU compute capability it was built on and only under the
TensorRT version that built it (docs/triton.md), and its bytes cannot be read without TensorRT.
So a plan is packaged from its stamp: the side file `<engine>.json` that `build_engine` writes
beside every plan (export/plan_stamp.py, the one writer), with `--compute-capability` /
`--tensorrt-version` given explicitly for a plan built elsewhere, without one. `onnx` is the file
the engine was built from; without it the ONNX of the same stem beside the engine is used
(`build_engine_from_model` keeps it there). Its graph gives the names and types; the profile
gives the batch range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..export.plan_stamp import read_stamp, side_file

_CC = re.compile(r"^\d{1,2}\.\d{1,2}$")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+){0,2}$")


@dataclass(frozen=True)
class EngineStamp:
    """One plan's build facts; `profiles` maps input name -> (min, opt, max) shapes."""

    engine: Path
    compute_capability: str  # "8.6": Triton's cc_model_filenames key
    tensorrt_version: str
    onnx: Path
    profiles: dict[str | None, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

    @property
    def sm(self) -> str:
        """`sm86` for 8.6: the part of the plan's file name that says which GPUs it is for."""
        return "sm" + self.compute_capability.replace(".", "")


def engine_stamp(engine: str | Path, *, compute_capability: str | None = None,
                 tensorrt_version: str | None = None) -> EngineStamp:
    """The stamp of a TensorRT plan: its side file, with explicit values taking precedence.

    Raises InputError naming the missing fact and how to give it.
    """
    p = Path(engine)
    if not p.is_file():
        raise InputError(f"engine {p} does not exist; build one with `repdeploy export MODEL.onnx --format trt`")
    sf = side_file(p)
    try:
        doc = read_stamp(p) or {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{sf} is not a readable JSON object ({exc}); rebuild the engine or remove the file") from exc
    cc = compute_capability or doc.get("compute_capability")
    version = tensorrt_version or doc.get("tensorrt_version")
    if cc is None:
        raise InputError(f"{p}: the GPU compute capability it was built for is unknown (no {sf.name}); give "
                         "--compute-capability X.Y (nvidia-smi --query-gpu=compute_cap --format=csv on the build GPU)")
    if version is None:
        raise InputError(f"{p}: the TensorRT version that built it is unknown (no {sf.name}); give "
                         "--tensorrt-version X.Y.Z (python -c 'import tensorrt; print(tensorrt.__version__)')")
    cc, version = str(cc), str(version)
    if not _CC.match(cc):
        raise InputError(f"compute capability {cc!r} for {p}: write it as major.minor, e.g. 8.6")
    if not _VERSION.match(version):
        raise InputError(f"TensorRT version {version!r} for {p}: write it as e.g. 10.3.0")
    source = p.parent / doc["onnx"] if isinstance(doc.get("onnx"), str) else p.with_suffix(".onnx")
    if not source.is_file():
        raise InputError(f"{p}: the ONNX it was built from ({source}) is missing; Triton's config is derived from "
                         "that graph: keep it beside the engine, or name it in the \"onnx\" field of "
                         f"{sf.name}")
    profiles = {}
    for entry in doc.get("profiles") or []:
        try:
            profiles[entry.get("name")] = (tuple(entry["min"]), tuple(entry["opt"]), tuple(entry["max"]))
        except (AttributeError, KeyError, TypeError) as exc:
            raise InputError(f"{sf}: profile entry {entry!r} needs min, opt and max shapes") from exc
    return EngineStamp(engine=p, compute_capability=cc, tensorrt_version=version, onnx=source, profiles=profiles)
