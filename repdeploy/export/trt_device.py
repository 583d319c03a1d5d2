"""The CUDA device TensorRT runs on, asked through Polygraphy's CUDA wrapper, and GPU timers.

TensorRT and Polygraphy need no torch, and the documented install has the CPU build of torch, so
torch's CUDA build cannot say whether TensorRT can run. Polygraphy already loads the CUDA runtime
(libcudart: from a CUDA toolkit or the `nvidia-cuda-runtime` wheel TensorRT's wheels bring) for its
streams and copies; `polygraphy.cuda.wrapper().handle` is that library, and the few calls
Polygraphy does not wrap go through it with ctypes:

- `cudaGetDeviceCount`, `cudaGetDevice`, `cudaDeviceGetAttribute` (compute capability: attributes
  75 and 76): whether a GPU is visible, and which kind. A TensorRT plan runs only on the compute
  capability and the exact TensorRT version it was built with, so the engine cache is keyed and
  stamped with both (export/tensorrt.py).
- CUDA events (`cudaEventCreate` / `Record` / `Synchronize` / `ElapsedTime` / `Destroy`): the GPU
  time between two points of a stream, as trtexec measures its "GPU Compute Time".

Handles cross ctypes as `c_void_p`: without declared argument types, a bare Python int is passed
as a 32-bit C int and a 64-bit pointer is cut.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import BackendMissingError, RepDeployError

INSTALL_HINT = "pip install 'repdeploy[trt]' and run on a machine with an NVIDIA GPU"
_COMPUTE_CAPABILITY_MAJOR, _COMPUTE_CAPABILITY_MINOR = 75, 76  # cudaDeviceAttr
_NO_DEVICE = {35: "cudaErrorInsufficientDriver: no NVIDIA driver, or one older than the CUDA runtime",
              100: "cudaErrorNoDevice: the driver sees no GPU"}


@contextlib.contextmanager
def polygraphy_logging(verbose: bool = False):
    """Polygraphy's log on stderr (it prints to stdout, which carries our --json), errors only
    unless `verbose`."""
    with contextlib.redirect_stdout(sys.stderr):
        from polygraphy.logger import G_LOGGER

        with G_LOGGER.verbosity(G_LOGGER.VERBOSE if verbose else G_LOGGER.ERROR):
            yield


def cuda_library() -> Any:
    """libcudart as Polygraphy loaded it, or BackendMissingError (exit 4) saying why not."""
    try:
        with polygraphy_logging():
            from polygraphy.cuda import wrapper

            return wrapper().handle
    except Exception as exc:  # OSError (no libcudart), PolygraphyException
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BackendMissingError(f"TensorRT needs the CUDA runtime, which did not load ({reason}): "
                                  f"{INSTALL_HINT}") from exc


@dataclass(frozen=True)
class CudaDevice:
    """The GPU the process runs on."""

    index: int
    compute_capability: str  # "8.6"


def cuda_device() -> CudaDevice:
    """The current CUDA device, or BackendMissingError when none is visible.

    >>> cuda_device().compute_capability    # doctest: +SKIP
    '9.0'
    """
    lib = cuda_library()
    count = ctypes.c_int(0)
    status = lib.cudaGetDeviceCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        why = _NO_DEVICE.get(status, f"cudaGetDeviceCount error {status}, {count.value} devices")
        raise BackendMissingError(f"TensorRT needs an NVIDIA GPU and no CUDA device is visible ({why}): {INSTALL_HINT}")
    index, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    _check(lib.cudaGetDevice(ctypes.byref(index)), "cudaGetDevice")
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(major), _COMPUTE_CAPABILITY_MAJOR, index.value),
           "cudaDeviceGetAttribute")
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), _COMPUTE_CAPABILITY_MINOR, index.value),
           "cudaDeviceGetAttribute")
    return CudaDevice(index.value, f"{major.value}.{minor.value}")


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RepDeployError(f"CUDA call {call} failed with error {status}")


class GpuTimer:
    """Two CUDA events recorded on a stream around some work; `elapsed_s` is the GPU time between
    them (the work's execution on the device, not the host's wait for it)."""

    def __init__(self) -> None:
        self._lib = cuda_library()
        self._start, self._end = ctypes.c_void_p(), ctypes.c_void_p()
        _check(self._lib.cudaEventCreate(ctypes.byref(self._start)), "cudaEventCreate")
        _check(self._lib.cudaEventCreate(ctypes.byref(self._end)), "cudaEventCreate")
        self._recorded = False

    def start(self, stream: int) -> None:
        _check(self._lib.cudaEventRecord(self._start, ctypes.c_void_p(stream)), "cudaEventRecord")
        self._recorded = False

    def stop(self, stream: int) -> None:
        _check(self._lib.cudaEventRecord(self._end, ctypes.c_void_p(stream)), "cudaEventRecord")
        self._recorded = True

    def elapsed_s(self) -> float | None:
        """Seconds between the last start and stop (waits for the stop event); None if not run."""
        if not self._recorded:
            return None
        _check(self._lib.cudaEventSynchronize(self._end), "cudaEventSynchronize")
        ms = ctypes.c_float(0.0)
        _check(self._lib.cudaEventElapsedTime(ctypes.byref(ms), self._start, self._end), "cudaEventElapsedTime")
        return ms.value / 1e3

    def close(self) -> None:
        for event in (self._start, self._end):
            if event.value:
                self._lib.cudaEventDestroy(event)
                event.value = None
