"""The end-to-end job: for each checkpoint, load+fuse+verify, export FP32, quantize INT8,
evaluate both, benchmark both, and write one row; then one report over all models.

Each model gets its own run directory (shared/design.md):

    <out>/<model>/manifest.json   tool version, command, input sha256, detected arch, settings, timings
                  fused.pt  model_fp32.onnx  model_int8_<target>.onnx  calib.json  report.json
    <out>/report.{json,csv,md,html}

A model that fails a stage is recorded as ERROR with the stage and the message, and the next
model still runs. Every numeric hand-off has a verdict (repdeploy/verify.py: fusion, ORT FP32 vs
torch, ORT INT8 vs torch fake-quant, TensorRT vs ORT); a failed one makes the model FAILED with
the reason and exit code 1, unless `allow_mismatch`, which the row then records. With
`max_drop`, a model whose INT8 top-1 drop exceeds it is FAILED with exit code 3. The caller
exits with that code after everything is written.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import defaults
from .errors import DataError, InputError, RepDeployError
from .progress import status
from .rundir import OutputSet, check_owned, clean_stale_scratch, make_scratch_dir, refuse_overwriting_inputs
from .zoo import builtin_zoo

STAGES = ("load", "export", "quantize", "evaluate", "benchmark")
BUILTIN_DATA = "builtin"

# Short defaults: `make demo` runs 2-4 small models end to end in a few minutes on 2 cores.
# Serious latency numbers come from `repdeploy bench` with longer --duration.
DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS
DEFAULT_MAX_DURATION_S = defaults.BENCH_MAX_DURATION_S
DEFAULT_BENCH_SESSIONS = defaults.BENCH_SESSIONS


@dataclass
class PipelineSettings:
    data: str = BUILTIN_DATA
    calib_data: str | None = None
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_method: str | None = None  # None: the PTQ default for the family
    engine: str = "ort"
    target: str = "ort"
    max_drop: float | None = None
    bench_batch: int = 1
    threads: int | None = None
    warmup: float = DEFAULT_WARMUP_S
    duration: float = DEFAULT_DURATION_S
    iterations: int = DEFAULT_ITERATIONS
    max_duration: float = DEFAULT_MAX_DURATION_S
    bench_sessions: int = DEFAULT_BENCH_SESSIONS
    eval_limit: int | None = None
    seed: int = 0
    qat: bool = False  # add a QAT column: fine-tune from the PTQ ranges, evaluate its INT8 model
    qat_epochs: int = 2
    qat_lr: float | None = None  # None: qat's default (sgd 0.01)
    train_data: str | None = None  # QAT training images; default: the train split of --data
    allow_mismatch: bool = False  # keep models whose verification failed (recorded per row)
    fallback_float: bool = False  # with max_drop: leave the most sensitive layers in float
    mean: tuple[float, ...] | None = None  # preprocessing overrides (None: the model's record or the data's)
    std: tuple[float, ...] | None = None
    resize: int | None = None
    device: str = "auto"  # where torch steps (calibration, verification, QAT) run

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelRow:
    """One model's outcome; `to_dict()` is the record report.py renders."""

    name: str
    checkpoint: str
    run_dir: str
    status: str = "ERROR"  # PASSED | FAILED (a verdict or the accuracy gate) | ERROR (a stage raised)
    failed_stage: str | None = None
    error: str | None = None
    exit_code: int = 0
    arch: str | None = None
    family: str | None = None
    num_classes: int | None = None
    engine: str = "ort"
    target: str = "ort"
    bench_batch: int = 1
    threads: int | None = None
    fp32_top1: float | None = None
    fp32_top5: float | None = None
    int8_top1: float | None = None
    int8_top5: float | None = None
    top1_drop: float | None = None
    top1_agreement: float | None = None  # percent of val images where FP32 and INT8 agree
    sqnr_db: float | None = None  # INT8 logits vs FP32 logits
    fp32_ms: float | None = None  # median latency at bench_batch
    int8_ms: float | None = None
    speedup: float | None = None  # fp32_ms / int8_ms
    fp32_ms_ci: list | None = None  # bootstrap 95 % interval of the median [low, high]
    int8_ms_ci: list | None = None
    speedup_ci: list | None = None  # 95 % interval of the speed-up over sessions and interleaved rounds
    speedup_sessions: list | None = None  # the speed-up of each fresh session on its own
    latency_noisy: bool | None = None  # an interval above is wider than +-5 %
    qat_top1: float | None = None  # INT8 top-1 after QAT (with --qat)
    qat_drop: float | None = None
    eval_images: int | None = None  # how many images the accuracies above were measured on
    parity: str | None = None  # ok | MISMATCH (checks) [allowed]: the verdicts in one cell
    verdicts: list = field(default_factory=list)  # verify.Verdict records, one per numeric hand-off
    warnings: list = field(default_factory=list)  # sanity warnings shown beside the figures
    allow_mismatch: bool = False
    preprocessing: dict | None = None  # the record the model is fed with (preprocess.Preprocessing)
    fusion: dict | None = None
    calibration: dict | None = None
    diagnostics: dict | None = None
    bench: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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


