"""`repdeploy bench` as a library call: several model files, several batch sizes, one report.

`bench_models` opens every model once (a bad file is reported before any timing and the others
still run), gives every ORT model one set of session settings (`--ort-spin-us`), times them all
interleaved over fresh sessions at each batch size (harness.bench_sessions), and returns a
`BenchReport` whose status says whether everything ran. It never exits and never prints: the
command line formats the report and turns its `exit_code` into the process's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from .. import defaults
from ..errors import InputError, RepDeployError
from ..progress import log, status
from .harness import BenchSettings, bench_sessions

SPEEDUP_DEFINITION = ("time of the first model (baseline) / time of this model at the same batch size, timed "
                      "interleaved: in each fresh session the ratio of the two models' median round latencies, then "
                      "the geometric mean over the sessions with a 95 % t-interval; above 1: faster than the baseline")


@dataclass(frozen=True)
class BenchModelsSettings:
    """What `bench_models` runs: the engine, how each model opens, and the timing settings."""

    engine: str = "ort"  # torch, ort or trt
    batches: tuple[int, ...] = (defaults.BENCH_BATCH_SIZE,)
    threads: int | None = None  # ORT intra-op / torch threads
    device: str | None = defaults.DEVICE
    compile: bool = False  # torch engine: torch.compile
    ort_spin_us: str | int | None = "recorded"  # runtime.ort.shared_session_config
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)  # for checkpoints (arch, strict, ...)
    timing: BenchSettings = BenchSettings()
    fresh_processes: bool = False  # each session in its own process (processes.py): the interval spans reruns


@dataclass
class BenchReport:
    """What `bench_models` measured and what failed; `status` PASSED only when every model ran."""

    results: list[dict]  # one record per model and batch size (BenchResult.to_dict + path, label, ...)
    failures: list[dict]  # {"path", "error", "exit_code", ["label" | "batch"]}
    environment: dict | None
    baseline: str | None  # the label of the first model that opened
    ort_session: dict | None  # the one set of ORT settings every model ran with
    speedups: list[dict]  # every model over the baseline, per batch size, with its interval

    @property
    def status(self) -> str:
        return "FAILED" if self.failures else "PASSED"

    @property
    def exit_code(self) -> int:
        return max((f["exit_code"] for f in self.failures), default=0)

    def to_dict(self) -> dict:
        return {"results": self.results, "failures": self.failures, "environment": self.environment,
                "baseline": self.baseline, "speedup_definition": SPEEDUP_DEFINITION, "ort_session": self.ort_session,
                "speedups": self.speedups, "verdict": self.status}


_FIELDS = frozenset(f.name for f in fields(BenchModelsSettings))


def bench_models(models: Sequence[str | os.PathLike], settings: BenchModelsSettings | None = None,
                 **shortcuts) -> BenchReport:
    """Time model files against the first one; keyword shortcuts are BenchModelsSettings fields.

    Settings are checked before the first model loads; a model that does not open, or a batch
    size that fails, is a failure in the report and the rest still run.

    >>> report = bench_models(["model_fp32.onnx", "model_int8_ort.onnx"], batches=(1, 8), threads=1)  # doctest: +SKIP
    >>> report.status, report.speedups[0]["speedup"]                                               # doctest: +SKIP
    """
    from ..runtime.ort import shared_session_config
    from ..validate import threads as check_threads

    unknown = sorted(set(shortcuts) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown bench_models setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    s = replace(settings or BenchModelsSettings(), **shortcuts)
    if not models:
        raise InputError("give at least one model (checkpoint, fused .pt, .onnx or engine)")
    if not s.batches:
        raise InputError("give at least one batch size")
    for size in s.batches:  # every knob checked before the first model loads: NaN would never end
        replace(s.timing, batch=size).check()
    check_threads("--threads", s.threads)
    ort_session = shared_session_config(models, s.ort_spin_us) if s.engine == "ort" else None
    if s.engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()
    # by position, not by path: the same file named twice is two rows (`m.onnx #1`, `m.onnx #2`)
    runners, failures = _open_all(list(zip(models, unique_labels(models))), s, ort_session)
    report = BenchReport([], failures, None, runners[0][1] if runners else None,
                         None if ort_session is None else {**ort_session.to_dict(), "text": ort_session.describe()}, [])
    for size in s.batches if runners else ():
        _bench_batch(report, runners, replace(s.timing, batch=size, sessions=s.timing.sessions
                                              if len(runners) > 1 else 1), s, ort_session)
    return report


def _open_all(labelled: list, s: BenchModelsSettings, ort_session) -> tuple[list, list[dict]]:
    from ..runtime import model_kind, open_runner

    runners, failures = [], []
    for model, label in labelled:
        try:
            kwargs = dict(s.load_kwargs) if model_kind(model) == "checkpoint" else {}
            runner = open_runner(model, s.engine, threads=s.threads, compile=s.compile, device=s.device,
                                 name=label, **kwargs)
            if ort_session is not None:
                ort_session.apply(runner)
            with runner:  # opened once here so a bad file is reported before any timing
                pass
            _warn_layout(model, s.engine)
            runners.append((model, label, runner))
        except RepDeployError as exc:
            failures.append({"path": str(model), "label": label, "error": f"{model}: {exc}",
                             "exit_code": exc.exit_code})
    return runners, failures


def _bench_batch(report: BenchReport, runners: list, timing: BenchSettings, s: BenchModelsSettings,
                 ort_session) -> None:
    """Time every opened model at one batch size; a failure is recorded, not raised."""
    from ..recorded import preprocessing_of
    from ..runtime import model_kind
    from .processes import bench_in_processes

    fresh = s.fresh_processes and timing.sessions > 1
    status(f"bench {len(runners)} model(s) ({s.engine}, batch {timing.batch}, {timing.sessions} "
           f"{'fresh process' if fresh else 'session'}(s))")
    try:
        if fresh:
            job = {"models": [str(m) for m, _, _ in runners], "labels": [label for _, label, _ in runners],
                   "engine": s.engine, "threads": s.threads, "device": s.device, "compile": s.compile,
                   "session_config": None if ort_session is None else dict(ort_session.config),
                   "load_kwargs": [dict(s.load_kwargs) if model_kind(m) == "checkpoint" else {} for m, _, _ in runners]}
            measured = bench_in_processes([r for _, _, r in runners], job, timing)
        else:
            # one model has no speed-up to make honest: the plain harness, which meets the minimums exactly
            measured, _ = bench_sessions(lambda: [r for _, _, r in runners], timing)
    except RepDeployError as exc:
        report.failures.append({"path": ", ".join(str(m) for m, _, _ in runners), "error": str(exc),
                                "exit_code": exc.exit_code, "batch": timing.batch})
        return
    for i, ((model, label, _), result) in enumerate(zip(runners, measured)):
        record = result.to_dict()
        record["path"] = str(model)
        record["label"] = label
        sp = result.speedup
        record["speedup_vs_first"] = 1.0 if i == 0 else (sp.ratio if sp is not None else None)
        prep = preprocessing_of(model)  # recorded with the figures: what input the model expects
        record["preprocessing"] = prep.to_dict() if prep is not None else None
        report.environment = record.pop("environment")
        report.results.append(record)
        if sp is not None:
            report.speedups.append(_speedup_record(sp, timing.batch, runners[0][1], label))


def _speedup_record(speedup, batch: int, reference: str, candidate: str) -> dict:
    """stats.Speedup in bench's JSON words: `speedup` is reference time / candidate time."""
    d = speedup.to_dict()
    return {"batch": batch, "reference": reference, "candidate": candidate, "speedup": d["ratio"],
            "ci_low": d["ci_low"], "ci_high": d["ci_high"], "rounds": d["rounds"], "sessions": d["sessions"],
            "session_speedups": d["session_ratios"], "noisy": d["noisy"],
            "interval": "t-interval over sessions" if d["sessions"] > 1 else "bootstrap over one session's rounds"}


