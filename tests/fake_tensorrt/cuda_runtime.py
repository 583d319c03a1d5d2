"""A test double of the CUDA runtime as Polygraphy's `polygraphy.cuda.Cuda` wrapper exposes it.

Polygraphy reaches cudart through one object, `polygraphy.cuda.cuda.wrapper()` (create_stream,
stream_synchronize, destroy_stream, malloc, free, memcpy). Installing this object there (the
G_CUDA seam) lets Polygraphy's TrtRunner run against the TensorRT double on a machine without
a GPU: "device" memory is host memory, so the double's execution context can read and write
it through plain addresses. It keeps the rules that catch real bugs: a free of an unknown or
already freed pointer, a copy touching memory that was never allocated, an unknown stream.
"""

from __future__ import annotations

import ctypes
import itertools


class FakeCudaRuntime:
    def __init__(self) -> None:
        self._buffers: dict[int, ctypes.Array] = {}
        self._streams: set[int] = set()
        self._next_stream = itertools.count(0x5000)
        self.calls: list[str] = []

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
