"""The one Runner interface every backend implements (Polygraphy's runner shape).

A runner is activated once (load the model, build a session), asked to `infer` many times and
deactivated. The lifecycle and the bookkeeping (timing of the last inference, input metadata,
the error for misuse) live here; backends override the `*_impl` methods only, so eval and bench
never branch on the backend.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import InputError, RepDeployError


@dataclass(frozen=True)
class InputMetadata:
    """Name, shape and dtype of a model input; dynamic dimensions are None."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    nominal_size: int | None = None  # the size to feed when height and width are dynamic

    @property
    def image_size(self) -> int | None:
        """Spatial size of an NCHW image input: the fixed one, else the nominal one (None if unknown)."""
        if len(self.shape) == 4 and self.shape[2] is not None and self.shape[2] == self.shape[3]:
            return self.shape[2]
        if len(self.shape) == 4 and self.shape[2] is None and self.shape[3] is None:
            return self.nominal_size
        return None

    @property
    def channels(self) -> int | None:
        return self.shape[1] if len(self.shape) == 4 else None

    def to_dict(self) -> dict:
        return asdict(self)


_clock = time.perf_counter

Feed = np.ndarray | Mapping[str, np.ndarray]


class Runner:
    """Base class: context-managed activate/deactivate, infer(feed) -> logits as numpy.

    >>> with open_runner("model.onnx", engine="ort") as runner:    # doctest: +SKIP
    ...     logits = runner.infer(images)                           # (N, classes) float32
    ...     runner.last_inference_time()                            # seconds
    """

    #: short backend name used in reports ("torch", "ort", "trt")
    engine = "base"

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False
        self._last_time: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if self.is_active:
            raise RepDeployError(f"runner {self.name} is already active; deactivate it before activating again")
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------
    def infer(self, feed: Feed) -> np.ndarray:
        """Run one batch. `feed` is an NCHW float32 array or {input name: array}."""
        if not self.is_active:
            raise RepDeployError(f"runner {self.name} is not active; use it in a `with` block or call activate()")
        x = self._as_array(feed)
        # Backends that time on the device (TensorRT, CUDA events) set _last_time themselves.
        if self.times_itself:
            return self.infer_impl(x)
        start = _clock()
        out = self.infer_impl(x)
        self._last_time = _clock() - start
        return out

    def last_inference_time(self) -> float | None:
        """Seconds taken by the most recent `infer` (None before the first)."""
        return self._last_time

    def get_input_metadata(self) -> InputMetadata:
        if not self.is_active:
            raise RepDeployError(f"runner {self.name} is not active; activate it before asking for its inputs")
        return self.get_input_metadata_impl()

    def _as_array(self, feed: Feed) -> np.ndarray:
        # Fast path first: the benchmark loop feeds the same ready array thousands of times, and
        # every check here is harness overhead on a sub-millisecond inference.
        if type(feed) is np.ndarray and feed.dtype == np.float32 and feed.ndim == 4 and feed.flags.c_contiguous:
            return feed
        if isinstance(feed, Mapping):
            if len(feed) != 1:
                raise InputError(f"{self.name}: expected one input, got {sorted(feed)}; models here take one image batch")
            feed = next(iter(feed.values()))
        if hasattr(feed, "numpy") and not isinstance(feed, np.ndarray):  # a torch tensor
            feed = feed.detach().cpu().numpy()
        x = np.ascontiguousarray(feed, dtype=np.float32)
        if x.ndim != 4:
            raise InputError(f"{self.name}: expected an NCHW batch, got shape {x.shape}; add a batch dimension")
        return x

    # -- for subclasses --------------------------------------------------------------------
    times_itself = False

    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        pass

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_input_metadata_impl(self) -> InputMetadata:
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings that matter for a benchmark (threads, compile, precision...)."""
        return {"engine": self.engine, "name": self.name}
