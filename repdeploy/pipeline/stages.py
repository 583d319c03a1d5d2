"""The pipeline's stages, one function each: the records it needs (and the settings) in, its own
record out (repdeploy/pipeline/records.py). A stage writes only into the job's run directory and
opens and closes its own runners; nothing is handed on except through the record it returns.

    load       load_checkpoint -> Fused, open_evaluation_data -> Prepared (fused.pt), check_labels
    export     export_fp32 -> Exported (model_fp32.onnx)
    quantize   quantize_int8 -> Quantized (model_int8_<target>.onnx, calib.json)
    tensorrt   build_tensorrt -> Built (model_fp32.engine, model_int8_tensorrt.engine); --engine trt
    evaluate   evaluate_pair -> Evaluated
    benchmark  benchmark_pair -> Timed
    qat        finetune_qat -> QatTuned (qat_int8_<target>.onnx, qat_report.json); --qat
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, InputError
from ..progress import status
from ..rundir import make_scratch_dir
from .records import Built, Evaluated, Exported, Fused, ModelJob, Prepared, QatTuned, Quantized, Timed
from .settings import BUILTIN_DATA, PipelineSettings

if TYPE_CHECKING:
    from ..runtime.base import Runner

STAGES = ("load", "export", "quantize", "evaluate", "benchmark")  # every run, in this order
OPTIONAL_STAGES = ("tensorrt", "qat")  # --engine trt (before evaluate), --qat (last)


# -- load -----------------------------------------------------------------------------------------
def load_checkpoint(job: ModelJob) -> Fused:
    from ..checkpoints import load_fused
    from ..models.plain import at_input_size

    if not job.checkpoint.is_file():
        raise InputError(f"checkpoint {job.checkpoint} does not exist; check the path")
    fused = load_fused(job.checkpoint, **job.load_kwargs)
    # --input-size, else the zoo entry's: every stage feeds the model at that size
    plain, loaded, equivalence = at_input_size(fused.plain, job.input_size), fused.loaded, fused.equivalence
    return Fused(plain=plain, variant=loaded.variant, family=loaded.family, form=loaded.form,
                 detected=loaded.to_dict(),
                 fusion=equivalence.to_dict() if equivalence is not None else {"already_plain": True},
                 input_size=plain.spec.input_size)


def open_evaluation_data(job: ModelJob, fused: Fused, s: PipelineSettings) -> Prepared:
    """The validation images as the model is fed them, and fused.pt carrying that preprocessing."""
    from ..checkpoints import save_fused
    from ..data import open_dataset
    from ..recorded import preprocessing_of

    # A fused.pt written by repdeploy carries the preprocessing it was calibrated with: feed it so.
    val = open_dataset(s.data, split="val", image_size=fused.input_size, channels=fused.spec.in_channels,
                       mean=s.mean, std=s.std, resize=s.resize, preprocessing=preprocessing_of(job.checkpoint))
    path = save_fused(fused.plain, job.run_dir / "fused.pt",
                      extra={"source": str(job.checkpoint), "source_sha256": job.sha256, "equivalence": fused.fusion,
                             "preprocessing": val.preprocessing.to_dict(),
                             "class_names": model_class_names(job, fused, val, s)})
    return Prepared(val=val, fused_pt=Path(path))


def model_class_names(job: ModelJob, fused: Fused, val, s: PipelineSettings) -> list[str] | None:
    """The class names the model's files record (data/labels.py: --labels, the model's own, the data's)."""
    from ..data.labels import class_names_for
    from ..recorded import class_names_of

    return class_names_for(fused.spec.num_classes, labels=s.labels, recorded=class_names_of(job.checkpoint),
                           datasets=(val,), model_path=job.checkpoint)


