"""TensorRT runner: Polygraphy's TrtRunner behind our Runner interface, timed with CUDA events.

Polygraphy deserializes the engine (`EngineFromBytes`) and runs it (`TrtRunner`: named I/O
tensors, `set_input_shape` / `set_tensor_address` / `execute_async_v3`, an output allocator).
Where torch sees the GPU, the batch is copied to the device before the clock starts and
`last_inference_time` is the GPU time between two CUDA events recorded on Polygraphy's stream
around the inference (host<->device copies excluded, as trtexec's GPU compute time). Without
torch CUDA (the CPU test suite runs this against a test double of TensorRT and CUDA) the feed
is a host array and the time is Polygraphy's host-side figure, and `describe()` says which.

TensorRT, Polygraphy and torch's CUDA side are touched only on activation, so importing this
module is free where they are absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, RepDeployError
from ..export.tensorrt import import_tensorrt
from .base import InputMetadata, Runner

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
        self._events = None

    def activate_impl(self) -> None:
        import_tensorrt()
        if not self.path.is_file():
            raise InputError(f"engine {self.path} does not exist; build one with `repdeploy export --format trt`")
        from ..export.tensorrt import polygraphy_logging

        with polygraphy_logging():
            from polygraphy.backend.trt import EngineFromBytes
            from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner
            from polygraphy.exception import PolygraphyException

            try:
                engine = EngineFromBytes(self.path.read_bytes())()
            except PolygraphyException as exc:
                raise InputError(f"{self.path} is not an engine for this TensorRT version and GPU; rebuild it "
                                 "here with `repdeploy export --format trt`") from exc
            runner = PolygraphyTrtRunner(engine, name=self.name)
            runner.activate()
        self._runner = runner
        inputs = runner.get_input_metadata(use_numpy_dtypes=False)
        outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                   if engine.get_tensor_name(i) not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            runner.deactivate()
            self._runner = None
            raise InputError(f"{self.path} has inputs {list(inputs)} and outputs {outputs}; "
                             "expected one image input, one logits output")
        self._input, self._output = next(iter(inputs)), outputs[0]
        meta = inputs[self._input]
        self._input_dtype = _NUMPY_DTYPES.get(getattr(meta.dtype, "name", str(meta.dtype)).lower(), np.float32)
        self._shape = tuple(int(d) for d in engine.get_tensor_shape(self._input))
        self._opt_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(self._input, 0)[1])
        self._events = self._cuda_events()

    def _cuda_events(self):
        import torch

        if not torch.cuda.is_available():
            return None
        stream = torch.cuda.ExternalStream(self._runner.stream.ptr)
        return stream, torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def deactivate_impl(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
        self._runner = self._events = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        from polygraphy.exception import PolygraphyException

        feed = x.astype(self._input_dtype, copy=False)
        try:
            if self._events is None:
                out = self._runner.infer({self._input: feed})[self._output]
                self._last_time = self._runner.last_inference_time()
                # Polygraphy returns views of buffers it reuses on the next inference: copy.
                return np.array(out, dtype=np.float32, copy=True)
            import torch

            stream, start, end = self._events
            with torch.cuda.stream(stream):
                device_feed = torch.from_numpy(feed).to("cuda", non_blocking=True)
                start.record(stream)
                out = self._runner.infer({self._input: device_feed}, copy_outputs_to_host=False)[self._output]
                end.record(stream)
            stream.synchronize()
            self._last_time = start.elapsed_time(end) / 1000.0
            return out.float().cpu().numpy()
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

    def describe(self) -> dict:
        return {"engine": self.engine, "name": self.name,
                "timing": "cuda-events" if self._events is not None else "host (polygraphy)"}
