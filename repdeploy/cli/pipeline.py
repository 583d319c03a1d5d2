"""pipeline: the whole job end to end over many checkpoints (repdeploy/pipeline/), one table."""

from __future__ import annotations

import sys

import click

from .. import defaults
from ..zoo import ZOOS
from .common import emit, handle_errors, json_option, quiet_option
from .options import (checkpoint_options, deprecated_alias, device_option, diagnostics_option, input_size_option,
                      preprocessing_options)
from .core import input_format_option, labels_option


@click.command("pipeline")
@click.argument("checkpoints", nargs=-1, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (one run directory per model).")
@click.option("--eval-data", type=click.Path(), default=None,
              help="Labelled validation images (class folders or .npz); default: built-in digits val split.")
@click.option("--calib-data", type=click.Path(), default=None, help="Calibration images; default: the built-in train split, else --eval-data.")
@click.option("--calib-samples", type=int, default=defaults.CALIB_SAMPLES, show_default=True)
@click.option("--calib-method", default=defaults.CALIB_METHOD, show_default=True,
              type=click.Choice(["max", "percentile", "entropy", "mse"]), help="How activation ranges are chosen.")
@click.option("--engine", type=click.Choice(["ort", "trt"]), default="ort", show_default=True, help="Runtime for eval and bench.")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default=None,
              help="INT8 graph layout; default: ort for --engine ort, tensorrt for --engine trt.")
@click.option("--max-drop", type=float, default=None,
              help="Accuracy gate: max top-1 drop in absolute points; models over it are FAILED and the exit code is 3.")
@click.option("--min-sqnr", type=float, default=None,
              help="Label-free gate: INT8 vs FP32 SQNR (dB) on the eval images; models under it are FAILED, exit 3.")
@click.option("--min-agreement", type=float, default=None,
              help="Label-free gate: INT8 vs FP32 top-1 agreement (fraction 0-1); models under it are FAILED, exit 3.")
@click.option("--batches", "bench_batch", type=int, default=defaults.BENCH_BATCH_SIZE, show_default=True,
              help="Batch size of the latency figures (one; `bench --batches` takes a list).")
@click.option("--threads", type=int, default=None, help="CPU threads for ORT (default: ORT's choice).")
@click.option("--warmup", type=float, default=defaults.BENCH_WARMUP_S, show_default=True,
              help="Warm-up seconds per benchmark session.")
@click.option("--duration", type=float, default=defaults.BENCH_DURATION_S, show_default=True,
              help="Minimum measured seconds per model.")
@click.option("--iterations", type=int, default=defaults.BENCH_ITERATIONS, show_default=True,
              help="Minimum measured iterations per model.")
@click.option("--max-duration", type=float, default=defaults.BENCH_MAX_DURATION_S, show_default=True,
              help="Seconds per model that latency runs may extend to while their 95 % interval is wider than "
                   "+-5 % (0: no extension).")
@click.option("--sessions", "bench_sessions", type=int, default=defaults.BENCH_SESSIONS, show_default=True,
              help="Fresh runtime sessions per model that share the latency run; the speed-up's interval spans "
                   "them.")
@click.option("--eval-limit", type=int, default=None, help="Evaluate on the first N validation images only.")
@click.option("--qat", is_flag=True, help="Add a QAT column: fine-tune from the PTQ ranges (distilled) and evaluate.")
@click.option("--qat-epochs", type=int, default=defaults.QAT_EPOCHS, show_default=True,
              help="QAT epochs (the same default as `qat --epochs`).")
@click.option("--qat-lr", type=float, default=None,
              help="QAT learning rate (default: qat's, sgd 0.01 capped by the loss's sharpness, docs/benchmarks.md).")
@click.option("--zoo", type=click.Choice(ZOOS), default=None,
              help="Built-in models to run when no checkpoint is given: default (`make demo`) or stress (a RepVGG / "
                   "RepOpt-VGG pair whose RepVGG loses accuracy in PTQ; docs/training.md).  [default: default]")
@click.option("--train-data", type=click.Path(), default=None,
              help="QAT training images; default: the train split of --eval-data.")