def check_labels(job: ModelJob, fused: Fused, prepared: Prepared, s: PipelineSettings) -> None:
    """Refuse evaluation data the model cannot be scored on (after fused.pt is written, so the
    run directory still shows what was loaded)."""
    val, num_classes, name = prepared.val, fused.spec.num_classes, job.checkpoint.name
    if not val.has_labels:
        raise DataError(f"data {s.data} has no labels; the pipeline needs labelled validation images (class folders)")
    if s.data == BUILTIN_DATA and num_classes != val.num_classes:
        raise DataError(f"{name} predicts {num_classes} classes, not the {val.num_classes} digits of the "
                        "built-in data; pass --data with the model's own labelled validation images")
    from ..data.folders import check_class_match

    check_class_match(val, num_classes, name)  # folders by name, never shifted by a missing one
    if val.num_classes and val.num_classes > num_classes:
        raise DataError(f"data {s.data} has {val.num_classes} classes but {name} predicts {num_classes}; "
                        "pass --data with the model's own validation images")


# -- export, quantize, tensorrt -------------------------------------------------------------------
def export_fp32(job: ModelJob, fused: Fused, prepared: Prepared) -> Exported:
    from ..export.onnx import export_onnx
    from ..recorded import class_names_of

    # fused.pt (written by open_evaluation_data) holds the names the model's files record
    return Exported(export_onnx(fused.plain, job.run_dir / "model_fp32.onnx", input_size=fused.input_size,
                                in_channels=fused.spec.in_channels, preprocessing=prepared.val.preprocessing,
                                class_names=class_names_of(prepared.fused_pt)))


def has_train_split(source: str) -> bool:
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


def calibration_source(s: PipelineSettings) -> tuple[str, bool]:
    """(source to calibrate on, whether those are the evaluation images themselves).

    --calib-data when given; else the train split of the evaluation source (the built-in data
    has one); else the evaluation images, which the report flags: calibrating on the test set
    flatters the INT8 accuracy."""
    if s.calib_data:
        return s.calib_data, False
    return s.data, not (s.data == BUILTIN_DATA or has_train_split(s.data))


