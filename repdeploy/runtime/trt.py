"""TensorRT runner: a serialized engine on disk, I/O through torch CUDA tensors, CUDA-event timing.

Written against TensorRT's documented 10.x/11.x Python API (named I/O tensors,
`set_input_shape` / `set_tensor_address` / `execute_async_v3`). TensorRT and torch's CUDA side
are touched only on activation, so importing this module is free where they are absent.

UNVERIFIED HERE: no NVIDIA GPU on the development machine; the tests that run it skip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError, RepDeployError
from ..export.tensorrt import import_tensorrt
from .base import InputMetadata, Runner


class TrtRunner(Runner):
    """Run a TensorRT engine file. `last_inference_time` is GPU time between two CUDA events
    around `execute_async_v3` (host<->device copies excluded, as trtexec's GPU compute time)."""

    engine = "trt"
    times_itself = True

    def __init__(self, engine_path: str | Path, *, name: str | None = None) -> None:
        self.path = Path(engine_path)
        super().__init__(name or self.path.name)
        self._engine = self._context = self._stream = None
        self._input = self._output = ""

    def activate_impl(self) -> None:
        trt = import_tensorrt()
        import torch

        if not self.path.is_file():
            raise InputError(f"engine {self.path} does not exist; build one with `repdeploy export --format trt`")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise InputError(f"{self.path} is not an engine for this TensorRT version and GPU; rebuild it here")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{self.path} has inputs {inputs} and outputs {outputs}; expected one image input, one logits output")
        self._input, self._output = inputs[0], outputs[0]
        self._stream = torch.cuda.Stream()
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def deactivate_impl(self) -> None:
        self._context = self._engine = self._runtime = self._stream = None

    def _torch_dtype(self, name: str):
        import torch

        trt = self._trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32}
        bf16 = getattr(trt, "bfloat16", None)
        if bf16 is not None:
            table[bf16] = torch.bfloat16
        return table[self._engine.get_tensor_dtype(name)]

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        ctx = self._context
        with torch.cuda.stream(self._stream):
            inp = torch.from_numpy(x).to("cuda", non_blocking=True).to(self._torch_dtype(self._input)).contiguous()
            if not ctx.set_input_shape(self._input, tuple(inp.shape)):
                raise InputError(f"{self.path}: batch shape {tuple(inp.shape)} is outside the engine's profile; rebuild with a larger max batch")
            out = torch.empty(tuple(ctx.get_tensor_shape(self._output)), dtype=self._torch_dtype(self._output), device="cuda")
            ctx.set_tensor_address(self._input, inp.data_ptr())
            ctx.set_tensor_address(self._output, out.data_ptr())
            self._start.record(self._stream)
            ok = ctx.execute_async_v3(self._stream.cuda_stream)
            self._end.record(self._stream)
        self._stream.synchronize()
        if not ok:
            raise RepDeployError(f"TensorRT execution of {self.path} failed; run with a verbose logger for the reason")
        self._last_time = self._start.elapsed_time(self._end) / 1000.0
        return out.float().cpu().numpy()

    def get_input_metadata_impl(self) -> InputMetadata:
        shape = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(self._input))
        return InputMetadata(self._input, shape, str(self._torch_dtype(self._input)).replace("torch.", ""))

    def describe(self) -> dict:
        return {"engine": self.engine, "name": self.name, "timing": "cuda-events"}
