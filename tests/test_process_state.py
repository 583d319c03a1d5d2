"""repdeploy embedded in a long-running service: 1,000 calls from two threads keep no state in the
process and never race on the umask (issue 20, item 5).

What a command has done (outputs kept, directories created, resume states, warnings shown) lives
in the command's ledger (repdeploy/ledger.py), opened by the CLI's error boundary; files get their
mode from the kernel at creation (os.open / os.mkdir with an explicit mode), never by reading the
umask, which in Python means setting it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import threading
from collections import deque
from pathlib import Path

import pytest

import repdeploy
from repdeploy import ledger, progress, rundir
from repdeploy.io import ensure_writable_dir, write_json_atomic

CALLS = 1000
UMASK = 0o027  # not the usual 0o022, so that a mode computed from a wrong umask shows


def _containers() -> dict[str, int]:
    """The size of every module-level list, set, dict and deque in repdeploy's loaded modules."""
    sizes = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "repdeploy" or name.startswith("repdeploy.")):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, (list, set, dict, deque)) and not attr.startswith("__"):
                sizes[f"{name}.{attr}"] = len(value)
    return sizes


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {k: (before.get(k, 0), n) for k, n in after.items() if n > before.get(k, 0)}


def _one_call(root: Path, i: int) -> None:
    """The parts of a quantize / pipeline call that touched process-global state: a checked output
    directory, atomic files, a quantize-style file set committed into a shared directory, a
    pipeline-style run directory swapped in whole, a data warning, a resume state."""
    out = ensure_writable_dir(root / f"out{i % 3}" / "nested")
    write_json_atomic(out / "report.json", {"i": i})
    stage = rundir.make_scratch_dir(out, "set", "quantize")
    write_json_atomic(stage / "calib.json", {"i": i})
    try:
        rundir.commit_files(stage, out, ["calib.json"])
    finally:
        shutil.rmtree(stage)  # as quantize does
    with rundir.OutputSet(root / "run") as staging:
        write_json_atomic(staging / "manifest.json",
                          {"tool": "repdeploy", "artifacts": ["model.json"]})
        write_json_atomic(staging / "model.json", {"i": i})
    progress.warn(f"data {root.name}: a warning every call repeats")
    ledger.note_resume_state(root / "state.pt")


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)  # the test sets it once, before any thread runs
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, set[Path]]:
    wrong: dict[str, set[Path]] = {"files": set(), "dirs": set()}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir() and mode != 0o777 & ~UMASK:
            wrong["dirs"].add(path)
        elif path.is_file() and mode != 0o666 & ~UMASK:
            wrong["files"].add(path)
    return wrong


def _run_two_threads(tmp_path: Path, calls: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def worker(root: Path) -> None:
        try:
            for i in range(calls // 2):
                _one_call(root, i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tmp_path / f"t{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _umask_forbidden(mask: int) -> int:
    raise AssertionError("os.umask called: reading the umask means setting it, a race with every thread")


def test_a_thousand_calls_from_two_threads_keep_nothing_and_get_their_modes(tmp_path, monkeypatch):
    _one_call(tmp_path / "warm", 0)  # first call: lazy imports load their modules
    before = _containers()
    with _umask(UMASK):
        # A toggle's window is one bytecode wide, too rare to catch by chance: any call fails instead.
        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", _umask_forbidden)
            errors = _run_two_threads(tmp_path / "w", CALLS)
        assert os.umask(UMASK) == UMASK  # nobody left it changed
    assert not errors, errors
    assert not _grown(before, _containers()), "process-global structures grew over 1,000 calls"
    assert ledger.committed() == [] and ledger.created_dirs() == []
    wrong = _modes(tmp_path / "w")
    assert not wrong["files"] and not wrong["dirs"], wrong
    assert json_of(tmp_path / "w" / "t0" / "run" / "model.json") == {"i": CALLS // 2 - 1}


def json_of(path: Path):
    import json

    return json.loads(path.read_text())


def test_a_command_records_what_it_did_once_and_forgets_it(tmp_path, caplog):
    """Inside the ledger the boundary opens, outputs are recorded and a warning is shown once; the
    next command starts empty, and outside one every warning shows."""
    with caplog.at_level("WARNING", logger=progress.LOGGER_NAME):
        with ledger.recording() as record:
            for i in range(3):
                _one_call(tmp_path, i)
            assert set(record.committed) == {tmp_path / f"out{i}" / "nested" / "calib.json" for i in range(3)} | {
                tmp_path / "run"}
            assert tmp_path / "out0" in record.created_dirs and record.resume_states == [tmp_path / "state.pt"]
        assert len(caplog.records) == 1 and caplog.records[0].levelname == "WARNING"
        with ledger.recording() as record:
            assert not record.committed and not record.warned
        progress.warn("outside a command")
        progress.warn("outside a command")
    assert len(caplog.records) == 3
    import logging

    assert logging.getLevelName(progress.DATA_WARNING) == f"Level {progress.DATA_WARNING}"  # nothing registered


def test_the_checks_catch_a_growing_global_and_a_wrong_mode(tmp_path, monkeypatch):
    """Planted faults: a module-level list that one call appends to, and a file created while the
    umask was cleared (what a thread reading the umask by setting it does to its neighbours)."""
    monkeypatch.setattr(rundir, "_planted", [], raising=False)
    before = _containers()
    for i in range(3):
        _one_call(tmp_path, i)
        rundir._planted.append(i)
    assert _grown(before, _containers()) == {"repdeploy.rundir._planted": (0, 3)}

    with _umask(UMASK):
        write_json_atomic(tmp_path / "m" / "good.json", {})
        with _umask(0):
            write_json_atomic(tmp_path / "m" / "raced.json", {})
    wrong = _modes(tmp_path / "m")
    assert wrong == {"files": {tmp_path / "m" / "raced.json"}, "dirs": set()}


@pytest.mark.slow
def test_quantize_in_a_loop_keeps_nothing(tmp_path):
    """The real library call, a few times from two threads (1,000 would take minutes; the parts it
    shares with the process are the ones looped 1,000 times above)."""
    import torch

    from repdeploy.zoo import zoo_entry

    plain = repdeploy.fuse(repdeploy.load(zoo_entry("repvgg").file).model).plain
    x = torch.rand(16, 3, 32, 32)

    def call(out: Path) -> None:
        repdeploy.quantize(plain, calib_data=x, calib_samples=16, calib_method="max", diagnostics="off",
                           output_dir=out)

    call(tmp_path / "warm")
    before = _containers()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(3):
                call(tmp_path / f"q{n}" / str(i % 2))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with _umask(UMASK):
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert not _grown(before, _containers())
    wrong = _modes(tmp_path / "q0")
    assert not wrong["files"], wrong
