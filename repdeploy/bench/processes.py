"""Each timing session in a fresh process: the interval then spans what a rerun of `bench` gets.

A session opened fresh inside one process still shares that process's memory layout, allocator
state and thread placement with the other sessions. On the 2-core machine the sessions of one run
clustered: run 5's 4.21, 4.13, 4.17 against run 2's 4.87, 4.55, 4.56 (docs/benchmarks.md, "Bench
repeatability"). A t-interval over those sessions describes one process, not the next one. With
`fresh_processes`, `bench_models` runs every session as `python -m repdeploy.bench.processes`:
the child opens the model files, times one interleaved session and writes what it measured as
JSON on stdout. The parent pools the sessions exactly as it pools in-process ones (harness._results).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from typing import Sequence

from ..errors import RepDeployError
from .harness import SESSION_MIN_ROUNDS, BenchResult, BenchSettings, _interleaved_rounds, _results, _Session


def bench_in_processes(runners: Sequence, job: dict, settings: BenchSettings) -> list[BenchResult]:
    """`settings.sessions` sessions, each in a fresh process, of the models `job` names.

    `runners` are the parent's inactive runners of those models (their names and engines label
    the results); `job` holds what a child needs to open them again: `models` (paths), `labels`,
    `engine`, `threads`, `device`, `compile`, `session_config` (entries for every ORT model) and
    `load_kwargs` (one dict per model: a checkpoint's loading options).
    """
    share = settings.one_session()
    request = json.dumps({**job, "settings": asdict(share)})
    # a session runs for its share of the time; far longer means a child that hangs, not a slow one
    limit = 300 + 10 * (share.warmup + max(share.duration, share.max_duration or 0.0))
    sessions = []
    for _ in range(settings.sessions):
        try:
            proc = subprocess.run([sys.executable, "-m", "repdeploy.bench.processes"], input=request,
                                  capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise RepDeployError(f"a bench session process ran past {limit:.0f} s and was stopped; "
                                 "run without --fresh-processes to time the session in this process") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RepDeployError(f"a bench session process failed (exit {proc.returncode}): {last}")
        d = json.loads(proc.stdout)
        sessions.append(_Session([tuple(s) for s in d["shapes"]], d["times"], d["round_medians"], d["spent"],
                                 d["rounds"], d["descriptions"], d["host_times"]))
    return _results(runners, sessions, settings)


def _one_session(job: dict) -> _Session:
    import contextlib

    from ..runtime import open_runner
    from ..runtime.ort import SharedSessionConfig

    shared = None if job["session_config"] is None else SharedSessionConfig(job["session_config"], "parent")
    with contextlib.ExitStack() as stack:
        runners = []
        for path, label, kwargs in zip(job["models"], job["labels"], job["load_kwargs"]):
            runner = open_runner(path, job["engine"], threads=job["threads"], compile=job["compile"],
                                 device=job["device"], name=label, **kwargs)
            runners.append(stack.enter_context(shared.apply(runner) if shared is not None else runner))
        return _interleaved_rounds(runners, BenchSettings(**job["settings"]), min_rounds=SESSION_MIN_ROUNDS)


if __name__ == "__main__":
    print(json.dumps(asdict(_one_session(json.loads(sys.stdin.read())))))
