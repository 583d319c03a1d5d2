"""Option checks shared by every command, run before any work starts.

One bad value must never hang the tool, exhaust memory or silently switch a gate off: NaN and
Inf are refused everywhere, counts have ranges, and thread and class counts have caps.
"""

from __future__ import annotations

import math
import os

from .errors import InputError

#: Threads per process beyond this only add scheduling overhead and memory (ORT allocates per thread).
THREADS_PER_CPU = 4
#: More classes than any real classifier head; a label above it is a damaged file, not a dataset.
MAX_CLASSES = 100_000
#: Largest input resolution accepted (4x ImageNet training size); 20000 px would ask for 38 GB.
MAX_INPUT_SIZE = 2048
#: Seconds: a benchmark phase longer than a day is a typo.
MAX_SECONDS = 86_400.0


def max_threads() -> int:
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def number(option: str, value: float | None, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, allow_none: bool = True) -> float | None:
    """A finite float within [low, high] (or (low, high] with `low_open`), or InputError naming the option."""
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{option} is required")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} {value!r}: give a number") from None
    if not math.isfinite(v):
        raise InputError(f"{option} {value}: give a finite number (NaN and Inf are not values)")
    if low is not None and (v <= low if low_open else v < low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise InputError(f"{option} {value}: must be {bound}")
    if high is not None and v > high:
        raise InputError(f"{option} {value}: must be <= {high:g}")
    return v


def integer(option: str, value: int | None, *, low: int | None = None, high: int | None = None,
            allow_none: bool = True, why: str = "") -> int | None:
    """An int within [low, high], or InputError naming the option and the range."""
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{option} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(f"{option} {value!r}: give a whole number")
    if low is not None and value < low:
        raise InputError(f"{option} {value}: must be >= {low}{why}")
    if high is not None and value > high:
        raise InputError(f"{option} {value}: must be <= {high}{why}")
    return value


def threads(option: str, value: int | None) -> int | None:
    """None (the runtime's choice) or 1..4 x the CPU count."""
    cap = max_threads()
    return integer(option, value, low=1, high=cap, why=f" ({THREADS_PER_CPU} x the {os.cpu_count() or 1} CPUs here)")


def seed(option: str, value: int) -> int:
    # numpy's Generator takes 0..2**32-1 seeds for the derived per-epoch orders; torch takes 64 bit.
    return integer(option, value, low=0, high=2**32 - 1, allow_none=False)  # type: ignore[return-value]


def input_size(option: str, value: int | None) -> int | None:
    """None (the model's own size) or 1..MAX_INPUT_SIZE; 0 is an error, not "the default"."""
    return integer(option, value, low=1, high=MAX_INPUT_SIZE)


def max_drop(option: str, value: float | None) -> float | None:
    return number(option, value, low=0.0, high=100.0)


def bench_options(*, batch: int, warmup: float, duration: float, iterations: int,
                  threads_: int | None = None) -> None:
    """The latency harness's knobs: a NaN duration would loop forever, a huge thread count OOMs."""
    integer("--batch", batch, low=1, high=4096, allow_none=False)
    number("--warmup", warmup, low=0.0, high=MAX_SECONDS, allow_none=False)
    number("--duration", duration, low=0.0, high=MAX_SECONDS, allow_none=False)
    integer("--iterations", iterations, low=1, high=10_000_000, allow_none=False)
    threads("--threads", threads_)
