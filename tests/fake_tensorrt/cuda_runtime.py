"""A test double of the CUDA runtime as Polygraphy's `polygraphy.cuda.Cuda` wrapper exposes it.

Polygraphy reaches cudart through one object, `polygraphy.cuda.cuda.wrapper()` (create_stream,
stream_synchronize, destroy_stream, malloc, free, memcpy). Installing this object there (the
G_CUDA seam) lets Polygraphy's TrtRunner run against the TensorRT double on a machine without
a GPU: "device" memory is host memory, so the double's execution context can read and write
it through plain addresses. It keeps the rules that catch real bugs: a free of an unknown or
already freed pointer, a copy touching memory that was never allocated, an unknown stream.

`handle` plays the loaded libcudart itself (Polygraphy's wrapper keeps it as `Cuda.handle`), for
the calls Polygraphy does not wrap: device count and compute capability, and CUDA events. It
checks arguments as C would see them through ctypes: out-parameters must be `ctypes.byref` of
the right C type, handles `c_void_p` (a bare Python int is passed as a C int and truncated).
Events keep CUDA's rules: elapsed time needs both events recorded on a live stream and complete
(the stream or the event synchronized), else cudaErrorNotReady (600). The GPU is "visible" when
`device_count` > 0; `compute_capability` is the device's (major, minor). The TensorRT double
stamps engines with it and refuses plans built for another one, as TensorRT does.
"""

from __future__ import annotations

import ctypes
import itertools
import time

CUDA_SUCCESS, CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NO_DEVICE, CUDA_ERROR_NOT_READY = 0, 1, 100, 600
ATTR_COMPUTE_CAPABILITY_MAJOR, ATTR_COMPUTE_CAPABILITY_MINOR = 75, 76
_ACTIVE: list["FakeCudaRuntime"] = []


def active() -> "FakeCudaRuntime | None":
    """The runtime the process runs on now (the last one made), for the TensorRT double."""
    return _ACTIVE[-1] if _ACTIVE else None


class FakeCudaRuntime:
    def __init__(self) -> None:
        self._buffers: dict[int, ctypes.Array] = {}
        self._streams: set[int] = set()
        self._next_stream = itertools.count(0x5000)
        self.calls: list[str] = []
        self.device_count = 1
        self.compute_capability = (8, 6)
        self.handle = _FakeLibcudart(self)
        _ACTIVE[:] = [self]

    def _owned(self, ptr: int, nbytes: int) -> bool:
        for base, buf in self._buffers.items():
            if base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buf):
                return True
        return False

    def create_stream(self) -> int:
        ptr = next(self._next_stream)
        self._streams.add(ptr)
        self.calls.append("create_stream")
        return ptr

    def stream_synchronize(self, ptr: int) -> None:
        if ptr not in self._streams:
            raise RuntimeError(f"CUDA Error: 400 (invalid resource handle: stream {ptr:#x})")
        self.calls.append("stream_synchronize")
        self.handle._complete(ptr)

    def destroy_stream(self, ptr: int) -> None:
        if ptr not in self._streams:
            raise RuntimeError(f"CUDA Error: 400 (invalid resource handle: stream {ptr:#x})")
        self._streams.discard(ptr)

    def malloc(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(1, int(nbytes)))
        ptr = ctypes.addressof(buf)
        self._buffers[ptr] = buf
        self.calls.append("malloc")
        return ptr

    def free(self, ptr: int) -> None:
        if ptr == 0:
            return  # cudaFree(nullptr) is a documented no-op
        if ptr not in self._buffers:
            raise RuntimeError(f"CUDA Error: 1 (invalid argument: free of {ptr:#x}, not allocated or freed twice)")
        del self._buffers[ptr]

    def memcpy(self, dst: int, src: int, nbytes: int, kind, stream_ptr=None) -> None:
        if stream_ptr is not None and stream_ptr not in self._streams:
            raise RuntimeError(f"CUDA Error: 400 (invalid resource handle: stream {stream_ptr:#x})")
        nbytes = int(nbytes)
        # host<->device: one side must be "device" memory we allocated
        if not (self._owned(dst, nbytes) or self._owned(src, nbytes)):
            raise RuntimeError("CUDA Error: 1 (invalid argument: memcpy touches no allocated device memory)")
        ctypes.memmove(dst, src, nbytes)
        self.calls.append("memcpy")

    @property
    def live_allocations(self) -> int:
        return len(self._buffers)


