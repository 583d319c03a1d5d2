"""Option checks shared by every command, run before any work starts.

One bad value must never hang the tool, exhaust memory or silently switch a gate off: NaN and
Inf are refused everywhere, counts have ranges, and thread and class counts have caps.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import fields, replace
from typing import Any, Mapping, TypeVar

from .errors import InputError

#: Threads per process beyond this only add scheduling overhead and memory (ORT allocates per thread).
THREADS_PER_CPU = 4
#: More classes than any real classifier head; a label above it is a damaged file, not a dataset.
MAX_CLASSES = 100_000
#: Largest input resolution accepted (4x ImageNet training size); 20000 px would ask for 38 GB.
MAX_INPUT_SIZE = 2048
#: Shorter side before the centre crop: 4 x the largest input size (a 1e6 resize asks for 48 TB).
MAX_RESIZE = 4 * MAX_INPUT_SIZE
#: Bound on a preprocessing mean, std or pixel value range (16-bit images reach 65535).
MAX_PIXEL_VALUE = 1e6
#: Seconds: a benchmark phase longer than a day is a typo.
MAX_SECONDS = 86_400.0
#: Latency runs: this many timed iterations give every percentile we report; more only takes hours.
MAX_ITERATIONS = 100_000
#: Inputs `compare` feeds both models: every one is held with both outputs (agreement over 100k
#: inputs is already exact to 0.001 %).
MAX_COMPARE_SAMPLES = 100_000
#: Share of the machine's memory one buffer may take (the rest is the model, the runtime, the OS).
MEMORY_SHARE = 0.25


def max_threads() -> int:
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def number(option: str, value: float | None, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, allow_none: bool = True) -> float | None:
    """A finite float within [low, high] (or (low, high] with `low_open`), or InputError naming the option."""
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{option} is required")
    # A string or a bool is not a number, even when float() would take it: the API gets the
    # same answer as the command line instead of a TypeError from deep inside.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{option} {value!r}: give a number, not {type(value).__name__}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(f"{option} {value!r}: give a whole number")
    value = int(value)
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


def resize(option: str, value: int | None) -> int | None:
    """None (the record's) or 1..MAX_RESIZE pixels for the shorter side before the centre crop."""
    return integer(option, value, low=1, high=MAX_RESIZE)


def per_channel(option: str, values, *, positive: bool = False) -> tuple[float, ...] | None:
    """--mean/--std values: finite, bounded, and (std) positive."""
    if values is None:
        return None
    out = tuple(number(option, v, low=-MAX_PIXEL_VALUE, high=MAX_PIXEL_VALUE, allow_none=False) for v in values)
    if positive and any(v <= 0 for v in out):
        raise InputError(f"{option} {','.join(f'{v:g}' for v in out)}: every value must be > 0 (it divides)")
    return out  # type: ignore[return-value]


def max_drop(option: str, value: float | None) -> float | None:
    return number(option, value, low=0.0, high=100.0)


def bench_options(*, batch: int, warmup: float, duration: float, iterations: int,
                  threads_: int | None = None) -> None:
    """The latency harness's knobs: a NaN duration would loop forever, a huge thread count OOMs."""
    integer("--batch", batch, low=1, high=4096, allow_none=False)
    number("--warmup", warmup, low=0.0, high=MAX_SECONDS, allow_none=False)
    number("--duration", duration, low=0.0, high=MAX_SECONDS, allow_none=False)
    integer("--iterations", iterations, low=1, high=MAX_ITERATIONS, allow_none=False)
    threads("--threads", threads_)


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), else the physical memory; 8 GiB if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def fits_in_memory(option: str, nbytes: float, what: str) -> None:
    """Refuse, up front, a size or count whose buffer would take more than MEMORY_SHARE of the memory."""
    budget = MEMORY_SHARE * available_memory()
    if not math.isfinite(nbytes) or nbytes > budget:
        raise InputError(f"{option}: {what} would need {nbytes / 2**30:,.1f} GiB, more than {MEMORY_SHARE:.0%} of "
                         f"the {available_memory() / 2**30:,.1f} GiB available here; give a smaller value")


#: Activation tensors a training step keeps per block for the backward pass (three conv+BN
#: branches, their sum and the ReLU, with slack for the gradients): a deliberate over-estimate.
TENSORS_PER_TRAINING_BLOCK = 8


def training_batch(option: str, *, batch: int, size: int, channels: int, widths, depths) -> None:
    """Refuse a training input size and batch whose activations cannot fit (2048 px asks for 1.9 TB).

    Stage 0 works at size/2, stage i at size/2^(i+1); each block keeps about
    TENSORS_PER_TRAINING_BLOCK float32 maps of its width.
    """
    blocks = [(widths[0], 1, size / 2)] + [(w, d, size / 2 ** (i + 2)) for i, (w, d) in enumerate(zip(widths[1:], depths))]
    per_image = channels * size * size + sum(w * d * side * side for w, d, side in blocks) * TENSORS_PER_TRAINING_BLOCK
    fits_in_memory(option, 4.0 * batch * per_image, f"training at {size} px with batch {batch}")


S = TypeVar("S")


def with_options(cls: type[S], settings: S | None, options: Mapping[str, Any], command: str) -> S:
    """`settings` (default: `cls()`) with the keyword shortcuts `options` applied over it: every
    command with many options takes one frozen record, its fields also accepted as keywords."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:  # the TypeError a misspelt keyword argument gives
        raise TypeError(f"{command}() got unexpected keyword argument(s): {', '.join(unknown)}")
    if settings is not None and not isinstance(settings, cls):
        raise TypeError(f"{command}() settings must be a {cls.__name__}, not {type(settings).__name__}")
    # Built afresh when no record is given, so fields derived from others (PipelineSettings.target)
    # derive from the shortcuts.
    return cls(**options) if settings is None else replace(settings, **options)