def quantize_int8(job: ModelJob, fused: Fused, prepared: Prepared, s: PipelineSettings) -> Quantized:
    from ..quant.ptq import quantize

    source, on_eval_data = calibration_source(s)
    if s.calib_data and not on_eval_data:  # another path may still hold the same photos
        from ..data import open_dataset, same_images

        calib = open_dataset(source, split="train", image_size=fused.input_size, channels=fused.spec.in_channels)
        on_eval_data = same_images(calib, prepared.val)
    if on_eval_data:
        status(f"  warning: calibrating on the evaluation data {s.data}: INT8 accuracy will look better than it is; "
               "pass --calib-data")
    # quantize() writes its own fused.pt/model_fp32.onnx/report.json; the pipeline already wrote
    # the first two and owns report.json, so it runs in a scratch directory and only the INT8
    # model and the calibration cache are moved into the run directory.
    scratch = make_scratch_dir(job.run_dir, "pipeline", "quantize")  # unique per process: runs never collide
    # quantize() judges its own hand-offs; the pipeline turns those verdicts into the row's status.
    kwargs: dict[str, Any] = {"output_dir": scratch, "calib_data": source, "calib_samples": s.calib_samples,
                              "target": s.target, "seed": s.seed, "device": s.device, "allow_mismatch": True,
                              "preprocessing": prepared.val.preprocessing, "labels": s.labels,
                              "input_format": s.input_format, "diagnostics": s.diagnostics}
    if s.fallback_float:  # layers are chosen on a holdout of the calibration source, never on --data
        kwargs.update(fallback=True, max_drop=s.max_drop)
    if s.calib_method:
        kwargs["calib_method"] = s.calib_method
    try:
        result = quantize(fused.plain, **kwargs)
        int8 = job.run_dir / result.int8_onnx.name
        result.int8_onnx.replace(int8)
        pixels = result.report["files"].get("int8_pixels")  # --input-format: the uint8-input copy, judged
        if pixels:
            (scratch / pixels).replace(job.run_dir / pixels)
        calib_cache = job.run_dir / "calib.json"
        result.calib_cache.replace(calib_cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = dict(result.report)
    calibration = {"source": str(source), "on_eval_data": on_eval_data,
                   "method": report.get("calib_method"), "samples": report.get("calib_samples")}
    if report.get("fallback"):
        calibration["fallback"] = report["fallback"]
    diagnostics = {"summary": report.get("layers_summary"), "layers": report.get("layers") or [],
                   "float_layers": report.get("float_layers")}
    return Quantized(int8_onnx=int8, calib_cache=calib_cache, calibration=calibration, diagnostics=diagnostics,
                     verdicts=tuple(report.get("verdicts") or []), report=report)


def build_tensorrt(exported: Exported, quantized: Quantized) -> Built:
    """Both graphs as TensorRT engines beside them; their precision is the ONNX's own (strongly
    typed), and the timing and engine caches stay in the run directory so a rerun reuses them."""
    from ..export.tensorrt import build_engine, onnx_precision

    fp32, int8 = (build_engine(onnx, onnx.with_suffix(".engine"), precision=onnx_precision(onnx),
                               cache_dir=onnx.parent / "trt_cache").engine
                  for onnx in (exported.fp32_onnx, quantized.int8_onnx))
    return Built(fp32_engine=fp32, int8_engine=int8)


def runtime_models(exported: Exported, quantized: Quantized, built: Built | None) -> tuple[Path, Path]:
    """The FP32 and INT8 files the runtime opens: the TensorRT engines when built, else the ONNX."""
    if built is not None:
        return built.fp32_engine, built.int8_engine
    return exported.fp32_onnx, quantized.int8_onnx


def _runner(path: Path, s: PipelineSettings, name: str) -> Runner:
    from ..runtime import open_runner

    return open_runner(path, s.engine, threads=s.threads, workdir=path.parent, name=name)


# -- evaluate, benchmark --------------------------------------------------------------------------
def evaluate_pair(job: ModelJob, prepared: Prepared, exported: Exported, quantized: Quantized, built: Built | None,
                  s: PipelineSettings) -> Evaluated:
    from ..evaluate import evaluate, sqnr_db, top1_agreement

    fp32_model, int8_model = runtime_models(exported, quantized, built)
    with _runner(fp32_model, s, f"{job.name} fp32") as fp32, _runner(int8_model, s, f"{job.name} int8") as int8:
        a = evaluate(fp32, prepared.val, limit=s.eval_limit, keep_logits=True)
        b = evaluate(int8, prepared.val, limit=s.eval_limit, keep_logits=True)
    verdicts = _tensorrt_verdicts(prepared, exported, quantized, a.logits, b.logits) if built is not None else ()
    return Evaluated(fp32_top1=a.top1, fp32_top5=a.top5, int8_top1=b.top1, int8_top5=b.top5, images=a.images,
                     top1_agreement=100.0 * top1_agreement(a.logits, b.logits), sqnr_db=sqnr_db(a.logits, b.logits),
                     verdicts=verdicts)


def _tensorrt_verdicts(prepared: Prepared, exported: Exported, quantized: Quantized, fp32_logits, int8_logits,
                       images: int = 64) -> tuple[dict, ...]:
    """TensorRT vs ONNX Runtime on the first evaluation images (tolerance.py's trt_fp32 and trt_int8):
    the FP32 engine on a relative bound, the INT8 engine as a deployment of the verified QDQ graph
    (ORT INT8 the simulation, ORT FP32 the reference)."""
    import numpy as np

    from ..export.onnx import ort_session
    from ..tolerance import judge, judge_deployment

    x = np.concatenate([b.numpy() for b, _ in prepared.val.batches(32, limit=images)])
    ort = {}
    for label, path in (("fp32", exported.fp32_onnx), ("int8", quantized.int8_onnx)):
        session = ort_session(path)
        ort[label] = session.run(None, {session.get_inputs()[0].name: x})[0]
    n = len(x)
    return (judge("trt_fp32", ort["fp32"], fp32_logits[:n], reference_name="ORT FP32",
                  candidate_name="TensorRT FP32").to_dict(),
            judge_deployment("trt_int8", ort["fp32"], ort["int8"], int8_logits[:n], fp32_name="ORT FP32",
                             simulated_name="ORT INT8", deployed_name="TensorRT INT8").to_dict())


def benchmark_pair(job: ModelJob, exported: Exported, quantized: Quantized, built: Built | None,
                   s: PipelineSettings) -> Timed:
    """FP32 and INT8 in interleaved rounds over fresh runtime sessions (bench.bench_sessions):
    medians with their intervals, and the speed-up as a ratio with an interval across sessions
    and rounds. Both sides run under one set of ORT session settings: what the INT8 file records
    (its spin bound) is given to the FP32 session too, so the speed-up is the model's alone."""
    from ..bench import bench_sessions
    from ..runtime.ort import shared_session_config

    models = runtime_models(exported, quantized, built)
    shared = shared_session_config(models) if s.engine == "ort" else None

    def fresh_pair():
        runners = [_runner(path, s, f"{job.name} {label}") for path, label in zip(models, ("fp32", "int8"))]
        return [shared.apply(r) for r in runners] if shared is not None else runners

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (fp32, int8), speedup = bench_sessions(
            fresh_pair, sessions=s.bench_sessions, batch=s.bench_batch, warmup=s.warmup,
            duration=s.duration, iterations=s.iterations, max_duration=s.max_duration, seed=s.seed)
    for w in caught:
        status(f"  warning: {w.message}")
    return Timed(fp32=fp32, int8=int8, speedup=speedup)


# -- qat ------------------------------------------------------------------------------------------
def finetune_qat(job: ModelJob, fused: Fused, prepared: Prepared, quantized: Quantized,
                 s: PipelineSettings) -> QatTuned:
    """Fine-tune from this run's PTQ ranges and evaluate the QAT INT8 model the same way."""
    from ..evaluate import evaluate
    from ..quant.qat import qat

    train_source = s.train_data or s.data
    if not (s.train_data or s.data == BUILTIN_DATA or has_train_split(s.data)):
        raise DataError(f"--qat needs training images: {s.data} has no train split; pass --train-data")
    # The structural prior: branch BN scales for a RepVGG train-form checkpoint; none otherwise
    # (a RepOpt-VGG's scales are not in its checkpoint).
    grad_mult = "bn" if fused.family == "repvgg" and fused.form == "train" else "none"
    scratch = make_scratch_dir(job.run_dir, "pipeline", "qat")
    try:
        # At the size every other stage fed the model (Fused.input_size: --input-size, else the zoo
        # entry's): the calibration cache it starts from was made at that size.
        result = qat(str(job.checkpoint), train_data=train_source, val_data=s.data, output_dir=scratch,
                     epochs=s.qat_epochs, lr=s.qat_lr, calib_cache=quantized.calib_cache, target=s.target,
                     distill=True, grad_mult=grad_mult, seed=s.seed, load_kwargs=dict(job.load_kwargs),
                     device=s.device, preprocessing=prepared.val.preprocessing, input_size=fused.input_size,
                     allow_mismatch=True)  # its verdicts join the row's, which the gate judges
        verdicts = tuple({**v, "check": f"qat_{v['check']}", "line": f"qat {v['line']}"}
                         for v in result.report.get("verdicts") or [])
        onnx_path = job.run_dir / f"qat_int8_{s.target}.onnx"
        result.int8_onnx.replace(onnx_path)
        (scratch / "report.json").replace(job.run_dir / "qat_report.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with _runner(onnx_path, s, f"{job.name} qat int8") as runner:
        acc = evaluate(runner, prepared.val, limit=s.eval_limit)
    return QatTuned(int8_onnx=onnx_path, top1=acc.top1, verdicts=verdicts)
