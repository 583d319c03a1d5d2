"""The per-model driver and the run over all models: check every option, stage each model's run
directory, run its stages in order (repdeploy/pipeline/stages.py), assemble and write its row,
then write one report over all models.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import defaults
from ..errors import InputError, RepDeployError
from ..progress import status
from ..rundir import OutputSet, check_owned, clean_stale_scratch, note_removed, refuse_overwriting_inputs
from ..version import __version__
from ..zoo import builtin_zoo
from .records import Fused, ModelJob, StageFailure
from .row import ModelRow, assemble_row
from .settings import (BUILTIN_DATA, DEFAULT_BENCH_SESSIONS, DEFAULT_DURATION_S, DEFAULT_ITERATIONS,
                       DEFAULT_MAX_DURATION_S, DEFAULT_WARMUP_S, PipelineSettings)
from .stages import (benchmark_pair, build_tensorrt, check_labels, evaluate_pair, export_fp32, finetune_qat,
                     load_checkpoint, open_evaluation_data, quantize_int8)

REPORT_EXTENSIONS = ("json", "csv", "md", "html")


@dataclass
class PipelineResult:
    output_dir: Path
    rows: list[ModelRow]
    report: Any  # report.ReportPaths
    settings: PipelineSettings

    @property
    def exit_code(self) -> int:
        """1 when a model failed verification, else 3 when one is over the accuracy gate, else the
        first stage error's code, else 0."""
        failed = {r.exit_code for r in self.rows if r.status == "FAILED"}
        if failed:
            return 1 if 1 in failed else 3
        return next((r.exit_code for r in self.rows if r.status == "ERROR"), 0)

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "exit_code": self.exit_code, "report": self.report.to_dict(),
                "settings": self.settings.to_dict(), "models": [r.to_dict() for r in self.rows]}


