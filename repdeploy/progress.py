"""Progress bars on a terminal only: logs, CI and pipes get none (and `--quiet` silences all)."""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def interactive() -> bool:
    return not _quiet and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on a terminal, plainly otherwise."""
    if not interactive():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=_stderr_console(), transient=True)


def status(message: str) -> None:
    """One progress line for a stage (stderr, so --json stdout stays machine-readable)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


_warned: set[str] = set()


def warn(message: str) -> None:
    """A warning about numbers that may be wrong: printed once, even with --quiet (it is not progress)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
