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


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a terminal under the CLI, plainly otherwise."""
    if not interactive():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=_stderr_console(), transient=True)


@contextlib.contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A bar advanced by hand (one call per step), for work driven from hooks rather than a loop:
    `with steps("diagnostics", n) as advance: ...`. Plain (no bar) off a terminal."""
    if not interactive():
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(console=_stderr_console(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def status(message: str) -> None:
    """One progress line for a stage, logged at INFO on the `repdeploy` logger."""
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
