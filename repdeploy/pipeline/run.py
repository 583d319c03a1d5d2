"""The per-model driver and the run over all models: check every option, stage each model's run
directory, run its stages in order (repdeploy/pipeline/stages.py), assemble and write its row,
then write one report over all models.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .. import defaults
from ..errors import InputError, RepDeployError
from ..progress import status
from ..rundir import (REPORT_SET, OutputSet, check_owned, clean_stale_scratch, commit_files, make_scratch_dir,
                      read_manifest, refuse_foreign_outputs, refuse_overwriting_inputs)
from ..version import __version__
from ..zoo import builtin_zoo
from .records import Fused, ModelJob, StageFailure
from .row import ModelRow, assemble_row
from .settings import (BUILTIN_DATA, DEFAULT_BENCH_SESSIONS, DEFAULT_DURATION_S, DEFAULT_ITERATIONS,
                       DEFAULT_MAX_DURATION_S, DEFAULT_WARMUP_S, PipelineSettings)
from .stages import (benchmark_pair, build_tensorrt, check_labels, evaluate_pair, export_fp32, finetune_qat,
                     load_checkpoint, open_evaluation_data, quantize_int8)

REPORT_EXTENSIONS = REPORT_SET
#: What a run directory may hold (names and patterns): with --force, a foreign file matching one is
#: refused up front, since the run would replace it.
RUN_DIR_OUTPUTS = ("fused.pt", "calib.json", "report.json", "manifest.json", "model_*.onnx", "model_*.engine",
                   "qat_*")
#: QAT epochs beyond this are a typo (the pipeline's QAT column is a short fine-tune).
MAX_QAT_EPOCHS = 1000


@dataclass
class PipelineResult:
    output_dir: Path
    rows: list[ModelRow]
    report: Any  # report.ReportPaths
    settings: PipelineSettings
    triton: Any = None  # triton.Repository of the models that passed, with --triton-repo

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
                "settings": self.settings.to_dict(), "models": [r.to_dict() for r in self.rows],
                "triton": self.triton.to_dict() if self.triton is not None else None}


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
    calib_method: str | None = defaults.CALIB_METHOD,
    bench_batch: int = 1,
    threads: int | None = None,
    warmup: float = DEFAULT_WARMUP_S,
    duration: float = DEFAULT_DURATION_S,
    iterations: int = DEFAULT_ITERATIONS,
    eval_limit: int | None = None,
    max_duration: float = DEFAULT_MAX_DURATION_S,
    bench_sessions: int = DEFAULT_BENCH_SESSIONS,
    qat: bool = False,
    qat_epochs: int = defaults.QAT_EPOCHS,
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
    device: str = defaults.DEVICE,
    input_size: int | None = None,
    diagnostics: str = defaults.DIAGNOSTICS,
    seed: int = defaults.SEED,
    triton_repo: str | Path | None = None,
    labels: str | Path | None = None,
    input_format: str = "float",
) -> PipelineResult:
    """Run every checkpoint (or the built-in zoo when none is given) end to end and write the report.

    Each run directory is staged and swapped in whole (rundir.OutputSet); an existing one must be
    repdeploy's (its manifest lists every file) unless `force`, and no output may be an input.
    With `triton_repo`, the INT8 models that passed are packaged there as a Triton model repository
    (repdeploy/triton/, docs/triton.md) after the report.
    `labels` (a file, one class name per line) names the classes in every ONNX's metadata;
    `input_format` "uint8-nhwc"/"uint8-nchw" also writes the INT8 model that normalises uint8
    pixels in its graph (docs/serving.md), judged like every other hand-off.

    >>> result = run_pipeline(["a.pth", "b.pth"], data="val/", output_dir="runs/x", max_drop=1.0)  # doctest: +SKIP
    >>> result.exit_code                                                                          # doctest: +SKIP
    0
    """
    from ..io import ensure_writable_dir

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
    validate.integer("--qat-epochs", qat_epochs, low=1, high=MAX_QAT_EPOCHS, allow_none=False)
    validate.number("--qat-lr", qat_lr, low=0.0, low_open=True)
    if checkpoints and zoo is not None:
        raise InputError(f"--zoo {zoo} with checkpoints: --zoo picks the built-in models run when no checkpoint is "
                         "given; drop one of them")
    validate.resize("--resize", resize)
    validate.input_size("--input-size", input_size)
    validate.seed("--seed", seed)
    from ..quant.diagnostics import check_mode

    check_mode(diagnostics)
    if fallback_float and max_drop is None:
        raise InputError("--fallback-float needs --max-drop: the drop it leaves layers in float to meet")
    if labels is not None:
        from ..metadata import read_labels

        read_labels(labels)  # an unreadable or empty file is refused before the first model starts
    from ..ingraph import check_input_format

    check_input_format(input_format)
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
        fallback_float=fallback_float, input_size=input_size, diagnostics=diagnostics, seed=seed,
        mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None, resize=resize,
        labels=str(labels) if labels is not None else None, input_format=input_format,
    )
    if checkpoints:
        jobs = [(Path(c), None, input_size, Path(c).name) for c in checkpoints]
    else:
        jobs = [(e.file, e.arch, input_size or e.input_size, e.name) for e in builtin_zoo(zoo or "default")]
    names = _unique_names([name for *_, name in jobs])
    out = Path(output_dir)
    inputs = [path for path, *_ in jobs] + [data, calib_data, train_data]
    report_names = [f"report.{ext}" for ext in REPORT_EXTENSIONS]
    refuse_overwriting_inputs(inputs, files=[out / n for n in report_names],
                              directories=[out / name for name in names])
    if triton_repo is not None and Path(triton_repo).resolve() == out.resolve():
        raise InputError(f"--triton-repo {triton_repo} is the output directory, whose run directories have the "
                         "models' names; give the repository its own folder (e.g. OUTPUT/triton)")
    refuse_foreign_outputs(out, report_names)  # the user's own report.md is never replaced, --force or not
    for name in names:
        check_owned(out / name, force=force, outputs=RUN_DIR_OUTPUTS)
    created = not out.exists()
    out = ensure_writable_dir(output_dir)
    try:
        clean_stale_scratch(out)
        command = command or " ".join(["repdeploy", *sys.argv[1:]])

        rows: list[ModelRow] = []
        for i, ((path, arch, input_size, _), name) in enumerate(zip(jobs, names), 1):
            status(f"[{i}/{len(jobs)}] {name}")
            kwargs = dict(load_kwargs or {})
            if arch and not kwargs.get("arch"):
                kwargs["arch"] = arch
            rows.append(_run_one(path, name, out / name, settings, kwargs, input_size, command, force))

        from ..bench import environment

        report = _commit_report(rows, out, settings, environment())
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: a run that wrote nothing leaves no directory
        raise
    triton = _package_passed(rows, triton_repo, target, force) if triton_repo is not None else None
    return PipelineResult(out, rows, report, settings, triton)


def _package_passed(rows: list[ModelRow], repo: str | Path, target: str, force: bool) -> Any:
    """The INT8 ONNX of every model that passed, as a Triton repository: the ort layout on CPU
    instances, the tensorrt layout on GPU instances through ORT's TensorRT accelerator."""
    from ..triton import ModelSource, package_models

    passed = [ModelSource(Path(r.run_dir) / f"model_int8_{target}.onnx", r.name) for r in rows if r.status == "PASSED"]
    if not passed:
        status("no model passed: no Triton repository written")
        return None
    gpu = target == "tensorrt"
    return package_models(passed, repo, kind="gpu" if gpu else "cpu", tensorrt_accelerator=gpu, force=force)


