"""Stage messages through `logging`, progress bars on a terminal only.

Library code never prints: stage lines go to the `repdeploy` logger at INFO, and Python's
logging shows nothing of them until someone installs a handler. The command line installs one
on stderr (repdeploy/cli/common.py), so --json stdout stays machine-readable and `--quiet`
leaves errors only. Progress bars appear only under the CLI, on a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

LOGGER_NAME = "repdeploy"
#: Warnings about results that may be wrong (e.g. an image encoding guessed): --quiet keeps them.
#: Each record is named WARNING itself (`warn`): registering a level name is process-wide.
DATA_WARNING = logging.WARNING + 5
log = logging.getLogger(LOGGER_NAME)

_quiet = False
_bars = False  # set by the CLI: a library caller's terminal gets no bars it did not ask for


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) stage messages and bars: --quiet, and the non-zero ranks of DDP."""
    global _quiet
    _quiet = quiet
    log.setLevel(DATA_WARNING if quiet else logging.NOTSET)


def enable_bars() -> None:
    """Called by the CLI: progress bars may be drawn (on a terminal, unless quiet)."""
    global _bars
    _bars = True


def disable_bars() -> None:
    global _bars
    _bars = False


def interactive() -> bool:
    return _bars and not _quiet and sys.stderr.isatty()


@dataclass(frozen=True)
class Event:
    """One sign of life a terminal gets: a stage line (`done` None) or a bar's step."""

    time: float  # time.perf_counter()
    description: str
    done: int | None = None
    total: int | None = None


_watchers: list[list[Event]] = []


@contextlib.contextmanager
def watch() -> Iterator[list[Event]]:
    """Record every stage line and bar step while inside, terminal or not: how tests and
    benchmarks/diagnostics_cost.py check that no long step runs without progress (issue 22:
    nothing runs longer than 5 s without a progress line)."""
    events: list[Event] = []
    _watchers.append(events)
    try:
        yield events
    finally:
        _watchers.remove(events)


def _emit(description: str, done: int | None = None, total: int | None = None) -> None:
    if _watchers:
        event = Event(time.perf_counter(), description, done, total)
        for events in _watchers:
            events.append(event)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a terminal under the CLI, plainly otherwise. A step
    is done when the loop asks for the next item."""
    _emit(description, 0, total)
    if not interactive():
        for done, item in enumerate(items, 1):
            yield item
            _emit(description, done, total)
        return
    with _bar() as bar:
        task = bar.add_task(description, total=total)
        for done, item in enumerate(items, 1):
            yield item
            bar.advance(task)
            _emit(description, done, total)


@contextlib.contextmanager
def steps(description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A bar advanced by hand (one call per step), for work driven from hooks rather than a loop:
    `with steps("verify", n) as advance: ...`. Plain (no bar) off a terminal."""
    done = [0]
    _emit(description, 0, total)

    def advanced(tick: Callable[[], None]) -> Callable[[], None]:
        def advance() -> None:
            tick()
            done[0] += 1
            _emit(description, done[0], total)
        return advance

    if not interactive():
        yield advanced(lambda: None)
        return
    with _bar() as bar:
        task = bar.add_task(description, total=total)
        yield advanced(lambda: bar.advance(task))


@contextlib.contextmanager
def module_steps(modules: list, description: str, batches: int | None) -> Iterator[None]:
    """A bar that advances as each of `modules` (torch modules) finishes a batch: one forward of
    a big model at 224 px runs for seconds, each of its layers for a fraction of one."""
    with steps(description, batches * len(modules) if batches else None) as advance:
        handles = [m.register_forward_hook(lambda *_: advance()) for m in modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def waiting(description: str, every_s: float = 1.0, *, announce: bool = False) -> Iterator[None]:
    """A line whose elapsed time ticks while one long call runs that reports no steps of its own
    (torch.onnx.export of a big model took 2-11 s): on a terminal an open-ended bar, and a
    heartbeat every `every_s` for `watch`. Inside another bar it adds none (one live display).
    `announce`: also log `description` as the stage's progress line (`status`)."""
    import threading

    if announce:
        status(description)
    else:
        _emit(description)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            _emit(description)

    # Only a watcher reads the heartbeat (a terminal's bar ticks by itself): no thread otherwise.
    beating = threading.Thread(target=beat, daemon=True, name="repdeploy-progress") if _watchers else None
    if beating is not None:
        beating.start()
    try:
        if not interactive() or _live:
            yield
        else:
            with _bar() as bar:
                bar.add_task(description, total=None)
                yield
    finally:
        stop.set()
        if beating is not None:
            beating.join()


_live: list[object] = []  # the bars drawn now: rich allows one live display at a time


@contextlib.contextmanager
def _bar():
    # The elapsed time ticks every second even while one step is long, so a terminal always shows
    # the work is alive.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_stderr_console(), transient=True) as bar:
        _live.append(bar)
        try:
            yield bar
        finally:
            _live.remove(bar)


def status(message: str) -> None:
    """One progress line for a stage, logged at INFO on the `repdeploy` logger."""
    _emit(message)
    log.info(message)


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str, message: str | None = None) -> Iterator[None]:
    """Log `message` as the stage's progress line, and record its wall seconds as timings[key].

    Every step that can take more than a few seconds runs under one, so a terminal never goes
    quiet for long and report.json's `timings` gives each stage's time (issue 22).
    """
    if message:
        status(message)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - start


def warn(message: str) -> None:
    """A warning about numbers that may be wrong: logged once per command, shown even with --quiet
    (it is not progress).

    Logged at DATA_WARNING, above the level --quiet keeps (errors and these), so the CLI shows it;
    a library caller sees it through Python's logging like any other warning, each time it applies
    (no command ledger is open: see ledger.py).
    """
    from .ledger import first_time

    if first_time(message) and log.isEnabledFor(DATA_WARNING):
        record = log.makeRecord(log.name, DATA_WARNING, __file__, 0, f"warning: {message}", None, None)
        record.levelname = "WARNING"
        log.handle(record)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
