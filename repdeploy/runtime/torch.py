"""Torch eager runner (optionally through torch.compile), for fused or train-form modules, on
the CPU or a CUDA device."""

from __future__ import annotations

import numpy as np

from .. import defaults
from .base import InputMetadata, Runner


class TorchRunner(Runner):
    """Run an nn.Module in eval mode under `torch.inference_mode`, on `device`.

    `threads` sets torch's intra-op pool for the runner's lifetime (restored on deactivate);
    `compile=True` wraps the module with `torch.compile` (compiled lazily on the first batch).
    On CUDA the timed inference includes the host-to-device copy of the batch and the copy of
    the logits back (the result has to reach the host to be used), synchronised by that copy.
    torch's defaults apply on CUDA, including TF32 for cuDNN convolutions (about 1e-3 relative),
    which is why parity checks against FP32 ONNX want --atol/--rtol around 1e-3 there.
    """

    engine = "torch"

    def __init__(self, module, *, name: str | None = None, input_size: int | None = None,
                 in_channels: int | None = None, threads: int | None = None, compile: bool = False,
                 device: str | None = defaults.DEVICE) -> None:
        super().__init__(name or type(module).__name__)
        self.module = module
        spec = getattr(module, "spec", None)
        self.input_size = input_size or getattr(spec, "input_size", None)
        self.in_channels = in_channels or getattr(spec, "in_channels", 3)
        self.threads = threads
        self.compile = compile
        self.device_spec = device
        self.device = None
        self._saved_threads: int | None = None
        self._home = None
        self._fn = None

    def activate_impl(self) -> None:
        import torch

        from ..devices import resolve_device

        from ..devices import module_device

        self.device = resolve_device(self.device_spec)
        self._home = module_device(self.module)  # given back where it came from on deactivate
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self.module.eval().to(self.device)
        self._fn = torch.compile(self.module) if self.compile else self.module

    def deactivate_impl(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        self._fn = None
        if self._home is not None:
            self.module.to(self._home)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._fn(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def get_input_metadata_impl(self) -> InputMetadata:
        s = self.input_size
        return InputMetadata("input", (None, self.in_channels, s, s))

    def describe(self) -> dict:
        import torch

        from ..devices import describe_device

        return {"engine": self.engine, "name": self.name, "compile": self.compile,
                "threads": self.threads or torch.get_num_threads(),
                **(describe_device(self.device) if self.device is not None else {})}
