"""Scratch: the hidden files and directories a run writes before its outputs are complete.

Scratch names carry host and process id, so two runs into one directory never collide and a later
run can tell whose leftovers are stale, and they end in an HMAC of the rest of the name under a key
only this user can read (`~/.local/state/repdeploy/scratch-key`, mode 0600; `$REPDEPLOY_STATE_DIR`
moves it). Scratch is recognised by that secret, never by its name alone: anyone who can write to
a shared output directory can plant `.x.staging-<host>-<dead pid>-z/`, only this user's repdeploy
can sign one. A redo log (COMMIT) is signed too, lists plain names only, and can only move files
from its scratch directory into the directory it sits in: recovery never leaves the output
directory and never follows a path the recovering user's repdeploy did not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

#: Hidden names repdeploy gives its scratch files and directories: `.<name>.<tag>-<host>-<pid>-<random>-<mac>`.
SCRATCH_TAGS = ("staging", "old", "quantize", "qat", "part")


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def scratch_prefix(name: str, tag: str) -> str:
    """`.<name>.<tag>-<host>-<pid>-`: unique per process, and tells a later run whose it was."""
    return f".{name}.{tag}-{_host()}-{os.getpid()}-"


# Scratch is recognised by a secret, never by its name alone: each scratch name ends in an HMAC of
# the rest of the name under a key only this user can read (a file of mode 0600 in the user's
# state directory), and a redo log (COMMIT) carries an HMAC of its contents. Anyone can plant a
# folder named `.x.staging-<host>-<dead pid>-z`; only this user's repdeploy can sign one.
_KEY_FILE = "scratch-key"
_key_cache: bytes | None = None


def _state_dir() -> Path:
    if os.environ.get("REPDEPLOY_STATE_DIR"):
        return Path(os.environ["REPDEPLOY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "repdeploy"


def _key() -> bytes:
    """This user's scratch key: read from the state directory, created there (0600) on first use.

    Where it cannot be stored, a key for this process alone: a later run then cannot recognise
    this run's leftovers and leaves them (never removes what it cannot prove is its own).
    """
    global _key_cache
    if _key_cache is not None:
        return _key_cache
    path = _state_dir() / _KEY_FILE
    key = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                st = os.fstat(fd)
                if st.st_uid == os.getuid() and not (st.st_mode & 0o077) and st.st_size == 32:
                    key = os.read(fd, 32)
            finally:
                os.close(fd)
            break
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
            except FileExistsError:
                continue  # another run made it first: read theirs
            except OSError:
                break
        except OSError:
            break
    _key_cache = key if key and len(key) == 32 else secrets.token_bytes(32)
    return _key_cache


def _sign(text: str) -> str:
    return hmac.new(_key(), f"{os.getuid()}:{text}".encode(), hashlib.sha256).hexdigest()[:20]


def _signed_name(prefix: str, suffix: str = "") -> str:
    unsigned = prefix + secrets.token_hex(4) + "-"
    return unsigned + _sign(unsigned) + suffix


def make_scratch_dir(parent: str | os.PathLike, name: str, tag: str, mode: int = 0o700) -> Path:
    """A fresh hidden scratch directory in `parent` (mode 0700, name signed: see `is_own_scratch`).

    One that will become an output is created with that output's `mode` (less the umask, which the
    kernel applies: the umask is never read or changed here, so threads cannot race on it)."""
    while True:
        path = Path(parent) / _signed_name(scratch_prefix(name, tag))
        try:
            os.mkdir(path, mode)
            return path
        except FileExistsError:
            continue


def make_scratch_file(parent: str | os.PathLike, name: str, tag: str = "part", suffix: str = ".part",
                      mode: int = 0o600) -> Path:
    """A fresh hidden scratch file in `parent` (created exclusively, mode 0600 or the `mode` of the
    output it will become, less the umask; name signed)."""
    while True:
        path = Path(parent) / _signed_name(scratch_prefix(name, tag), suffix)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode))
            return path
        except FileExistsError:
            continue


_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?P<tag>" + "|".join(SCRATCH_TAGS)
                      + r")-(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-(?P<rand>[0-9a-f]{8})-(?P<mac>[0-9a-f]{20})"
                      r"(?P<suffix>\.part)?$")


def is_own_scratch(entry: os.DirEntry | Path) -> bool:
    """Whether `entry` is scratch this user's repdeploy made: a signed name, owned by this user,
    not a symbolic link. The name alone proves nothing."""
    name = entry.name
    m = _SCRATCH.match(name)
    if m is None:
        return False
    unsigned = name[: m.start("mac")]
    if not hmac.compare_digest(m["mac"], _sign(unsigned)):
        return False
    try:
        st = os.lstat(entry.path if isinstance(entry, os.DirEntry) else entry)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not stat.S_ISLNK(st.st_mode)


def _owner_alive(entry: str) -> bool:
    """Whether the process that made scratch `entry` may still be running (True if unsure)."""
    m = _SCRATCH.match(entry)
    if m is None:
        return True
    if m["host"] != _host():
        return True  # another machine's run on a shared filesystem: not ours to judge
    pid = int(m["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_scratch(directory: str | os.PathLike) -> list[Path]:
    """Remove scratch files and directories that killed repdeploy runs of this user left in `directory`.

    Only verified scratch (`is_own_scratch`) whose process no longer exists on this host is
    touched, and only inside `directory`: a redo log is followed only when its signature holds, and
    it can only move plain names from the scratch directory into `directory`. Returns what was removed.
    """
    d = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not is_own_scratch(entry) or _owner_alive(entry.name):
            continue
        p = Path(entry.path)
        with contextlib.suppress(OSError, ValueError):
            if entry.is_dir(follow_symlinks=False):
                if (p / COMMIT_MARKER).is_file():
                    with contextlib.suppress(ValueError):  # a log we did not sign is not followed
                        _roll_forward(p, d)  # killed mid-commit: finish it, so the set is whole again
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- file sets in a shared directory

COMMIT_MARKER = "COMMIT"


def _plain_name(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and name != COMMIT_MARKER)


def commit_files(stage: Path, out: Path, names: list[str]) -> None:
    """Move the staged files `names` into `out`; the last name (the report) marks the set complete.

    A directory the user shares with other files cannot be swapped whole, so the set is committed
    with a redo log: the marker written first lists the files (signed), the old report goes before
    any file is replaced (no report = set incomplete), and the new report goes last. If the process
    dies in between, the next repdeploy run writing into `out` finishes the moves (`clean_stale_scratch`).
    """
    if not all(_plain_name(n) for n in names):
        raise ValueError(f"commit_files takes plain file names, got {names}")
    listed = json.dumps(names)
    (stage / COMMIT_MARKER).write_text(json.dumps({"files": names, "mac": _sign(stage.name + listed)}))
    (out / names[-1]).unlink(missing_ok=True)
    _roll_forward(stage, out)


def _roll_forward(stage: Path, out: Path) -> None:
    doc = json.loads((stage / COMMIT_MARKER).read_text())
    names = doc["files"] if isinstance(doc, dict) else None
    if (not isinstance(names, list) or not names or not all(_plain_name(n) for n in names)
            or not hmac.compare_digest(str(doc.get("mac", "")), _sign(stage.name + json.dumps(names)))):
        raise ValueError(f"{stage / COMMIT_MARKER} is not a redo log this user's repdeploy signed")
    if (stage / names[-1]).exists():
        (out / names[-1]).unlink(missing_ok=True)
    for name in names:
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    (stage / COMMIT_MARKER).unlink(missing_ok=True)
