"""What a TensorRT plan was built for: GPU compute capability, TensorRT version, source ONNX, profile.

A serialized engine runs only on the GPU compute capability it was built on and only under the
TensorRT version that built it (docs/triton.md), and its bytes cannot be read without TensorRT.
So a plan is packaged from its stamp: the side file `<engine>.json` written beside it
(`engine_stamp` is the one reader, so the format can follow export/tensorrt.py), with
`--compute-capability` / `--tensorrt-version` given explicitly where the side file lacks them.
The side file holds:

    {"compute_capability": "8.6", "tensorrt_version": "10.3.0", "onnx": "model_int8_tensorrt.onnx",
     "profiles": [{"name": "input", "min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}]}

`onnx` (relative to the engine's folder) is the file the engine was built from; without it the
ONNX of the same stem beside the engine is used (`build_engine_from_model` keeps it there). Its
graph gives the names and types; the profile gives the batch range.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

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


def side_file(engine: str | Path) -> Path:
    p = Path(engine)
    return p.with_name(p.name + ".json")


def engine_stamp(engine: str | Path, *, compute_capability: str | None = None,
                 tensorrt_version: str | None = None) -> EngineStamp:
    """The stamp of a TensorRT plan: its side file, with explicit values taking precedence.

    Raises InputError naming the missing fact and how to give it.
    """
    p = Path(engine)
    if not p.is_file():
        raise InputError(f"engine {p} does not exist; build one with `repdeploy export MODEL.onnx --format trt`")
    doc: dict = {}
    sf = side_file(p)
    if sf.is_file():
        try:
            doc = json.loads(sf.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{sf} is not readable JSON ({exc}); rebuild the engine or remove the file") from exc
        if not isinstance(doc, dict):
            raise InputError(f"{sf} is not a JSON object; rebuild the engine or remove the file")
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


def write_stamp(engine: str | Path, *, compute_capability: str, tensorrt_version: str, onnx: str | Path,
                profiles: list[dict] | None = None) -> Path:
    """Write `<engine>.json` (atomically); the format `engine_stamp` reads."""
    from ..io import write_json_atomic

    sf = side_file(engine)
    write_json_atomic(sf, {"compute_capability": compute_capability, "tensorrt_version": tensorrt_version,
                           "onnx": Path(onnx).name, "profiles": list(profiles or [])})
    return sf