class _StageError(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.stage, self.error = stage, error


def run_pipeline(
    checkpoints: Sequence[str | Path] | None = None,
    *,
    output_dir: str | Path,
    data: str | None = None,
    calib_data: str | None = None,
    engine: str = "ort",
    target: str | None = None,
    max_drop: float | None = None,
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
    from .io import ensure_writable_dir
    from .report import write_report

    if engine not in ("ort", "trt"):
        raise InputError(f"pipeline engine {engine!r}: choose ort or trt (torch is for `repdeploy bench`)")
    target = target or ("tensorrt" if engine == "trt" else "ort")
    if target not in ("ort", "tensorrt"):
        raise InputError(f"INT8 target {target!r}: choose ort or tensorrt")
    if engine == "trt" and target == "ort":
        raise InputError("--engine trt with --target ort: the ort INT8 layout (uint8 activations) is not a TensorRT "
                         "explicit-quantization graph; use --target tensorrt")
    from . import validate

    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]  # one path, not a sequence of its characters
    # Every option is checked before the first model starts, not after four stages.
    validate.max_drop("--max-drop", max_drop)
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
        from .export.tensorrt import import_tensorrt

        import_tensorrt()  # exit 4 before anything is written
    if engine == "ort" and target == "tensorrt":
        warnings.warn("the tensorrt INT8 layout is not meant for ONNX Runtime: its ORT latency is no guide to "
                      "TensorRT's (it runs slower than FP32 on ORT CPU); use --engine trt on a GPU machine",
                      stacklevel=2)

    settings = PipelineSettings(
        data=data or BUILTIN_DATA, calib_data=calib_data, calib_samples=calib_samples,
        calib_method=calib_method or defaults.CALIB_METHOD,  # the report names the method used, never None
        engine=engine, target=target, max_drop=max_drop, bench_batch=bench_batch, threads=threads, warmup=warmup,
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

        from .bench import environment

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
    try:
        output_set = OutputSet(run_dir, force=force)
    except RepDeployError as exc:  # the run directory itself could not be made
        return ModelRow(name=name, checkpoint=str(path), run_dir=str(run_dir), failed_stage="setup", error=str(exc),
                        exit_code=exc.exit_code)
    try:
        row = _run_staged(path, name, run_dir, output_set.staging, s, load_kwargs, input_size, command)
        output_set.commit()
    except BaseException:
        output_set.discard()  # Ctrl-C or a full disk: the previous run directory stays as it was
        raise
    return row


def _run_staged(path: Path, name: str, final_dir: Path, run_dir: Path, s: PipelineSettings, load_kwargs: dict,
                input_size: int | None, command: str) -> ModelRow:
    """One model's run, written into the staging directory `run_dir` (renamed to `final_dir` after)."""
    from .io import sha256_file, write_json_atomic

    row = ModelRow(name=name, checkpoint=str(path), run_dir=str(final_dir), engine=s.engine, target=s.target,
                   bench_batch=s.bench_batch, threads=s.threads, allow_mismatch=s.allow_mismatch)
    manifest: dict[str, Any] = {"tool": "repdeploy", "command": command, "input": {"path": str(path)},
                                "settings": s.to_dict()}
    from .version import __version__

    manifest["version"] = __version__
    state: dict[str, Any] = {}

    def stage(label: str, fn: Callable[[], Any]) -> Any:
        status(f"  {name}: {label}")
        start = time.perf_counter()
        try:
            return fn()
        except RepDeployError as exc:
            raise _StageError(label, exc) from exc
        except Exception as exc:  # noqa: BLE001 - one model's crash must not stop the others
            raise _StageError(label, RepDeployError(f"{type(exc).__name__}: {exc}")) from exc
        finally:
            row.timings[label] = round(time.perf_counter() - start, 3)

    try:
        if path.is_file():
            manifest["input"]["sha256"] = sha256_file(path)
        stage("load", lambda: _load(path, run_dir, s, load_kwargs, input_size, row, state, manifest))
        stage("export", lambda: _export(run_dir, row, state))
        stage("quantize", lambda: _quantize(run_dir, s, row, state))
        stage("evaluate", lambda: _evaluate(s, row, state))
        stage("benchmark", lambda: _benchmark(s, row, state))
        if s.qat:
            stage("qat", lambda: _qat(path, run_dir, s, row, state, load_kwargs))
        _gate(row, s)
    except _StageError as failure:
        row.status, row.failed_stage = "ERROR", failure.stage
        row.error = str(failure.error)
        row.exit_code = getattr(failure.error, "exit_code", 1)
        status(f"  {name}: ERROR at {failure.stage}: {row.error}")
    finally:
        for r in state.get("runners", []):
            r.deactivate()
    row.artifacts = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    manifest["status"] = {"status": row.status, "failed_stage": row.failed_stage, "error": row.error}
    manifest["timings"] = row.timings
    record = row.to_dict()
    if state.get("ptq_report") is not None:
        record["ptq"] = state["ptq_report"]
    write_json_atomic(run_dir / "report.json", record)
    manifest["artifacts"] = sorted([*row.artifacts, "report.json", "manifest.json"])
    write_json_atomic(run_dir / "manifest.json", manifest)
    return row


REPORT_EXTENSIONS = ("json", "csv", "md", "html")


def _clear_previous_report(out: Path) -> None:
    """Remove the previous top-level report set, if repdeploy wrote it, so an interrupted run never
    leaves an old table beside new run directories. A report.json that is not repdeploy's is kept."""
    import json

    try:
        doc = json.loads((out / "report.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return
    if isinstance(doc, dict) and doc.get("tool") == "repdeploy" and isinstance(doc.get("models"), list):
        from .rundir import note_removed

        for ext in REPORT_EXTENSIONS:
            if (out / f"report.{ext}").exists():
                (out / f"report.{ext}").unlink()
                note_removed(out / f"report.{ext}")


def _load(path: Path, run_dir: Path, s: PipelineSettings, load_kwargs: dict, input_size: int | None,
          row: ModelRow, state: dict, manifest: dict) -> None:
    from .checkpoints import load_fused, save_fused
    from .data import open_dataset
    from .preprocess import preprocessing_of

    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; check the path")
    plain, loaded, equivalence = load_fused(path, **load_kwargs)
    spec = plain.spec
    size = input_size or spec.input_size
    row.arch, row.family, row.num_classes = loaded.variant, loaded.family, spec.num_classes
    state["source_form"] = loaded.form
    row.fusion = equivalence.to_dict() if equivalence is not None else {"already_plain": True}
    manifest["detected"] = loaded.to_dict()
    manifest["input_size"] = size
    # A fused.pt written by repdeploy carries the preprocessing it was calibrated with: feed it so.
    val = open_dataset(s.data, split="val", image_size=size, channels=spec.in_channels, mean=s.mean, std=s.std,
                       resize=s.resize, preprocessing=preprocessing_of(path))
    row.preprocessing = val.preprocessing.to_dict()
    save_fused(plain, run_dir / "fused.pt", extra={"source": str(path), "source_sha256": manifest["input"].get("sha256"),
                                                   "equivalence": row.fusion, "preprocessing": row.preprocessing})
    if not val.has_labels:
        raise DataError(f"data {s.data} has no labels; the pipeline needs labelled validation images (class folders)")
    if s.data == BUILTIN_DATA and spec.num_classes != val.num_classes:
        raise DataError(f"{path.name} predicts {spec.num_classes} classes, not the {val.num_classes} digits of the "
                        "built-in data; pass --data with the model's own labelled validation images")
    if val.num_classes and val.num_classes > spec.num_classes:
        raise DataError(f"data {s.data} has {val.num_classes} classes but {path.name} predicts {spec.num_classes}; "
                        "pass --data with the model's own validation images")
    state.update(plain=plain, spec=spec, input_size=size, val=val)


def _export(run_dir: Path, row: ModelRow, state: dict) -> None:
    from .export.onnx import export_onnx

    state["fp32_onnx"] = export_onnx(state["plain"], run_dir / "model_fp32.onnx", input_size=state["input_size"],
                                     in_channels=state["spec"].in_channels,
                                     preprocessing=state["val"].preprocessing)


def _has_train_split(source: str) -> bool:
    """Whether `source` holds a train split apart from its val split (a `train/` sub-folder, or
    `train_images` / `x_train` in an .npz), which is what calibration opens."""
    path = Path(source)
    if path.is_dir():
        return (path / "train").is_dir()
    if path.suffix == ".npz" and path.is_file():
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as archive:
                return bool({"train_images", "x_train"} & set(archive.files))
        except (OSError, ValueError):
            return False
    return False


def _calibration_source(s: PipelineSettings) -> tuple[str, bool]:
    """(source to calibrate on, whether those are the evaluation images themselves).

    --calib-data when given; else the train split of the evaluation source (the built-in data
    has one); else the evaluation images, which the report flags: calibrating on the test set
    flatters the INT8 accuracy."""
    if s.calib_data:
        return s.calib_data, False
    return s.data, not (s.data == BUILTIN_DATA or _has_train_split(s.data))


def _quantize(run_dir: Path, s: PipelineSettings, row: ModelRow, state: dict) -> None:
    import shutil

    from .quant.ptq import quantize

    source, on_eval_data = _calibration_source(s)
    if on_eval_data:
        status(f"  warning: calibrating on the evaluation data {s.data}: INT8 accuracy will look better than it is; "
               "pass --calib-data")
    # quantize() writes its own fused.pt/model_fp32.onnx/report.json; the pipeline already wrote
    # the first two and owns report.json, so it runs in a scratch directory and only the INT8
    # model and the calibration cache are moved into the run directory.
    scratch = make_scratch_dir(run_dir, "pipeline", "quantize")  # unique per process: runs never collide
    # quantize() judges its own hand-offs; the pipeline turns those verdicts into the row's status.
    kwargs: dict[str, Any] = {"output_dir": scratch, "calib_data": source, "calib_samples": s.calib_samples,
                              "target": s.target, "seed": s.seed, "device": s.device, "allow_mismatch": True,
                              "preprocessing": state["val"].preprocessing}
    if s.fallback_float:  # layers are chosen on a holdout of the calibration source, never on --data
        kwargs.update(fallback=True, max_drop=s.max_drop)
    if s.calib_method:
        kwargs["calib_method"] = s.calib_method
    try:
        result = quantize(state["plain"], **kwargs)
        int8 = run_dir / result.int8_onnx.name
        result.int8_onnx.replace(int8)
        result.calib_cache.replace(run_dir / "calib.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = dict(result.report)
    state["int8_onnx"], state["ptq_report"] = int8, report
    row.calibration = {"source": str(source), "on_eval_data": on_eval_data,
                       "method": report.get("calib_method"), "samples": report.get("calib_samples")}
    row.verdicts = list(report.get("verdicts") or [])
    if report.get("fallback"):
        row.calibration["fallback"] = report["fallback"]
    row.diagnostics = {"summary": report.get("layers_summary"), "layers": report.get("layers") or [],
                       "float_layers": report.get("float_layers")}


def _open(path: Path, s: PipelineSettings, state: dict, name: str):
    from .runtime import open_runner

    runner = open_runner(path, s.engine, threads=s.threads, workdir=path.parent, name=name).activate()
    state.setdefault("runners", []).append(runner)
    return runner


def _evaluate(s: PipelineSettings, row: ModelRow, state: dict) -> None:
    from .evaluate import evaluate, sqnr_db, top1_agreement

    fp32 = state["fp32_runner"] = _open(state["fp32_onnx"], s, state, f"{row.name} fp32")
    int8 = state["int8_runner"] = _open(state["int8_onnx"], s, state, f"{row.name} int8")
    a = evaluate(fp32, state["val"], limit=s.eval_limit, keep_logits=True)
    b = evaluate(int8, state["val"], limit=s.eval_limit, keep_logits=True)
    row.fp32_top1, row.fp32_top5, row.int8_top1, row.int8_top5 = a.top1, a.top5, b.top1, b.top5
    row.eval_images = a.images
    if s.engine != "ort":
        row.verdicts += _engine_verdicts(state, a.logits, b.logits)
    row.top1_drop = a.top1 - b.top1
    row.top1_agreement = 100.0 * top1_agreement(a.logits, b.logits)
    row.sqnr_db = sqnr_db(a.logits, b.logits)


def _engine_verdicts(state: dict, fp32_logits, int8_logits, images: int = 64) -> list[dict]:
    """TensorRT vs ONNX Runtime on the first evaluation images, FP32 and INT8 graphs alike."""
    import numpy as np

    from .export.onnx import ort_session
    from .verify import TRT_MIN_AGREEMENT, TRT_MIN_SQNR_DB, judge_logits

    x = np.concatenate([b.numpy() for b, _ in state["val"].batches(32, limit=images)])
    out = []
    for label, path, logits in (("fp32", state["fp32_onnx"], fp32_logits), ("int8", state["int8_onnx"], int8_logits)):
        session = ort_session(path)
        ref = session.run(None, {session.get_inputs()[0].name: x})[0]
        out.append(judge_logits(f"trt_{label}", ref, logits[: len(ref)], reference_name=f"ORT {label.upper()}",
                                  candidate_name=f"TensorRT {label.upper()}", min_sqnr_db=TRT_MIN_SQNR_DB,
                                  min_agreement=TRT_MIN_AGREEMENT).to_dict())
    return out


def _benchmark(s: PipelineSettings, row: ModelRow, state: dict) -> None:
    """FP32 and INT8 in interleaved rounds over fresh runtime sessions (bench.bench_sessions):
    medians with their intervals, and the speed-up as a ratio with an interval across sessions
    and rounds; noisy ones are flagged."""
    from .bench import bench_sessions
    from .runtime import open_runner

    def fresh_pair():
        return [open_runner(state[key], s.engine, threads=s.threads, workdir=Path(state[key]).parent,
                            name=f"{row.name} {label}")
                for key, label in (("fp32_onnx", "fp32"), ("int8_onnx", "int8"))]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, speedup = bench_sessions(
            fresh_pair, sessions=s.bench_sessions, batch=s.bench_batch, warmup=s.warmup,
            duration=s.duration, iterations=s.iterations, max_duration=s.max_duration, seed=s.seed)
    for w in caught:
        status(f"  warning: {w.message}")
    for label, r in zip(("fp32", "int8"), results):
        record = r.to_dict()
        record.pop("environment")  # once per report, not per row
        record["precision"] = label
        row.bench.append(record)
    fp32, int8 = (r.stats for r in results)
    row.fp32_ms, row.int8_ms = fp32.median_ms, int8.median_ms
    row.fp32_ms_ci = [fp32.median_ci_low_ms, fp32.median_ci_high_ms]
    row.int8_ms_ci = [int8.median_ci_low_ms, int8.median_ci_high_ms]
    row.speedup = speedup.ratio if row.int8_ms > 0 else None
    row.speedup_ci = [speedup.ci_low, speedup.ci_high]
    row.speedup_sessions = list(speedup.session_ratios)
    row.latency_noisy = bool(fp32.noisy or int8.noisy or speedup.noisy)


def _qat(path: Path, run_dir: Path, s: PipelineSettings, row: ModelRow, state: dict, load_kwargs: dict) -> None:
    """Fine-tune from this run's PTQ ranges and evaluate the QAT INT8 model the same way."""
    import shutil

    from .evaluate import evaluate
    from .quant.qat import qat

    train_source = s.train_data or s.data
    if not (s.train_data or s.data == BUILTIN_DATA or _has_train_split(s.data)):
        raise DataError(f"--qat needs training images: {s.data} has no train split; pass --train-data")
    # The structural prior: branch BN scales for a RepVGG train-form checkpoint; none otherwise
    # (a RepOpt-VGG's scales are not in its checkpoint).
    grad_mult = "bn" if row.family == "repvgg" and state.get("source_form") == "train" else "none"
    scratch = make_scratch_dir(run_dir, "pipeline", "qat")
    try:
        result = qat(str(path), train_data=train_source, val_data=s.data, output_dir=scratch, epochs=s.qat_epochs,
                     lr=s.qat_lr, calib_cache=run_dir / "calib.json", target=s.target, distill=True,
                     grad_mult=grad_mult,
                     seed=s.seed, load_kwargs=load_kwargs, device=s.device,
                     preprocessing=state["val"].preprocessing,
                     allow_mismatch=True)  # its verdicts join the row's, which _gate judges
        row.verdicts += [{**v, "check": f"qat_{v['check']}", "line": f"qat {v['line']}"}
                         for v in result.report.get("verdicts") or []]
        onnx_path = run_dir / f"qat_int8_{s.target}.onnx"
        result.int8_onnx.replace(onnx_path)
        (scratch / "report.json").replace(run_dir / "qat_report.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    runner = _open(onnx_path, s, state, f"{row.name} qat int8")
    acc = evaluate(runner, state["val"], limit=s.eval_limit)
    row.qat_top1 = acc.top1
    row.qat_drop = row.fp32_top1 - acc.top1 if row.fp32_top1 is not None else None


def _gate(row: ModelRow, s: PipelineSettings) -> None:
    """The row's verdict: FAILED (exit 1) on a failed hand-off unless --allow-mismatch, FAILED
    (exit 3) over --max-drop, else PASSED; sanity warnings and the parity cell either way."""
    from .verify import failed, fusion_verdict, parity_cell, sanity_warnings, warning

    fusion = fusion_verdict(row.fusion)
    if fusion is not None and not any(v.get("check") == "fusion" for v in row.verdicts):
        row.verdicts.insert(0, fusion.to_dict())
    row.parity = parity_cell(row.verdicts, allowed=s.allow_mismatch)
    row.warnings = sanity_warnings(fp32_top1=row.fp32_top1, num_classes=row.num_classes, eval_images=row.eval_images,
                                   calib_on_eval=bool((row.calibration or {}).get("on_eval_data")))
    if row.latency_noisy:
        lo, hi = row.speedup_ci or (None, None)
        interval = f" (speed-up 95 % interval {lo:.2f}-{hi:.2f}x)" if lo is not None else ""
        row.warnings.append(warning("noisy", f"latency is noisy: an interval is wider than +-5 % of its median after "
                                    f"the --max-duration cap{interval}; close other programs or run longer"))
    mismatches = failed(row.verdicts)
    row.status = "PASSED"
    if mismatches:
        if not s.allow_mismatch:
            row.status, row.exit_code, row.failed_stage = "FAILED", 1, "verification"
            row.error = "verification failed: " + "; ".join(mismatches)
            return
        row.warnings.append(warning("MISMATCH allowed", "verification FAILED but kept by --allow-mismatch: "
                                    + "; ".join(mismatches)))
    # With --qat the user deploys whichever INT8 model is better, so the gate judges that one.
    drops = [d for d in (row.top1_drop, row.qat_drop) if d is not None]
    drop = min(drops) if drops else None
    if s.max_drop is not None and drop is not None and drop > s.max_drop:
        row.status = "FAILED"
        row.error = f"top-1 drop {drop:.2f} points > --max-drop {s.max_drop:g}"
        row.exit_code = 3