def _warn_layout(model, engine: str) -> None:
    """Timing a TensorRT-layout INT8 graph on ONNX Runtime measures its float fallback: say so."""
    if engine != "ort" or not str(model).endswith(".onnx"):
        return
    import onnx

    from ..export.qdq import TENSORRT_ON_ORT_WARNING, qdq_layout

    if qdq_layout(onnx.load(str(model), load_external_data=False)) == "tensorrt":
        log.warning(f"{model}: {TENSORRT_ON_ORT_WARNING}")


def unique_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short row labels for model files: the file name, plus as many parent folders as it takes
    to tell files with the same name apart (run directories: `a/model_int8_ort.onnx`).

    >>> unique_labels(["runs/a/model.onnx", "runs/b/model.onnx", "x.onnx"])
    ['a/model.onnx', 'b/model.onnx', 'x.onnx']
    >>> unique_labels(["/runs/a/model.onnx", "/runs/a/model.onnx"])
    ['model.onnx #1', 'model.onnx #2']
    """
    from pathlib import PurePath

    parts = [PurePath(os.fspath(p)).parts for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        # only a clash between different paths needs more folders; the same path twice never parts
        clash = {lab for lab in labels if len({parts[i] for i, other in enumerate(labels) if other == lab}) > 1}
        grow = [i for i, lab in enumerate(labels) if lab in clash and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    # The same file named twice (or paths equal up to the root) stays ambiguous: number them.
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out
