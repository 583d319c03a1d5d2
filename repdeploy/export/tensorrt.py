"""TensorRT engine builder: ONNX (FP32 or explicit-quantization QDQ INT8) -> engine file on disk.

Written against TensorRT's documented Python API for 10.x and 11.x. Networks are built strongly
typed: in 11 that is the only mode, and in 10 it is how an explicit-quantization (Q/DQ) network
gets INT8 exactly where the Q/DQ nodes put it without the deprecated INT8/FP16 builder flags
(reference.md §4). No precision BuilderFlag (INT8/FP16) and no calibrator is used: 11.x removed
them. TensorRT is imported lazily: without it (or without an NVIDIA GPU) callers get
BackendMissingError (exit 4) naming what to install and where it runs.

UNVERIFIED HERE: no NVIDIA GPU is available on the development machine, so this path has never
run; its tests skip with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BackendMissingError, ExportError, InputError
from ..io import atomic_path

INSTALL_HINT = "pip install 'repdeploy[trt]' and run on a machine with an NVIDIA GPU"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def import_tensorrt() -> Any:
    """Import tensorrt and check an NVIDIA GPU is visible, or raise BackendMissingError."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendMissingError(f"TensorRT is not installed: {INSTALL_HINT}") from exc
    except Exception as exc:  # a wheel whose CUDA libraries do not load fails with OSError and friends
        raise BackendMissingError(f"TensorRT failed to load ({exc}): {INSTALL_HINT}") from exc
    import torch

    if not torch.cuda.is_available():
        raise BackendMissingError(f"TensorRT needs an NVIDIA GPU and none is visible to torch: {INSTALL_HINT}")
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendMissingError:
        return False
    return True


def network_flags(trt: Any) -> int:
    """Strongly typed where the flag exists (10.x needs it; 11.x ignores it, always strongly typed)."""
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    return flags


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    batch_sizes: tuple[int, int, int] = (1, 8, 64),  # max covers eval batches of 64
    workspace_mb: int = 1024,
    verbose: bool = False,
) -> Path:
    """Parse `onnx_path` and write a serialized engine to `engine_path` (atomically).

    `batch_sizes` is the (min, opt, max) of the optimization profile for a dynamic batch axis.

    >>> build_engine("model_int8_tensorrt.onnx", "model.engine")   # doctest: +SKIP
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model {onnx_path} does not exist; export one with `repdeploy export`")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors or 'no detail'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape and shape[0] == -1:
            dynamic = True
            rest = shape[1:]
            lo, opt, hi = batch_sizes
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    if dynamic:
        config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path}; rerun with verbose=True for the log")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return Path(engine_path)
