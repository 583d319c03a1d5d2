"""TensorRT runner: Polygraphy's TrtRunner behind our Runner interface, timed as trtexec times.

Polygraphy deserializes the engine (`EngineFromBytes`) and runs it (`TrtRunner`: named I/O
tensors, `set_input_shape` / `set_tensor_address` / `execute_async_v3`, an output allocator).
Two figures per inference, as trtexec reports them:

- `last_inference_time()`: GPU compute time, the time between two CUDA events recorded on
  Polygraphy's stream immediately around `execute_async_v3` (trtexec's "GPU Compute Time"). It
  excludes what Polygraphy's `infer()` also does: input checks, shape and address setup, the
  host->device copy of the batch, the device->host copy of the logits and the host's
  `stream.synchronize()`, which at small batches can outweigh the kernels.
- `last_host_latency()`: the host wall time of the whole `infer()` (copies and synchronization
  included; trtexec's "Latency" adds the same copies). `describe()` summarises it.

The events go through the CUDA runtime Polygraphy loaded (export.trt_device), not torch. TensorRT
and Polygraphy are touched only on activation, so importing this module is free where they are
absent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RepDeployError
from ..export.tensorrt import import_tensorrt
from ..export.trt_device import GpuTimer
from .base import InputMetadata, Runner

GPU_TIMING = "GPU compute: CUDA events around execute_async_v3 (trtexec's GPU Compute Time)"


class _TimedContext:
    """Polygraphy's TrtRunner drives its execution context through `self.context` and calls
    `execute_async_v3(stream)` once per `infer()`. Standing in for that context, this records the
    CUDA events on that stream right around the call, and passes everything else through."""

    def __init__(self, context: Any, timer: GpuTimer) -> None:
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "_timer", timer)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._timer.start(stream_handle)
        ok = self._context.execute_async_v3(stream_handle)
        self._timer.stop(stream_handle)
        return ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._context, name, value)

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class TrtRunner(Runner):
    """Run a TensorRT engine file through Polygraphy's TrtRunner."""

    engine = "trt"
    times_itself = True

    def __init__(self, engine_path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(engine_path)
        super().__init__(name or self.path.name)
        self._runner = None
        self._input = self._output = ""
        self._input_dtype = np.float32
        self._timer: GpuTimer | None = None
        self._host_times: list[float] = []

    def activate_impl(self) -> None:
        trt = import_tensorrt()
        if not self.path.is_file():
            raise InputError(f"engine {self.path} does not exist; build one with `repdeploy export --format trt`")
        timer = GpuTimer()
        try:
            self._activate(trt, timer)
        except BaseException:
            timer.close()
            raise
        self._timer, self._host_times = timer, []

    def _activate(self, trt, timer: GpuTimer) -> None:
        from ..export.tensorrt import polygraphy_logging

        with polygraphy_logging():
            from polygraphy.backend.trt import EngineFromBytes
            from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner
            from polygraphy.exception import PolygraphyException

            try:
                engine = EngineFromBytes(self.path.read_bytes())()
            except PolygraphyException as exc:
                from ..export.trt_device import cuda_device

                # A plan runs only on the exact TensorRT version and compute capability that built it.
                raise InputError(f"{self.path} is not an engine for this TensorRT version and GPU (TensorRT "
                                 f"{trt.__version__}, compute capability {cuda_device().compute_capability}); "
                                 "rebuild it here with `repdeploy export --format trt`") from exc
            runner = PolygraphyTrtRunner(engine, name=self.name)
            runner.activate()
        inputs = runner.get_input_metadata(use_numpy_dtypes=False)
        outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                   if engine.get_tensor_name(i) not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            runner.deactivate()
            raise InputError(f"{self.path} has inputs {list(inputs)} and outputs {outputs}; "
                             "expected one image input, one logits output")
        self._input, self._output = next(iter(inputs)), outputs[0]
        meta = inputs[self._input]
        self._input_dtype = _NUMPY_DTYPES.get(getattr(meta.dtype, "name", str(meta.dtype)).lower(), np.float32)
        self._shape = tuple(int(d) for d in engine.get_tensor_shape(self._input))
        self._opt_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(self._input, 0)[1])
        runner.context = _TimedContext(runner.context, timer)
        self._runner = runner

    def deactivate_impl(self) -> None:
        try:
            if self._runner is not None:
                self._runner.deactivate()
        finally:
            if self._timer is not None:
                self._timer.close()
            self._runner = self._timer = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        from polygraphy.exception import PolygraphyException

        feed = x.astype(self._input_dtype, copy=False)
        try:
            start = time.perf_counter()
            out = self._runner.infer({self._input: feed})[self._output]
            self._host_times.append(time.perf_counter() - start)
            self._last_time = self._timer.elapsed_s()
            # Polygraphy returns views of buffers it reuses on the next inference: copy.
            return np.array(out, dtype=np.float32, copy=True)
        except PolygraphyException as exc:
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no detail"
            if "shape" in message.lower():
                raise InputError(f"{self.path}: batch shape {x.shape} is outside the engine's optimization profile "
                                 f"({message}); rebuild with wider --min-shapes/--max-shapes") from exc
            raise RepDeployError(f"TensorRT execution of {self.path} failed: {message}") from exc

    def get_input_metadata_impl(self) -> InputMetadata:
        shape = tuple(d if d >= 0 else None for d in self._shape)
        nominal = self._opt_shape[2] if len(self._opt_shape) == 4 and self._opt_shape[2] == self._opt_shape[3] else None
        dtype = "float16" if self._input_dtype is np.float16 else "float32"
        return InputMetadata(self._input, shape, dtype, nominal)

    def last_host_latency(self) -> float | None:
        """Seconds of the most recent `infer()` on the host: GPU compute plus the copies of the batch
        and the logits, Polygraphy's setup and the synchronization (None before the first)."""
        return self._host_times[-1] if self._host_times else None

    def describe(self) -> dict:
        host = np.array(self._host_times) * 1e3
        return {"engine": self.engine, "name": self.name, "timing": GPU_TIMING,
                "host_latency_ms": {"last": float(host[-1]), "median": float(np.median(host)), "count": len(host)}
                if len(host) else None}