def run_pipeline(
    checkpoints: Sequence[str | Path] | None = None,
    *,
    output_dir: str | Path,
    data: str | None = None,
    calib_data: str | None = None,
    engine: str = "ort",
    target: str | None = None,
    max_drop: float | None = None,
    min_sqnr: float | None = None,
    min_agreement: float | None = None,
    calib_samples: int = defaults.CALIB_SAMPLES,
    calib_method: str | None = None,
    bench_batch: int = 1,
    threads: int | None = None,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    eval_limit: int | None = None,
    max_duration: float = DEFAULT_MAX_DURATION_S,
    bench_sessions: int = DEFAULT_BENCH_SESSIONS,
    qat: bool = False,
    qat_epochs: int = 2,
    qat_lr: float | None = None,
    train_data: str | None = None,
    zoo: str | None = None,
    load_kwargs: dict | None = None,
    command: str | None = None,
    allow_mismatch: bool = False,
    fallback_float: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: int | None = None,
    force: bool = False,
    device: str = "auto",
) -> PipelineResult:
    """Run every checkpoint (or the built-in zoo when none is given) end to end and write the report.

    Each run directory is staged and swapped in whole (rundir.OutputSet); an existing one must be
    repdeploy's (its manifest lists every file) unless `force`, and no output may be an input.

    >>> result = run_pipeline(["a.pth", "b.pth"], data="val/", output_dir="runs/x", max_drop=1.0)  # doctest: +SKIP
    >>> result.exit_code                                                                          # doctest: +SKIP
    0
    """
    from ..io import ensure_writable_dir
    from ..report import write_report

    if engine not in ("ort", "trt"):
        raise InputError(f"pipeline engine {engine!r}: choose ort or trt (torch is for `repdeploy bench`)")
    target = target or ("tensorrt" if engine == "trt" else "ort")
    if target not in ("ort", "tensorrt"):
        raise InputError(f"INT8 target {target!r}: choose ort or tensorrt")
    if engine == "trt" and target == "ort":
        raise InputError("--engine trt with --target ort: the ort INT8 layout (uint8 activations) is not a TensorRT "
                         "explicit-quantization graph; use --target tensorrt")
    from .. import validate

    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]  # one path, not a sequence of its characters
    # Every option is checked before the first model starts, not after four stages.
    validate.max_drop("--max-drop", max_drop)
    from ..quant.ptq_report import check_fidelity_bounds

    check_fidelity_bounds(min_sqnr, min_agreement)
    validate.bench_options(batch=bench_batch, warmup=warmup, duration=duration, iterations=iterations,
                           threads_=threads)
    validate.number("--max-duration", max_duration, low=0.0, high=validate.MAX_SECONDS, allow_none=False)
    validate.integer("--sessions", bench_sessions, low=1, high=100, allow_none=False)
    validate.integer("--calib-samples", calib_samples, low=1, allow_none=False)
    validate.integer("--eval-limit", eval_limit, low=1)
    validate.integer("--qat-epochs", qat_epochs, low=1, allow_none=False)
    validate.number("--qat-lr", qat_lr, low=0.0, low_open=True)
    if checkpoints and zoo is not None:
        raise InputError(f"--zoo {zoo} with checkpoints: --zoo picks the built-in models run when no checkpoint is "
                         "given; drop one of them")
    validate.integer("--resize", resize, low=1)
    if fallback_float and max_drop is None:
        raise InputError("--fallback-float needs --max-drop: the drop it leaves layers in float to meet")
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()  # exit 4 before anything is written
    if engine == "ort" and target == "tensorrt":
        warnings.warn("the tensorrt INT8 layout is not meant for ONNX Runtime: its ORT latency is no guide to "
                      "TensorRT's (it runs slower than FP32 on ORT CPU); use --engine trt on a GPU machine",
                      stacklevel=2)

    settings = PipelineSettings(
        data=data or BUILTIN_DATA, calib_data=calib_data, calib_samples=calib_samples,
        calib_method=calib_method or defaults.CALIB_METHOD,  # the report names the method used, never None
        engine=engine, target=target, max_drop=max_drop, min_sqnr=min_sqnr, min_agreement=min_agreement, bench_batch=bench_batch, threads=threads, warmup=warmup,
        duration=duration, iterations=iterations, max_duration=max_duration, bench_sessions=bench_sessions,
        eval_limit=eval_limit, qat=qat,
        qat_epochs=qat_epochs, qat_lr=qat_lr, train_data=train_data, device=device, allow_mismatch=allow_mismatch,
        fallback_float=fallback_float,
        mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None, resize=resize,
    )
    if checkpoints:
        jobs = [(Path(c), None, None, Path(c).name) for c in checkpoints]
    else:
        jobs = [(e.file, e.arch, e.input_size, e.name) for e in builtin_zoo(zoo or "default")]
    names = _unique_names([name for *_, name in jobs])
    out = Path(output_dir)
    inputs = [path for path, *_ in jobs] + [data, calib_data, train_data]
    refuse_overwriting_inputs(inputs, files=[out / f"report.{ext}" for ext in REPORT_EXTENSIONS],
                              directories=[out / name for name in names])
    for name in names:
        check_owned(out / name, force=force)
    created = not out.exists()
    out = ensure_writable_dir(output_dir)
    try:
        clean_stale_scratch(out)
        _clear_previous_report(out)
        command = command or " ".join(["repdeploy", *sys.argv[1:]])

        rows: list[ModelRow] = []
        for i, ((path, arch, input_size, _), name) in enumerate(zip(jobs, names), 1):
            status(f"[{i}/{len(jobs)}] {name}")
            kwargs = dict(load_kwargs or {})
            if arch and not kwargs.get("arch"):
                kwargs["arch"] = arch
            rows.append(_run_one(path, name, out / name, settings, kwargs, input_size, command, force))

        from ..machine import environment

        try:
            report = write_report([r.to_dict() for r in rows], out, settings=settings.to_dict(),
                                  environment=environment(), title="repdeploy pipeline report")
        except BaseException:
            for ext in REPORT_EXTENSIONS:  # half a report set (a full disk) would mislead: none at all
                (out / f"report.{ext}").unlink(missing_ok=True)
            raise
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: a run that wrote nothing leaves no directory
        raise
    return PipelineResult(out, rows, report, settings)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", n.removesuffix(".tar")).strip("._") or "model"
        for suffix in (".pth", ".pt", ".safetensors", ".bin", ".ckpt"):
            base = base.removesuffix(suffix)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _run_one(path: Path, name: str, run_dir: Path, s: PipelineSettings, load_kwargs: dict,
             input_size: int | None, command: str, force: bool = False) -> ModelRow:
    from ..io import sha256_file

    try:
        output_set = OutputSet(run_dir, force=force)
    except RepDeployError as exc:  # the run directory itself could not be made
        return ModelRow(name=name, checkpoint=str(path), run_dir=str(run_dir), failed_stage="setup", error=str(exc),
                        exit_code=exc.exit_code)
    try:
        job = ModelJob(name=name, checkpoint=path, run_dir=output_set.staging, final_dir=run_dir,
                       load_kwargs=load_kwargs, input_size=input_size,
                       sha256=sha256_file(path) if path.is_file() else None)
        row = _run_staged(job, s, command)
        output_set.commit()
    except BaseException:
        output_set.discard()  # Ctrl-C or a full disk: the previous run directory stays as it was
        raise
    return row