def _out(arg, ctype, where: str):
    """The C object behind a `ctypes.byref(...)` out-parameter, checked for its C type."""
    obj = getattr(arg, "_obj", None)
    if type(arg).__name__ != "CArgObject" or not isinstance(obj, ctype):
        raise TypeError(f"{where}: out-parameter must be ctypes.byref({ctype.__name__}()), got {arg!r}")
    return obj


def _handle(arg, where: str) -> int:
    if not isinstance(arg, ctypes.c_void_p):
        raise TypeError(f"{where}: handles go through ctypes as c_void_p; got {type(arg).__name__} "
                        "(a Python int is passed as a 32-bit C int)")
    return arg.value or 0


class _FakeLibcudart:
    """The cudart entry points repdeploy calls directly, with C's calling conventions."""

    def __init__(self, runtime: FakeCudaRuntime) -> None:
        self._runtime = runtime
        self._events: dict[int, dict] = {}
        self._next_event = itertools.count(0x9000)
        self._device = 0

    def cudaGetDeviceCount(self, count) -> int:  # noqa: N802  (C names)
        _out(count, ctypes.c_int, "cudaGetDeviceCount").value = self._runtime.device_count
        return CUDA_SUCCESS if self._runtime.device_count else CUDA_ERROR_NO_DEVICE

    def cudaGetDevice(self, device) -> int:  # noqa: N802
        if not self._runtime.device_count:
            return CUDA_ERROR_NO_DEVICE
        _out(device, ctypes.c_int, "cudaGetDevice").value = self._device
        return CUDA_SUCCESS

    def cudaDeviceGetAttribute(self, value, attr, device) -> int:  # noqa: N802
        out = _out(value, ctypes.c_int, "cudaDeviceGetAttribute")
        if not isinstance(attr, int) or not isinstance(device, int):
            raise TypeError("cudaDeviceGetAttribute: attr and device are C ints")
        if not 0 <= device < self._runtime.device_count:
            return CUDA_ERROR_INVALID_VALUE
        if attr == ATTR_COMPUTE_CAPABILITY_MAJOR:
            out.value = self._runtime.compute_capability[0]
        elif attr == ATTR_COMPUTE_CAPABILITY_MINOR:
            out.value = self._runtime.compute_capability[1]
        else:
            return CUDA_ERROR_INVALID_VALUE
        return CUDA_SUCCESS

    def cudaEventCreate(self, event) -> int:  # noqa: N802
        out = _out(event, ctypes.c_void_p, "cudaEventCreate")
        out.value = next(self._next_event)
        self._events[out.value] = {"time": None, "stream": None, "complete": False}
        return CUDA_SUCCESS

    def _event(self, event, where: str) -> dict:
        ptr = _handle(event, where)
        if ptr not in self._events:
            raise RuntimeError(f"{where}: CUDA Error: 400 (invalid resource handle: event {ptr:#x})")
        return self._events[ptr]

    def cudaEventRecord(self, event, stream) -> int:  # noqa: N802
        ev = self._event(event, "cudaEventRecord")
        stream_ptr = _handle(stream, "cudaEventRecord")
        if stream_ptr not in self._runtime._streams:
            return 400
        # The double runs work synchronously at enqueue time, so "when the stream reaches the
        # event" is now.
        ev.update(time=time.perf_counter(), stream=stream_ptr, complete=False)
        self._runtime.calls.append("event_record")
        return CUDA_SUCCESS

    def _complete(self, stream_ptr: int) -> None:
        for ev in self._events.values():
            if ev["stream"] == stream_ptr:
                ev["complete"] = True

    def cudaEventSynchronize(self, event) -> int:  # noqa: N802
        ev = self._event(event, "cudaEventSynchronize")
        if ev["time"] is not None:
            ev["complete"] = True
        return CUDA_SUCCESS

    def cudaEventElapsedTime(self, ms, start, end) -> int:  # noqa: N802
        out = _out(ms, ctypes.c_float, "cudaEventElapsedTime")
        a, b = self._event(start, "cudaEventElapsedTime"), self._event(end, "cudaEventElapsedTime")
        if a["time"] is None or b["time"] is None:
            return CUDA_ERROR_INVALID_VALUE  # cudaErrorInvalidResourceHandle in CUDA: never recorded
        if not (a["complete"] and b["complete"]):
            return CUDA_ERROR_NOT_READY
        out.value = (b["time"] - a["time"]) * 1e3
        return CUDA_SUCCESS

    def cudaEventDestroy(self, event) -> int:  # noqa: N802
        self._events.pop(_handle(event, "cudaEventDestroy"), None)
        return CUDA_SUCCESS

    @property
    def live_events(self) -> int:
        return len(self._events)
