"""Outputs that never clobber inputs or foreign files, and output sets that appear all at once.

One rule, shared by every path repdeploy writes (`-o`, `--json-out`, report files, run
directories, and whatever builds on these functions):

- An output never replaces an input: `refuse_overwriting_inputs` compares resolved paths (and
  inodes, for hard links) before any work starts.
- A file repdeploy did not write is never replaced. What it wrote is what its records list
  (`owned_names`: a run directory's `manifest.json`, a quantize/qat `report.json`, the pipeline's
  top-level report); anything else in a run directory is an error unless the user passes
  `--force`, and even then it is kept, and a foreign file with an output's name is still refused.
- An output set (a pipeline run directory) is staged in a hidden sibling directory and swapped in
  with one rename (`renameat2(RENAME_EXCHANGE)` where the kernel has it), so a reader sees the
  whole old set or the whole new one. Sets in a shared directory are committed with a redo log
  (scratch.commit_files).

Scratch (staging, `.part` files, redo logs) lives in scratch.py, re-exported here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import OutputError
from . import ledger, scratch
from .scratch import (COMMIT_MARKER, SCRATCH_TAGS, _plain_name, clean_stale_scratch,  # noqa: F401
                      is_own_scratch, make_scratch_dir, make_scratch_file, scratch_prefix)

MANIFEST = "manifest.json"
TOOL = "repdeploy"

def commit_files(stage: Path, out: Path, names: list[str]) -> None:
    """scratch.commit_files, and the set's report noted as committed (an interrupt names it)."""
    scratch.commit_files(stage, out, names)
    note_committed(out / names[-1])


# --------------------------------------------------------------------------- inputs vs outputs


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    return a.resolve() == b.resolve()


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def refuse_overwriting_inputs(inputs: Iterable[str | os.PathLike | None], *,
                              files: Iterable[str | os.PathLike] = (),
                              directories: Iterable[str | os.PathLike] = ()) -> None:
    """Raise OutputError when an output file is an input, or an output directory holds one.

    `files` are paths the command will write; `directories` are ones it replaces as a whole
    (a pipeline run directory). Call it before any work starts.
    """
    ins = [Path(i) for i in inputs if i is not None and str(i) not in ("", "builtin", "digits")]
    for out in map(Path, files):
        for inp in ins:
            if _same(out, inp):
                raise OutputError(f"output {out} is the input {inp}; writing it would destroy the input; "
                                  "give -o another path")
    for d in map(Path, directories):
        for inp in ins:
            if _same(d, inp) or _inside(inp, d):
                raise OutputError(f"output directory {d} contains the input {inp}, and repdeploy replaces that "
                                  "directory's contents; give -o another directory or move the input out")


_KINDS = {"torch": "PyTorch checkpoint", "onnx": "ONNX model", "json": "JSON"}


def refuse_other_kind(path: str | os.PathLike, kind: str, option: str = "-o") -> None:
    """A file named as an output (`-o FILE`, `--json-out FILE`) is replaced only when it is the
    kind of file that output is: a typo never turns the user's notes, images or data into a
    checkpoint or a JSON report."""
    p = Path(path)
    if not p.is_file():
        return
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return  # unreadable: the write itself will say why
    if kind == "torch":
        same = head[:2] == b"PK" or head[:1] == b"\x80" or (len(head) > 8 and head[8:9] == b"{")  # zip, pickle, safetensors
    elif kind == "json":
        same = not head.strip() or head.lstrip()[:1] in (b"{", b"[")
    elif kind == "onnx":
        same = head[:1] == b"\x08"  # a serialized ModelProto starts with field 1, ir_version (a varint)
    else:
        raise ValueError(f"unknown output kind {kind!r}")
    if not same:
        raise OutputError(f"{option} {p} exists and is not a {_KINDS[kind]} file; repdeploy does not replace it: "
                          f"move it away or give {option} another path")


# --------------------------------------------------------------------------- ownership


def read_manifest(run_dir: Path) -> dict | None:
    """The repdeploy manifest of `run_dir`, or None when there is none or it is not repdeploy's."""
    try:
        doc = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("tool") != TOOL or not isinstance(doc.get("artifacts"), list):
        return None
    return doc


def foreign_files(run_dir: Path) -> list[str]:
    """Entries of an existing `run_dir` that no repdeploy manifest there lists (stale scratch aside)."""
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        return [run_dir.name]
    manifest = read_manifest(run_dir)
    owned = {str(a) for a in manifest["artifacts"]} | {MANIFEST} if manifest else set()
    out = []
    for entry in sorted(os.listdir(run_dir)):
        if entry in owned:
            continue
        if entry.startswith(".") and is_own_scratch(run_dir / entry):
            continue
        out.append(entry)
    return out


