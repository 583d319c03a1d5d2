"""The error boundary: any exception -> one line and an exit code, the same for a command and a
pipeline row.

repdeploy's own errors carry both. The rest are mapped by kind: a full disk or a read-only output
is the user's to fix, memory exhaustion says what to shrink, Ctrl-C says what was kept and how to
`--resume`, anything else is an internal error whose traceback `repdeploy --debug` shows. The
command line prints the line as `error: ...`; a pipeline row records it as the row's error.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .errors import RepDeployError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
INTERRUPTED = 130


def _listed(paths: list) -> str:
    return ", ".join(map(str, paths[:5])) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _interrupted() -> str:
    from .ledger import committed, resume_states

    done, states = committed(), resume_states()
    kept = f"; finished before it and kept: {_listed(done)}" if done else ""
    if states:
        # The resume state was rewritten during this run: it is newer, not "left as it was".
        resume = (f"; the resume state {_listed(states)} was updated during this run: rerun the same command with "
                  "--resume to continue from it")
        return f"interrupted; the outputs being written were discarded{resume}{kept}"
    return f"interrupted; the outputs being written were discarded and the previous ones left as they were{kept}"


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """The one line (without `error: `) and the exit code for an error that escaped a command or a row."""
    if isinstance(exc, RepDeployError):
        return _one_line(str(exc)), exc.exit_code
    if isinstance(exc, KeyboardInterrupt) or _interrupt_seen:
        # A Ctrl-C that lands inside a C++ writer (torch.save) surfaces as that writer's
        # RuntimeError, not as KeyboardInterrupt: the recorded signal says what really happened.
        return _interrupted(), INTERRUPTED
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller --batch-size, input size or --calib-samples, or a machine with more "
                "memory"), 1
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where}; the unfinished output was removed and earlier results kept; "
                "free some space or give -o a path on another disk"), 1
    if isinstance(exc, OSError) and exc.errno in _NO_ACCESS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"permission denied{where} ({exc.strerror}); give -o a path you can write, or fix the permissions", 2
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return f"system error{where}: {exc.strerror or exc}; check the path and the disk", 1
    first = _one_line(str(exc))
    return (f"internal error: {type(exc).__name__}: {first}; rerun with `repdeploy --debug ...` for the traceback "
            "and report it"), 1


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines)[:600] if len(lines) > 1 else (lines[0][:600] if lines else "")


def remove_if_empty(directories: list[Path]) -> None:
    """Remove output directories a failed command created, deepest first, if nothing is in them."""
    for d in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass


# --------------------------------------------------------------------------- Ctrl-C before a command runs


def _started_as_cli() -> bool:
    import os
    import sys

    argv = list(getattr(sys, "orig_argv", []) or [])
    if any(a == "-m" and i + 1 < len(argv) and argv[i + 1] == "repdeploy" for i, a in enumerate(argv)):
        return True
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "repdeploy"


def _exit_interrupted(_signum, _frame) -> None:  # a signal handler's signature
    import os
    import sys

    # Nothing is written before a command starts, so there is nothing to keep or discard.
    sys.stderr.write("error: interrupted before the command started; nothing was written\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def install_early_interrupt() -> None:
    """Ctrl-C while the command line imports torch (seconds): one line and exit 130, no traceback.

    Only when this process is the `repdeploy` command; a library import changes no signal handling.
    The command's error boundary restores Python's handler when the command starts
    (`restore_interrupt`), so from then on Ctrl-C unwinds and discards staged outputs.
    """
    import signal
    import threading

    if _started_as_cli() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_interrupted)


#: set by the command's SIGINT handler; read by describe_failure
_interrupt_seen = False


def _raise_interrupt(_signum, _frame) -> None:  # a signal handler's signature
    global _interrupt_seen
    _interrupt_seen = True
    raise KeyboardInterrupt


def restore_interrupt() -> None:
    """From here on Ctrl-C unwinds (KeyboardInterrupt), and is remembered even where a C++ layer
    turns it into another exception."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, _raise_interrupt)