@contextlib.contextmanager
def _stage(label: str, name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time one stage and turn whatever it raises into a StageFailure naming it."""
    status(f"  {name}: {label}")
    start = time.perf_counter()
    try:
        yield
    except RepDeployError as exc:
        raise StageFailure(label, exc) from exc
    except Exception as exc:  # noqa: BLE001 - one model's crash must not stop the others
        raise StageFailure(label, RepDeployError(f"{type(exc).__name__}: {exc}")) from exc
    finally:
        timings[label] = round(time.perf_counter() - start, 3)


def _run_staged(job: ModelJob, s: PipelineSettings, command: str) -> ModelRow:
    """One model's stages in order, each fed the records of the ones before; then its row,
    report.json and manifest.json, all in the staging directory `job.run_dir`."""
    from ..io import write_json_atomic

    timings: dict[str, float] = {}
    fused = prepared = exported = quantized = built = evaluated = timed = tuned = None
    failure = None
    try:
        with _stage("load", job.name, timings):
            fused = load_checkpoint(job)
            prepared = open_evaluation_data(job, fused, s)
            check_labels(job, fused, prepared, s)
        with _stage("export", job.name, timings):
            exported = export_fp32(job, fused, prepared)
        with _stage("quantize", job.name, timings):
            quantized = quantize_int8(job, fused, prepared, s)
        if s.engine == "trt":
            with _stage("tensorrt", job.name, timings):
                built = build_tensorrt(exported, quantized)
        with _stage("evaluate", job.name, timings):
            evaluated = evaluate_pair(job, prepared, exported, quantized, built, s)
        with _stage("benchmark", job.name, timings):
            timed = benchmark_pair(job, exported, quantized, built, s)
        if s.qat:
            with _stage("qat", job.name, timings):
                tuned = finetune_qat(job, fused, prepared, quantized, s)
    except StageFailure as exc:
        failure = exc
        status(f"  {job.name}: ERROR at {exc.stage}: {exc.error}")
    artifacts = sorted(p.name for p in job.run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    row = assemble_row(job, s, fused=fused, prepared=prepared, quantized=quantized, evaluated=evaluated, timed=timed,
                       tuned=tuned, failure=failure, timings=timings, artifacts=artifacts)
    record = row.to_dict()
    if quantized is not None:
        record["ptq"] = quantized.report
    write_json_atomic(job.run_dir / "report.json", record)
    write_json_atomic(job.run_dir / "manifest.json", _manifest(job, s, command, fused, row))
    return row


def _manifest(job: ModelJob, s: PipelineSettings, command: str, fused: Fused | None, row: ModelRow) -> dict:
    """tool version, command, input sha256, detected arch, settings, status, timings, and every file."""
    manifest: dict[str, Any] = {"tool": "repdeploy", "command": command, "input": {"path": str(job.checkpoint)},
                                "settings": s.to_dict(), "version": __version__}
    if job.sha256 is not None:
        manifest["input"]["sha256"] = job.sha256
    if fused is not None:
        manifest.update(detected=fused.detected, input_size=fused.input_size)
    manifest["status"] = {"status": row.status, "failed_stage": row.failed_stage, "error": row.error}
    manifest["timings"] = row.timings
    manifest["artifacts"] = sorted([*row.artifacts, "report.json", "manifest.json"])
    return manifest


def _clear_previous_report(out: Path) -> None:
    """Remove the previous top-level report set, if repdeploy wrote it, so an interrupted run never
    leaves an old table beside new run directories. A report.json that is not repdeploy's is kept."""
    import json

    try:
        doc = json.loads((out / "report.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return
    if isinstance(doc, dict) and doc.get("tool") == "repdeploy" and isinstance(doc.get("models"), list):
        for ext in REPORT_EXTENSIONS:
            if (out / f"report.{ext}").exists():
                (out / f"report.{ext}").unlink()
                note_removed(out / f"report.{ext}")

