"""TensorRT engines through Polygraphy: ONNX (FP32, FP16 or explicit-quantization INT8) -> engine.

The network, builder config and serialized engine come from Polygraphy's loaders
(`NetworkFromOnnxPath`, `CreateConfig`, `Profile`, `EngineBytesFromNetwork`), the way NVIDIA's
own tools build engines, not from a hand-written builder. Precisions:

- `fp32`: the FP32 ONNX, strongly typed where the TensorRT version has the flag (10.x; 11.x is
  always strongly typed), TF32 off: the engine computes in fp32.
- `fp16`: from an FP16 ONNX (`export --precision fp16`), strongly typed: fp16 because the graph
  is. From an FP32 ONNX, weakly typed with the FP16 builder flag (10.x only: 11.x removed it).
- `int8`: the `tensorrt` QDQ ONNX (`quantize --target tensorrt`), strongly typed: INT8 exactly
  where the Q/DQ nodes put it (docs/facts.md §4), no calibrator and no INT8 builder flag.
- `best`: the FP32 ONNX weakly typed with the FP16 and TF32 builder flags, letting TensorRT pick
  per layer. 11.x removed those flags, so there it is refused with the alternative.

Optimization profiles come from trtexec-style shapes (`input:1x3x224x224`; export.trt_profiles):
a static input dimension gets min = opt = max, as TensorRT requires. The tactic timing cache and a
cache of built engines live in a directory the caller owns: the run directory. A plan runs only
on the GPU compute capability and the exact TensorRT version that built it, so cached engines are
keyed by both (with the ONNX bytes, precision, profile), stamped with both, and checked on every
hit by deserializing them: one that does not load here is rebuilt and replaced, never returned.

TensorRT and Polygraphy are imported lazily, and whether they can run is decided by TensorRT,
Polygraphy and a CUDA device visible to the CUDA runtime Polygraphy loads (export.trt_device),
not by torch, whose CPU build the documented install uses. Without them callers get
BackendMissingError (exit 4) naming what to install, never an ImportError. The CPU test suite
runs this module against test doubles of `tensorrt` and of the CUDA runtime (tests/fake_tensorrt);
a real build runs only where TensorRT and a GPU exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendMissingError, ExportError, InputError
from ..io import atomic_path
# INSTALL_HINT and polygraphy_logging are imported from here by callers and tests.
from .trt_device import INSTALL_HINT, cuda_device, polygraphy_logging  # noqa: F401
from .trt_profiles import DEFAULT_BATCHES, ShapeRange, profile_ranges

log = logging.getLogger(__name__)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PRECISIONS = ("fp32", "fp16", "int8", "best")
TIMING_CACHE = "timing.cache"
ENGINE_CACHE = "engines"


def import_tensorrt() -> Any:
    """Import tensorrt and Polygraphy and check a CUDA device is visible, or raise BackendMissingError."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendMissingError(f"TensorRT is not installed: {INSTALL_HINT}") from exc
    except Exception as exc:  # a wheel whose CUDA libraries do not load fails with OSError and friends
        raise BackendMissingError(f"TensorRT failed to load ({exc}): {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):  # `tensorrt-stubs` alone leaves an empty namespace package
        raise BackendMissingError(f"TensorRT is not installed (only its type stubs are): {INSTALL_HINT}")
    try:
        import polygraphy  # noqa: F401  (builder and runner go through it)
    except ImportError as exc:
        raise BackendMissingError(f"Polygraphy is not installed (TensorRT is): {INSTALL_HINT}") from exc
    cuda_device()  # raises when the CUDA runtime does not load or sees no device
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendMissingError:
        return False
    return True


# ------------------------------------------------------------------------------ build


@dataclass
class EngineBuild:
    """What `build_engine` made and how (recorded in reports)."""

    engine: Path
    onnx: Path
    precision: str
    strongly_typed: bool
    profiles: list[ShapeRange]
    tensorrt_version: str
    cached: bool  # the engine came from the engine cache, not a new build
    timing_cache: Path | None
    compute_capability: str = ""  # of the GPU it was built on, and the only one it runs on

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(engine=str(self.engine), onnx=str(self.onnx),
                 timing_cache=str(self.timing_cache) if self.timing_cache else None)
        return d


def _onnx_facts(onnx_path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{onnx_path} is not a readable ONNX file ({exc}); export one with `repdeploy export`") from exc
    ops = {n.op_type for n in model.graph.node}
    inputs = []
    for i in model.graph.input:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim)
        inputs.append((i.name, dims, i.type.tensor_type.elem_type))
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        e == onnx.TensorProto.FLOAT16 for _, _, e in inputs)
    from .onnx import META_INPUT_SIZE

    from ..metadata import onnx_metadata

    nominal = onnx_metadata(onnx_path).get(META_INPUT_SIZE, "")  # the one reader (metadata.py)
    return {"inputs": inputs, "qdq": "QuantizeLinear" in ops, "fp16": fp16,
            "nominal_size": int(nominal) if nominal.isdigit() else None}