def _commit_report(rows: list[ModelRow], out: Path, settings: PipelineSettings, env: dict):
    """Write the top-level report set in a scratch directory and commit it as one set
    (rundir.commit_files, report.json last): a kill leaves the old set or the new one, never a mix."""
    from ..report import ReportPaths, write_report

    stage = make_scratch_dir(out, "report", "staging")
    try:
        write_report([r.to_dict() for r in rows], stage, settings=settings.to_dict(), environment=env,
                     title="repdeploy pipeline report")
        commit_files(stage, out, [f"report.{ext}" for ext in ("csv", "md", "html", "json")])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ReportPaths(*(out / f"report.{ext}" for ext in ("json", "csv", "md", "html")))


#: Names a run directory must not take: the top-level report set lives beside the run directories.
_RESERVED = {f"report.{ext}" for ext in REPORT_EXTENSIONS} | {"manifest.json"}


def _unique_names(names: list[str]) -> list[str]:
    """One run-directory name per checkpoint: the file name without its suffix, made unique over the
    whole list (x/a.pth, y/a.pth and a-2.pth get a, a-2 and a-2-2), never a report file's name."""
    bases = []
    for n in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", n.removesuffix(".tar")).strip("._") or "model"
        for suffix in (".pth", ".pt", ".safetensors", ".bin", ".ckpt"):
            base = base.removesuffix(suffix)
        bases.append(base.strip("._") or "model")
    taken = set(_RESERVED) | {b for b in bases if bases.count(b) == 1}
    first: set[str] = set()
    out = []
    for base in bases:
        if base not in _RESERVED and (bases.count(base) == 1 or base not in first):
            first.add(base)
            taken.add(base)
            out.append(base)
            continue
        k = 2
        while f"{base}-{k}" in taken:
            k += 1
        taken.add(f"{base}-{k}")
        out.append(f"{base}-{k}")
    return out


def _run_one(path: Path, name: str, run_dir: Path, s: PipelineSettings, load_kwargs: dict,
             input_size: int | None, command: str, force: bool = False) -> ModelRow:
    from ..io import sha256_file

    try:
        output_set = OutputSet(run_dir, force=force, outputs=RUN_DIR_OUTPUTS)
    except RepDeployError as exc:  # the run directory itself could not be made
        return ModelRow(name=name, checkpoint=str(path), run_dir=str(run_dir), failed_stage="setup", error=str(exc),
                        exit_code=exc.exit_code)
    try:
        job = ModelJob(name=name, checkpoint=path, run_dir=output_set.staging, final_dir=run_dir,
                       load_kwargs=load_kwargs, input_size=input_size,
                       sha256=sha256_file(path) if path.is_file() else None)
        row = _run_staged(job, s, command)
        previous = read_manifest(run_dir)
        if row.status == "ERROR" and previous and previous.get("status", {}).get("status") != "ERROR":
            # A failed attempt never replaces a complete run: the old results stay, and the row says so.
            output_set.discard()
            row.error = (f"{row.error}; the previous results in {run_dir} were kept (this attempt's partial outputs "
                         "were discarded)")
            return row
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
        # The command line's boundary words it: a full disk or a refused path reads the same in a row.
        from ..failures import describe_failure

        message, code = describe_failure(exc)
        error = RepDeployError(message)
        error.exit_code = code
        raise StageFailure(label, error) from exc
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
