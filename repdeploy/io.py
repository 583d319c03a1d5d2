"""Atomic output files: write to a temporary name beside the target, then rename.

An interrupted run must never leave a half-written artifact that looks complete, and a bad
output path must fail before any expensive work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from . import ledger
from .errors import OutputError


def ensure_writable_dir(directory: str | os.PathLike) -> Path:
    """Create `directory` if needed and prove we can write into it, or raise OutputError."""
    d = Path(directory)
    missing = [p for p in (d, *d.parents) if not p.exists()]
    try:
        d.mkdir(parents=True, exist_ok=True)
        ledger.note_created_dirs([p for p in missing if p.is_dir()])  # a failed command removes the empty ones
        with tempfile.NamedTemporaryFile(dir=d, prefix=".repdeploy-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"output {d} is not writable ({exc.strerror or exc}); choose another -o path") from exc
    return d


def ensure_writable_file(path: str | os.PathLike) -> Path:
    """Check the parent directory of an output file is writable, before doing the work."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"output {p} is a directory; give a file name with -o")
    if p.exists() and not p.is_file():
        # The rename would replace a device or FIFO (as root, /dev/null itself) with a plain file.
        raise OutputError(f"output {p} is not a regular file (a device, FIFO or socket); give a file path")
    ensure_writable_dir(p.parent if str(p.parent) else Path("."))
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` on success.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    from .rundir import clean_stale_scratch, make_scratch_file

    target = ensure_writable_file(path)
    clean_stale_scratch(target.parent)  # `.part` files of runs that were killed
    # Created with the permissions a plain open() gives (0666 less the umask, applied by the kernel:
    # reading the umask means setting it, which races with other threads).
    tmp_path = make_scratch_file(target.parent, target.name, mode=0o666)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            # A failed write() names no file; the one-line error should name the output.
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(finite_json(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"
    return write_bytes_atomic(path, text.encode())


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> Path:
    import errno

    import torch

    with atomic_path(path) as tmp:
        try:
            # Our own file object: closed here even when the write fails (torch's writer would
            # keep the descriptor, and the disk space, until it is garbage-collected).
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as exc:
            # torch's zip writer reports a full disk as a RuntimeError ("file write failed",
            # "unexpected pos ..."); when the disk is indeed (nearly) full, say so.
            if shutil.disk_usage(Path(tmp).parent).free >= (16 << 20):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    # numpy scalars and paths show up in reports; make them plain JSON.
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None: JSON has no NaN or Infinity, and a file
    holding the bare word `NaN` is not JSON any other tool can read."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return finite_json(obj.item())
    return obj