@click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Seed of the calibration sample.")
@click.option("--fallback-float", is_flag=True,
              help="With --max-drop: leave the most sensitive layers in float until the drop fits, chosen on a "
                   "holdout of the calibration images (never --eval-data).")
@click.option("--allow-mismatch", is_flag=True,
              help="Keep (exit 0) models whose verification failed; the report marks them.")
@deprecated_alias("--data", "--eval-data")
@deprecated_alias("--batch", "--batches")
@deprecated_alias("--batch-size", "--batches")
@click.option("--triton-repo", type=click.Path(), default=None,
              help="Also package the INT8 models that passed as a Triton model repository here (docs/triton.md).")
@click.option("--force", is_flag=True,
              help="Write into run directories that hold files no repdeploy manifest lists (those are kept).")
@input_size_option
@preprocessing_options
@labels_option
@input_format_option
@diagnostics_option
@device_option
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def pipeline_cmd(checkpoints, output, eval_data, calib_data, calib_samples, calib_method, engine, target, max_drop,
                 min_sqnr, min_agreement, bench_batch, threads, warmup, duration, iterations, max_duration, bench_sessions,
                 eval_limit, qat, qat_epochs, qat_lr, zoo, train_data, seed, fallback_float, allow_mismatch, triton_repo,
                 force, input_size, prep, labels, input_format, diagnostics, device, load_kwargs, as_json):
    """Every checkpoint end to end: fuse+verify, export FP32, quantize INT8, evaluate, benchmark, report.

    Writes one run directory per model and report.json/.csv/.md/.html in OUTPUT, then prints the
    table. With no CHECKPOINTS it runs the built-in zoo on the built-in digits (`make demo`).
    A model that fails a stage is reported as ERROR and the others still run.
    Every numeric hand-off is verified (fusion, ORT vs torch, INT8 vs fake-quant, TensorRT vs ORT).
    Exit codes: 0 all passed, 1 a model failed verification (unless --allow-mismatch), 3 a model
    is over --max-drop, --min-sqnr or --min-agreement, else the first failed model's code.

    \b
    Examples:
      repdeploy pipeline -o runs/demo
      repdeploy pipeline --qat -o runs/demo-qat                # PTQ and QAT side by side
      repdeploy pipeline --zoo stress --qat -o runs/stress        # PTQ hurts RepVGG, QAT wins it back
      repdeploy pipeline a.pth b.pth --eval-data val/ --calib-data calib/ --max-drop 1.0 -o runs/mine
      repdeploy pipeline a.pth --eval-data val/ --engine trt --target tensorrt -o runs/gpu
      repdeploy pipeline -o runs/demo --triton-repo runs/demo/triton   # + a Triton model repository
    """
    import warnings

    from ..pipeline import PipelineSettings, run_pipeline
    from ..progress import status
    from ..report import print_table
    from .outcome import pipeline_exit

    settings = PipelineSettings(
        data=eval_data, calib_data=calib_data, engine=engine, target=target, max_drop=max_drop, min_sqnr=min_sqnr,
        min_agreement=min_agreement, calib_samples=calib_samples, calib_method=calib_method, bench_batch=bench_batch,
        threads=threads, warmup=warmup, duration=duration, iterations=iterations, max_duration=max_duration,
        bench_sessions=bench_sessions, eval_limit=eval_limit, qat=qat, qat_epochs=qat_epochs, qat_lr=qat_lr,
        train_data=train_data, load_kwargs=load_kwargs, device=device, fallback_float=fallback_float,
        allow_mismatch=allow_mismatch, labels=labels, input_format=input_format, input_size=input_size,
        diagnostics=diagnostics, seed=seed, **prep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(list(checkpoints), settings, output_dir=output, zoo=zoo, force=force,
                              triton_repo=triton_repo)
    for w in caught:
        status(f"warning: {w.message}")

    def text(_: dict) -> str:
        print_table([r.to_dict() for r in result.rows])
        served = f"\ntriton repository: {result.triton.path}" if result.triton is not None else ""
        return f"report: {result.report.html}{served}"

    code, line = pipeline_exit(result.rows, max_drop)
    emit({**result.to_dict(), "exit_code": code}, as_json, text)
    if line is not None:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


COMMANDS = [pipeline_cmd]
