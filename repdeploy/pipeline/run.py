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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import InputError, RepDeployError
from ..progress import status
from ..rundir import (REPORT_SET, OutputSet, check_owned, clean_stale_scratch, commit_files, make_scratch_dir,
                      read_manifest, refuse_foreign_outputs, refuse_overwriting_inputs)
from ..version import __version__
from ..zoo import builtin_zoo
from .records import Fused, ModelJob, StageFailure
from .row import ModelRow, assemble_row
from .settings import PipelineSettings, checked
from .stages import (benchmark_pair, build_tensorrt, check_labels, evaluate_pair, export_fp32, finetune_qat,
                     load_checkpoint, open_evaluation_data, quantize_int8)

REPORT_EXTENSIONS = REPORT_SET
#: What a run directory may hold (names and patterns): with --force, a foreign file matching one is
#: refused up front, since the run would replace it.
RUN_DIR_OUTPUTS = ("fused.pt", "calib.json", "report.json", "manifest.json", "model_*.onnx", "model_*.engine",
                   "qat_*")


@dataclass
class PipelineResult:
    output_dir: Path
    rows: list[ModelRow]
    report: Any  # report.ReportPaths
    settings: PipelineSettings
    triton: Any = None  # triton.Repository of the models that passed, with --triton-repo

    @property
    def status(self) -> str:
        """FAILED when a model failed a verdict or a gate, else ERROR when one stopped at a stage,
        else PASSED (KEPT rows count as passed: --allow-mismatch kept them). The command line turns
        the rows into an exit code (cli/outcome.py)."""
        statuses = {r.status for r in self.rows}
        return next((word for word in ("FAILED", "ERROR") if word in statuses), "PASSED")

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "status": self.status, "report": self.report.to_dict(),
                "settings": self.settings.to_dict(), "models": [r.to_dict() for r in self.rows],
                "triton": self.triton.to_dict() if self.triton is not None else None}


def run_pipeline(checkpoints: Sequence[str | Path] | str | Path | None = None,
                 settings: PipelineSettings | None = None, *, output_dir: str | Path, zoo: str | None = None,
                 force: bool = False, triton_repo: str | Path | None = None, command: str | None = None,
                 **options: Any) -> PipelineResult:
    """Run every checkpoint (or the built-in zoo `zoo` when none is given) end to end and write the report.

    `settings` holds every option of the run (PipelineSettings); any of its fields may be given as
    a keyword instead, over it. Each run directory is staged and swapped in whole
    (rundir.OutputSet); an existing one must be repdeploy's (its manifest lists every file) unless
    `force`, and no output may be an input. With `triton_repo`, the INT8 models that passed are
    packaged there as a Triton model repository (repdeploy/triton/, docs/triton.md) after the
    report. `command` is what the manifests record as the command line (default: sys.argv).
    A model that fails is a row of the result, never an exception: the result's rows carry each
    status, and the caller (the CLI) turns them into an exit code.

    >>> result = run_pipeline(["a.pth", "b.pth"], data="val/", output_dir="runs/x", max_drop=1.0)  # doctest: +SKIP
    >>> [row.status for row in result.rows]                                                       # doctest: +SKIP
    ['PASSED', 'FAILED']
    """
    from ..io import ensure_writable_dir
    from ..validate import with_options

    s = checked(with_options(PipelineSettings, settings, options, "run_pipeline"))
    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]  # one path, not a sequence of its characters
    if checkpoints and zoo is not None:
        raise InputError(f"--zoo {zoo} with checkpoints: --zoo picks the built-in models run when no checkpoint is "
                         "given; drop one of them")
    jobs = _jobs(checkpoints, zoo, s)
    names = _unique_names([name for *_, name in jobs])
    out = Path(output_dir)
    inputs = [path for path, *_ in jobs] + [s.data, s.calib_data, s.train_data]
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
        for i, ((path, load_kwargs, input_size, _), name) in enumerate(zip(jobs, names), 1):
            status(f"[{i}/{len(jobs)}] {name}")
            rows.append(_run_one(path, name, out / name, s, load_kwargs, input_size, command, force))

        from ..bench import environment

        report = _commit_report(rows, out, s, environment())
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: a run that wrote nothing leaves no directory
        raise
    triton = _package_passed(rows, triton_repo, s.target, force) if triton_repo is not None else None
    return PipelineResult(out, rows, report, s, triton)


def _jobs(checkpoints, zoo: str | None, s: PipelineSettings) -> list[tuple[Path, dict, int | None, str]]:
    """(checkpoint, load options, input size, name) of each model: the checkpoints given at
    --input-size, else the zoo's entries, each at --input-size or its own size and as its own variant."""
    if checkpoints:
        return [(Path(c), dict(s.load_kwargs), s.input_size, Path(c).name) for c in checkpoints]
    return [(e.file, {"arch": e.arch, **s.load_kwargs} if not s.load_kwargs.get("arch") else dict(s.load_kwargs),
             s.input_size or e.input_size, e.name) for e in builtin_zoo(zoo or "default")]


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
