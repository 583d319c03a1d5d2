"""Stage messages through `logging`, progress bars on a terminal only.

Library code never prints: stage lines go to the `repdeploy` logger at INFO, and Python's
logging shows nothing of them until someone installs a handler. The command line installs one
on stderr (repdeploy/cli/common.py), so --json stdout stays machine-readable and `--quiet`
leaves errors only. Progress bars appear only under the CLI, on a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

LOGGER_NAME = "repdeploy"
log = logging.getLogger(LOGGER_NAME)

_quiet = False
_bars = False  # set by the CLI: a library caller's terminal gets no bars it did not ask for


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) stage messages and bars: --quiet, and the non-zero ranks of DDP."""
    global _quiet
    _quiet = quiet
    log.setLevel(logging.ERROR if quiet else logging.NOTSET)


def enable_bars() -> None:
    """Called by the CLI: progress bars may be drawn (on a terminal, unless quiet)."""
    global _bars
    _bars = True


def disable_bars() -> None:
    global _bars
    _bars = False


def is_quiet() -> bool:
    return _quiet


def interactive() -> bool:
    return _bars and not _quiet and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a terminal under the CLI, plainly otherwise."""
    if not interactive():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=_stderr_console(), transient=True)


def status(message: str) -> None:
    """One progress line for a stage, logged at INFO on the `repdeploy` logger."""
    log.info(message)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
