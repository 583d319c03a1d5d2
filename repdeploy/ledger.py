"""What one command has done so far: the outputs it finished or the directories it created, the
resume states it rewrote, the data warnings it showed.

An interrupted or failed command says what it kept (`failures.describe_failure`) and removes the
empty directories it created; a data warning is shown once per command, not once per dataset
opened. Those facts belong to the command, not to the process: a service that calls `quantize`
1,000 times must not keep 1,000 paths, and a warning must reappear for its next caller. So the
ledger lives in a context variable that the command's error boundary opens (`recording`) and
closes. Outside one (a library call, a worker thread: new threads start with an empty context)
nothing is recorded and every warning is shown.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


@dataclass
class Ledger:
    committed: list[Path] = field(default_factory=list)
    resume_states: list[Path] = field(default_factory=list)
    created_dirs: list[Path] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)


_current: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("repdeploy_ledger", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Ledger]:
    """Record what the code inside does, for the command that runs it; forgotten on exit."""
    token = _current.set(Ledger())
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def note_committed(path: Path) -> None:
    if (ledger := _current.get()) is not None:
        ledger.committed.append(path)


def note_resume_state(path: Path) -> None:
    if (ledger := _current.get()) is not None and path not in ledger.resume_states:
        ledger.resume_states.append(path)


def note_created_dirs(paths: list[Path]) -> None:
    if (ledger := _current.get()) is not None:
        ledger.created_dirs.extend(paths)


def first_time(message: str) -> bool:
    """Whether `message` is new to this command (always True outside one)."""
    ledger = _current.get()
    if ledger is None:
        return True
    if message in ledger.warned:
        return False
    ledger.warned.add(message)
    return True


def committed() -> list[Path]:
    return list(ledger.committed) if (ledger := _current.get()) else []


def resume_states() -> list[Path]:
    return list(ledger.resume_states) if (ledger := _current.get()) else []


def created_dirs() -> list[Path]:
    return list(ledger.created_dirs) if (ledger := _current.get()) else []
