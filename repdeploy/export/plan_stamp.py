"""The stamp of a TensorRT plan: the side file `<engine>.json`, written beside every plan built.

A serialized engine runs only on the GPU compute capability it was built on and only under the
exact TensorRT version that built it (docs/triton.md), and its bytes cannot be read without
TensorRT. So every plan `build_engine` writes (and every plan in its engine cache) gets this
side file, and both readers go through it: the engine cache checks the two facts on every hit,
and `repdeploy package` (triton/stamp.py) reads them, with the source ONNX and the profile, to
write Triton's config. The file holds:

    {"compute_capability": "8.6", "tensorrt_version": "10.3.0", "onnx": "model_int8_tensorrt.onnx",
     "profiles": [{"name": "input", "min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}]}

`onnx` is relative to the engine's folder when the two share one, absolute otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The facts a plan is bound to: a plan stamped otherwise does not load here.
BINDING_KEYS = ("compute_capability", "tensorrt_version")


def side_file(engine: str | Path) -> Path:
    p = Path(engine)
    return p.with_name(p.name + ".json")


def write_stamp(engine: str | Path, *, compute_capability: str, tensorrt_version: str, onnx: str | Path,
                profiles: list[dict] | None = None) -> Path:
    """Write `<engine>.json` (atomically)."""
    from ..io import write_json_atomic

    engine, onnx = Path(engine), Path(onnx)
    source = onnx.name if onnx.parent.resolve() == engine.parent.resolve() else str(onnx.resolve())
    sf = side_file(engine)
    write_json_atomic(sf, {"compute_capability": compute_capability, "tensorrt_version": tensorrt_version,
                           "onnx": source, "profiles": list(profiles or [])})
    return sf


def read_stamp(engine: str | Path) -> dict | None:
    """The side file's JSON object, or None when there is none; ValueError when it is not one."""
    sf = side_file(engine)
    if not sf.is_file():
        return None
    doc = json.loads(sf.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{sf} is not a JSON object")
    return doc


def binds_here(engine: str | Path, compute_capability: str, tensorrt_version: str) -> bool:
    """Whether the plan is stamped for this GPU and this TensorRT (a missing stamp is not)."""
    doc = read_stamp(engine)
    return doc is not None and all(doc.get(k) == v for k, v in zip(BINDING_KEYS, (compute_capability, tensorrt_version)))
