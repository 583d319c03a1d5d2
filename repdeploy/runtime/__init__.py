"""One Runner interface over torch, ONNX Runtime and TensorRT, and `open_runner` to pick one.

`open_runner` accepts a module or any model file a user has: a checkpoint (any family, fused
and verified on load), a repdeploy fused `.pt`, an `.onnx` file, or a TensorRT engine, and turns
it into the form the chosen engine runs (exporting to a temporary ONNX or engine when needed).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import defaults
from ..errors import InputError
from .base import InputMetadata, Runner

ENGINES = ("torch", "ort", "trt")
ONNX_SUFFIXES = (".onnx",)


def model_kind(path: str | Path) -> str:
    """'onnx', 'engine' or 'checkpoint', from the file suffix (checkpoints are sniffed on load)."""
    from ..export.tensorrt import ENGINE_SUFFIXES

    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    return "checkpoint"


@dataclass(frozen=True)
class RunnerSettings:
    """How `open_runner` opens a model; each field is also its keyword shortcut."""

    threads: int | None = None  # intra-op threads (ORT, torch)
    inter_op_threads: int | None = None  # ORT
    compile: bool = False  # torch.compile the torch engine's module
    name: str | None = None  # the label results carry (default: the file or class name)
    workdir: str | Path | None = None  # intermediate ONNX / engine files (default: a temporary directory)
    device: str | None = defaults.DEVICE
    input_size: int | None = None
    # a checkpoint's loading options (checkpoints.load)
    arch: str | None = None
    use_ema: bool = False
    trust_checkpoint: bool = False
    allow_nonfinite: bool = False


def open_runner(model: Any, engine: str = "ort", settings: RunnerSettings | None = None, **options: Any) -> Runner:
    """Return an inactive runner for `model` on `engine` ("torch", "ort" or "trt").

    `model` is an nn.Module or a path. `settings` (RunnerSettings, or its fields as keywords):
    `arch`, `use_ema`, `trust_checkpoint`, `allow_nonfinite` go to `checkpoints.load_fused`.
    Intermediate ONNX/engine files are written to `workdir`, or to a temporary directory removed
    with the runner. `device` ("auto", the default everywhere: the first CUDA GPU if there is
    one, else the CPU; "cpu"; "cuda[:N]") places the torch engine's module; ORT runs on its CPU
    provider and TensorRT on the GPU whatever it says. `input_size` feeds a checkpoint or module
    at that size instead of its variant's (an ONNX file or engine carries its own).

    >>> with open_runner("runs/a0/model_int8_ort.onnx", engine="ort", threads=2) as r:  # doctest: +SKIP
    ...     r.infer(batch).argmax(1)
    """
    from ..validate import with_options

    s = with_options(RunnerSettings, settings, options, "open_runner")
    threads, inter_op_threads, compile, name, workdir = s.threads, s.inter_op_threads, s.compile, s.name, s.workdir
    device, input_size = s.device, s.input_size
    load_kwargs = {"arch": s.arch, "use_ema": s.use_ema, "trust_checkpoint": s.trust_checkpoint,
                   "allow_nonfinite": s.allow_nonfinite}
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    from ..validate import threads as check_threads

    check_threads("--threads", threads)  # 100000 threads ran past 120 s and 12 GB before failing
    check_threads("inter_op_threads", inter_op_threads)
    from ..validate import input_size as check_input_size

    check_input_size("--input-size", input_size)
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()  # fail fast (exit 4) before exporting anything

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"model {path} does not exist; give a checkpoint, fused .pt, .onnx or engine file")
        kind = model_kind(path)
        name = name or path.name
        if input_size is not None and kind in ("onnx", "engine"):
            raise InputError(f"--input-size: {path} is an exported graph and runs at the size it was exported at; "
                             "export the checkpoint again with --input-size")
        if kind == "engine":
            if engine != "trt":
                raise InputError(f"{path} is a TensorRT engine; run it with --engine trt")
            from .trt import TrtRunner

            return TrtRunner(path, name=name)
        if kind == "onnx":
            if engine == "torch":
                raise InputError(f"{path} is an ONNX file; run it with --engine ort (or trt)")
            if engine == "ort":
                return _ort(path, name, threads, inter_op_threads)
            return _trt_from_onnx(path, name, workdir)
        from ..checkpoints import load_fused

        model = load_fused(path, **load_kwargs).plain

    if input_size is not None:
        from ..models.plain import at_input_size

        if getattr(model, "spec", None) is None:
            raise InputError(f"--input-size: {type(model).__name__} has no ArchSpec to resize")
        model = at_input_size(model, input_size)
    name = name or type(model).__name__
    if engine == "torch":
        from .torch import TorchRunner

        return TorchRunner(model, name=name, threads=threads, compile=compile, device=device)
    directory, owner = _workdir(workdir)
    onnx_path = _export(model, directory / "model_fp32.onnx")
    runner = _ort(onnx_path, name, threads, inter_op_threads) if engine == "ort" else _trt_from_onnx(onnx_path, name, directory)
    if owner is not None:
        weakref.finalize(runner, shutil.rmtree, owner, True)
    return runner


def _ort(path: Path, name: str, threads: int | None, inter_op_threads: int | None) -> Runner:
    from .ort import OrtRunner

    return OrtRunner(path, name=name, intra_op_threads=threads, inter_op_threads=inter_op_threads)


def _trt_from_onnx(path: Path, name: str, workdir: str | Path | None) -> Runner:
    from ..export.tensorrt import build_engine, onnx_precision
    from .trt import TrtRunner

    directory, owner = _workdir(workdir)
    # The ONNX decides the precision (strongly typed); timing and engine caches stay in the
    # work directory (a pipeline run directory), so a rerun reuses them.
    build = build_engine(path, directory / (Path(path).stem + ".engine"), precision=onnx_precision(path),
                         cache_dir=directory / "trt_cache")
    runner = TrtRunner(build.engine, name=name)
    if owner is not None:
        weakref.finalize(runner, shutil.rmtree, owner, True)
    return runner


def _workdir(workdir: str | Path | None) -> tuple[Path, str | None]:
    if workdir is not None:
        from ..io import ensure_writable_dir

        return ensure_writable_dir(workdir), None
    owner = tempfile.mkdtemp(prefix="repdeploy-runner-")
    return Path(owner), owner


def _export(model: Any, path: Path) -> Path:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise InputError(f"{type(model).__name__} has no ArchSpec; pass a repdeploy model or an ONNX file")
    from ..export.onnx import export_onnx

    return export_onnx(model, path, input_size=spec.input_size, in_channels=spec.in_channels)


__all__ = ["Runner", "InputMetadata", "open_runner", "model_kind", "ENGINES"]