def onnx_precision(onnx_path: str | Path) -> str:
    """The engine precision an ONNX file builds to as it is: int8 (QDQ), fp16 or fp32."""
    facts = _onnx_facts(Path(onnx_path))
    return "int8" if facts["qdq"] else "fp16" if facts["fp16"] else "fp32"


def _check_precision(precision: str, facts: dict, onnx_path: Path) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not facts["qdq"]:
        raise InputError(f"--precision int8 builds from a QDQ ONNX and {onnx_path} has no Q/DQ nodes; "
                         "make one with `repdeploy quantize --int8 --target tensorrt`")
    if precision != "int8" and facts["qdq"]:
        raise InputError(f"{onnx_path} is a QDQ (INT8) graph; build it with --precision int8")
    if precision in ("fp32", "best") and facts["fp16"]:
        raise InputError(f"{onnx_path} is an FP16 ONNX; build it with --precision fp16")


def _cache_key(onnx_path: Path, precision: str, strongly_typed: bool, ranges: list[ShapeRange],
               workspace_mb: int, stamp: dict) -> str:
    h = hashlib.sha256(onnx_path.read_bytes())
    h.update(json.dumps({"precision": precision, "strongly_typed": strongly_typed, "workspace_mb": workspace_mb,
                         "profiles": [r.to_dict() for r in ranges], **stamp}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def _loads_here(plan: Path, stamp: dict) -> bool:
    """Whether a cached plan was stamped for this GPU and TensorRT and deserializes here."""
    from .plan_stamp import binds_here

    try:
        if not binds_here(plan, **stamp):
            return False
        with polygraphy_logging():
            from polygraphy.backend.trt import EngineFromBytes

            EngineFromBytes(plan.read_bytes())()
    except Exception as exc:  # a missing or garbled stamp, PolygraphyException from TensorRT's refusal
        log.warning("cached TensorRT engine %s does not load here (%s); rebuilding it", plan,
                    str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
        return False
    return True


def _stamp(plan: str | Path, stamp: dict, onnx_path: Path, ranges: list[ShapeRange]) -> None:
    # Every plan carries what it is bound to (export/plan_stamp.py): the cache checks it on each
    # hit, `repdeploy package` writes Triton's per-GPU config from it.
    from .plan_stamp import write_stamp

    write_stamp(plan, onnx=onnx_path, profiles=[r.to_dict() for r in ranges], **stamp)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp32",
    profiles: list[ShapeRange] | None = None,
    batch_sizes: tuple[int, int, int] = DEFAULT_BATCHES,
    input_size: int | None = None,
    cache_dir: str | Path | None = None,
    workspace_mb: int = 1024,
    verbose: bool = False,
) -> EngineBuild:
    """Build a TensorRT engine from `onnx_path` with Polygraphy and write it to `engine_path` (atomically).

    `profiles` (from `parse_shapes`) are the optimization profile; without them the batch axis
    spans `batch_sizes` (min, opt, max) and dynamic spatial axes take `input_size`. With
    `cache_dir`, the tactic timing cache (`timing.cache`) and built engines (`engines/`) are
    kept there and an identical request reuses the engine.

    >>> build_engine("model_int8_tensorrt.onnx", "model.engine", precision="int8")   # doctest: +SKIP
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist; export one with `repdeploy export`")
    facts = _onnx_facts(onnx_path)
    _check_precision(precision, facts, onnx_path)
    ranges = profile_ranges(list(profiles or []), facts, batch_sizes, input_size)
    version = str(trt.__version__)
    has_strong_flag = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    # fp16 from an FP32 ONNX, and best, ask TensorRT to lower precision with builder flags on a
    # weakly typed network; everything else is strongly typed (the ONNX's types decide).
    flagged = precision == "best" or (precision == "fp16" and not facts["fp16"])
    if flagged and not hasattr(trt.BuilderFlag, "FP16"):
        hint = ("export an FP16 ONNX (`repdeploy export --precision fp16`) and build that" if precision == "fp16"
                else "use --precision fp16 with an FP16 ONNX")
        raise InputError(f"--precision {precision} from an FP32 ONNX needs TensorRT's FP16 builder flag, which "
                         f"TensorRT {version} removed (networks are strongly typed); {hint}")
    # 11.x has no flag because every network is strongly typed; 10.x needs the flag for it.
    strongly_typed = not flagged and (has_strong_flag or int(version.split(".")[0]) >= 11)

    device = cuda_device()
    stamp = {"compute_capability": device.compute_capability, "tensorrt_version": version}
    cache = Path(cache_dir) if cache_dir is not None else None
    cached_engine = None
    if cache is not None:
        from ..io import ensure_writable_dir

        ensure_writable_dir(cache / ENGINE_CACHE)
        key = _cache_key(onnx_path, precision, strongly_typed, ranges, workspace_mb, stamp)
        cached_engine = cache / ENGINE_CACHE / f"{key}.engine"
        if cached_engine.is_file() and _loads_here(cached_engine, stamp):
            with atomic_path(engine_path) as tmp:
                shutil.copyfile(cached_engine, tmp)
            _stamp(engine_path, stamp, onnx_path, ranges)
            return EngineBuild(Path(engine_path), onnx_path, precision, strongly_typed, ranges, version, True,
                               cache / TIMING_CACHE, device.compute_capability)

    timing_cache = str(cache / TIMING_CACHE) if cache is not None else None
    try:
        with polygraphy_logging(verbose):
            from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

            profile = Profile()
            for r in ranges:
                profile.add(r.name, min=r.min, opt=r.opt, max=r.max)
            config = CreateConfig(
                tf32=precision == "best",
                fp16=flagged,
                profiles=[profile],
                memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20},
                load_timing_cache=timing_cache,
            )
            network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=(strongly_typed and has_strong_flag) or None)
            serialized = EngineBytesFromNetwork(network, config=config, save_timing_cache=timing_cache)()
    except Exception as exc:
        if type(exc).__name__ != "PolygraphyException":
            raise
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} ({precision}): "
                          f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else 'no detail'}; "
                          "rerun with --verbose for TensorRT's log") from exc
    if not serialized:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with --verbose for the log")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    _stamp(engine_path, stamp, onnx_path, ranges)
    if cached_engine is not None:
        with atomic_path(cached_engine) as tmp:
            shutil.copyfile(engine_path, tmp)
        _stamp(cached_engine, stamp, onnx_path, ranges)
    return EngineBuild(Path(engine_path), onnx_path, precision, strongly_typed, ranges, version, False,
                       Path(timing_cache) if timing_cache else None, device.compute_capability)


def build_engine_from_model(
    plain: Any,
    engine_path: str | Path,
    *,
    input_size: int,
    precision: str = "fp32",
    profiles: list[ShapeRange] | None = None,
    cache_dir: str | Path | None = None,
    verbose: bool = False,
) -> EngineBuild:
    """Export a fused PlainNet to ONNX (FP32, or FP16 for `fp16`) beside the engine and build it.

    The intermediate ONNX is kept next to the engine (`<engine stem>.onnx`), so what the engine
    was built from can be inspected and compared (`repdeploy compare`).
    """
    if precision == "int8":
        raise InputError("--precision int8 engines build from a calibrated QDQ ONNX: run `repdeploy quantize --int8 "
                         "--target tensorrt`, then `repdeploy export model_int8_tensorrt.onnx --format trt "
                         "--precision int8`")
    import_tensorrt()  # exit 4 before exporting anything
    from .onnx import export_onnx

    engine_path = Path(engine_path)
    onnx_path = engine_path.with_suffix(".onnx")
    export_onnx(plain, onnx_path, input_size=input_size, in_channels=plain.spec.in_channels,
                precision="fp16" if precision == "fp16" else "fp32")
    return build_engine(onnx_path, engine_path, precision=precision, profiles=profiles, input_size=input_size,
                        cache_dir=cache_dir if cache_dir is not None else engine_path.parent / "trt_cache",
                        verbose=verbose)