def owned_names(directory: str | os.PathLike) -> set[str]:
    """The files of `directory` that a repdeploy record there lists as repdeploy's.

    A run directory's `manifest.json` lists its artifacts; a quantize or qat output directory's
    `report.json` lists its file set (`files`); a pipeline's top-level `report.json` stands for
    the report set (report.json, .csv, .md, .html).
    """
    d = Path(directory)
    owned: set[str] = set()
    manifest = read_manifest(d)
    if manifest:
        owned |= {str(a) for a in manifest["artifacts"]} | {MANIFEST}
    try:
        doc = json.loads((d / "report.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return owned
    if not isinstance(doc, dict) or not str(doc.get("tool", "")).startswith(TOOL):
        return owned
    if isinstance(doc.get("files"), dict):
        owned |= {v for v in doc["files"].values() if _plain_name(v)} | {"report.json"}
    if doc.get("tool") == TOOL and isinstance(doc.get("models"), list):
        owned |= {f"report.{ext}" for ext in REPORT_SET}
    return owned


#: The top-level report set of a pipeline output directory.
REPORT_SET = ("json", "csv", "md", "html")


def refuse_foreign_outputs(directory: str | os.PathLike, names: Iterable[str]) -> None:
    """Raise OutputError when a file repdeploy is about to write in `directory` exists and no
    repdeploy record there lists it: the user's own file with an output's name. `--force` does
    not change this; only moving the file, or another directory, does."""
    d = Path(directory)
    if not d.is_dir():
        return
    clashes = [n for n in names if os.path.lexists(d / n)]
    if not clashes:
        return
    owned = owned_names(d)
    foreign = [n for n in clashes if n not in owned]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise OutputError(f"{d} holds {shown}, which repdeploy did not write but would replace; move it away or "
                          "give -o another directory (--force never replaces a file that is not repdeploy's)")


def check_owned(run_dir: str | os.PathLike, *, force: bool = False, outputs: Iterable[str] = ()) -> None:
    """Refuse to replace a directory holding files repdeploy did not write (unless `force`).

    With `force` those files are kept and the run writes beside them; a foreign file whose name
    matches one of `outputs` (names or glob patterns of what the run writes) is still refused.
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise OutputError(f"run directory {d} is a file; move it away or give -o another directory")
    foreign = foreign_files(d)
    if foreign and not force:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise OutputError(f"run directory {d} holds files no repdeploy manifest lists ({shown}); "
                          "move them away, give -o another directory, or pass --force to keep them and write beside them")
    patterns = list(outputs)
    clashing = [f for f in foreign if any(fnmatch.fnmatchcase(f, p) for p in patterns)]
    if clashing:
        raise OutputError(f"run directory {d} holds {', '.join(clashing[:4])}, which no repdeploy manifest lists and "
                          "a run would replace; --force keeps foreign files but never replaces one: move it away or "
                          "give -o another directory")


# --------------------------------------------------------------------------- atomic sets


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2). False when the system cannot."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class OutputSet:
    """Stage a whole directory of outputs and swap it in with one rename.

    >>> with OutputSet("runs/x/a0", inputs=["a0.pth"]) as staging:   # doctest: +SKIP
    ...     (staging / "report.json").write_text("{}")
    # runs/x/a0 now holds exactly what was written into staging; nothing else

    On an exception (or Ctrl-C) the staging directory is removed and the old set stays as it was.
    With `force`, a directory holding foreign files is updated in place: manifest-listed files of
    the old set are replaced or removed one by one, foreign files are kept (not atomic).
    """

    def __init__(self, target: str | os.PathLike, *, force: bool = False, outputs: Iterable[str] = ()) -> None:
        self.target = Path(target)
        self.force = force
        check_owned(self.target, force=force, outputs=outputs)
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output {parent} cannot be created ({exc.strerror or exc}); give -o another path") from exc
        clean_stale_scratch(parent)
        if self.target.is_dir():
            clean_stale_scratch(self.target)
        try:
            # Created with the mode a plain mkdir gives (the kernel applies the umask): it becomes the target.
            self.staging = make_scratch_dir(parent, self.target.name, "staging", mode=0o777)
        except OSError as exc:
            raise OutputError(f"output {parent} is not writable ({exc.strerror or exc}); give -o another path") from exc

    def __enter__(self) -> Path:
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> Path:
        """Make the staged set the target's content (one rename when the target is ours alone)."""
        t = self.target
        if self.force and foreign_files(t):
            self._merge_in_place()
        elif not t.exists():
            os.rename(self.staging, t)
        elif _exchange(self.staging, t):
            shutil.rmtree(self.staging, ignore_errors=True)  # now holds the old set
        else:
            old = make_scratch_dir(t.parent, t.name, "old")
            os.rename(t, old / t.name)
            os.rename(self.staging, t)
            shutil.rmtree(old, ignore_errors=True)
        note_committed(t)
        return t

    def _merge_in_place(self) -> None:
        foreign = set(foreign_files(self.target))
        clashing = sorted(n for n in os.listdir(self.staging) if n in foreign)
        if clashing:  # checked before anything moves: --force keeps foreign files, never replaces them
            raise OutputError(f"run directory {self.target} holds {', '.join(clashing)}, which no repdeploy manifest "
                              "lists and this run would replace; move it away or give -o another directory")
        manifest = read_manifest(self.target)
        for name in (manifest or {}).get("artifacts", []):
            p = self.target / str(name)
            if "/" not in str(name) and p.is_file() and not (self.staging / p.name).exists():
                p.unlink()
        names = sorted(os.listdir(self.staging), key=lambda n: n == MANIFEST)  # manifest last
        for name in names:
            os.replace(self.staging / name, self.target / name)
        shutil.rmtree(self.staging, ignore_errors=True)


def note_committed(path: str | os.PathLike) -> None:
    """Record an output the running command finished (an interrupt later names it as kept).

    Sets written into a scratch directory (quantize inside a pipeline run) are not outputs yet.
    """
    p = Path(path)
    if not any(part.startswith(".") and any(f".{t}-" in part for t in SCRATCH_TAGS) for part in p.parts):
        ledger.note_committed(p)
