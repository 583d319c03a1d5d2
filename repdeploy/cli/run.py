"""eval, bench, pipeline: measure models (accuracy, latency) and run the whole job end to end."""

from __future__ import annotations

import sys

import click

from .common import (checkpoint_options, device_option, emit, handle_errors, json_option, preprocessing_options,
                     quiet_option)

ENGINE_CHOICE = click.Choice(["torch", "ort", "trt"])


def _batches(value: str) -> list[int]:
    try:
        sizes = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give batch sizes as integers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: batch sizes must be >= 1")
    return sizes


def _eval_text(r: dict) -> str:
    top5 = "n/a (fewer than 5 classes)" if r["top5"] is None else f"{r['top5']:.2f} %"
    from ..preprocess import Preprocessing

    prep = Preprocessing.from_dict(r["preprocessing"]).summary()
    return (f"{r['model']} on {r['data']} ({r['images']} images, {r['engine']})\n"
            f"  input  {prep} ({r['preprocessing_from']})\n"
            f"  top-1  {r['top1']:.2f} %\n  top-5  {top5}")


@click.command("eval")
@click.argument("model", type=click.Path())
@click.option("--data", default="builtin", show_default=True,
              help="Labelled images: class-folder directory, .npz with labels, or 'builtin' (digits val split).")
@click.option("--engine", type=ENGINE_CHOICE, default=None,
              help="Runtime; default: ort for .onnx and checkpoints, trt for engines.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch / ORT.")
@preprocessing_options
@device_option
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def eval_cmd(model, data, engine, batch_size, limit, threads, prep, device, load_kwargs, as_json):
    """Top-1 and top-5 accuracy of a checkpoint, fused .pt, .onnx or engine.

    Images are fed with the preprocessing record the model carries (ONNX metadata, fused.pt),
    as it was calibrated; --mean/--std/--resize override it, and a model without one gets the
    data's own (the built-in digits', an .npz's mean/std arrays, else ImageNet's).

    \b
    Examples:
      repdeploy eval runs/demo/RepVGG-mini/model_int8_ort.onnx
      repdeploy eval RepVGG-A0-train.pth --data val/ --engine torch --json
      repdeploy eval RepVGG-A0-train.pth --data val/ --engine torch --device cuda
    """
    from ..evaluate import evaluate, open_eval_data
    from ..preprocess import preprocessing_of
    from ..runtime import model_kind, open_runner
    from ..validate import integer, threads as check_threads

    integer("--batch-size", batch_size, low=1, high=65536, allow_none=False)
    integer("--limit", limit, low=1)
    check_threads("--threads", threads)

    engine = engine or ("trt" if model_kind(model) == "engine" else "ort")
    kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
    record = preprocessing_of(model)
    with open_runner(model, engine, threads=threads, device=device, **kwargs) as runner:
        dataset = open_eval_data(runner, data, preprocessing=record, **prep)
        acc = evaluate(runner, dataset, batch_size=batch_size, limit=limit)
    out = acc.to_dict()
    out["preprocessing"] = dataset.preprocessing.to_dict()
    given = [f"--{k}" for k, v in prep.items() if v is not None]
    out["preprocessing_from"] = ("the model's record" if record is not None else "the data's defaults") + (
        f", with {' '.join(given)}" if given else "")
    emit(out, as_json, _eval_text)


def _bench_text(r: dict) -> str:
    s = r["stats"]
    lines = [
        f"{r['model']}  engine {r['engine']}  batch {r['batch']}  input {tuple(r['input_shape'])}  "
        f"threads {r['runner'].get('intra_op_threads') or r['runner'].get('threads') or '-'}",
        f"  median {s['median_ms']:.3f} ms, 95 % interval {s['median_ci_low_ms']:.3f}-{s['median_ci_high_ms']:.3f} "
        f"(+-{s['ci_halfwidth']:.1%}){'  NOISY' if s['noisy'] else ''}  IQR {s['iqr_ms']:.3f} ms",
        f"  latency ms: min {s['min_ms']:.3f}  mean {s['mean_ms']:.3f}  p50 {s['p50_ms']:.3f}  "
        f"p90 {s['p90_ms']:.3f}  p95 {s['p95_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}",
        f"  std {s['std_ms']:.3f} ms  CoV {s['cv']:.1%}  iterations {s['count']}  over {r['measured_s']:.2f} s",
        f"  throughput {r['throughput_ips']:.1f} img/s",
    ]
    return "\n".join(lines)


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--engine", type=ENGINE_CHOICE, default="ort", show_default=True)
@click.option("--batch", "batch", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--threads", type=int, default=None, help="CPU threads (ORT intra-op / torch).")
@click.option("--warmup", type=float, default=0.5, show_default=True, help="Warm-up seconds.")
@click.option("--duration", type=float, default=2.0, show_default=True, help="Minimum measured seconds.")
@click.option("--iterations", type=int, default=20, show_default=True, help="Minimum measured iterations.")
@click.option("--max-duration", type=float, default=None,
              help="Keep running, up to this many seconds, while the median's 95 % interval is wider than +-5 %.")
@click.option("--compile", "use_compile", is_flag=True, help="torch engine: run through torch.compile.")
@device_option
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also write all results to this JSON file.")
@checkpoint_options
@quiet_option
@handle_errors
def bench_cmd(models, engine, batch, threads, warmup, duration, iterations, max_duration, use_compile, device, json_out,
              load_kwargs):
    """Latency of one or more models: warm up, then run until both --duration and --iterations are met.

    Reports the median with its bootstrap 95 % interval (NOISY when wider than +-5 %), IQR,
    min/mean/p50/p90/p95/p99/max ms, throughput and the environment, then a PASSED/FAILED line
    like trtexec.

    \b
    Examples:
      repdeploy bench runs/demo/RepVGG-mini/model_fp32.onnx runs/demo/RepVGG-mini/model_int8_ort.onnx --batch 1,8 --threads 2
      repdeploy bench fused.pt --engine torch --duration 5 --json bench.json
      repdeploy bench fused.pt --engine torch --device cuda --batch 1,64
    """
    import warnings

    from ..bench import bench
    from ..errors import RepDeployError
    from ..io import ensure_writable_file, write_json_atomic
    from ..preprocess import preprocessing_of
    from ..progress import status
    from ..runtime import model_kind, open_runner

    from ..rundir import refuse_overwriting_inputs
    from ..validate import bench_options

    sizes = _batches(batch)
    for size in sizes:  # every knob checked before the first model loads: NaN would never end
        bench_options(batch=size, warmup=warmup, duration=duration, iterations=iterations, threads_=threads)
    if json_out:
        ensure_writable_file(json_out)
        refuse_overwriting_inputs(models, files=[json_out])
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()
    results, failures, env = [], [], None
    for model in models:
        try:
            kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
            with open_runner(model, engine, threads=threads, compile=use_compile, device=device, **kwargs) as runner:
                for size in sizes:
                    status(f"bench {model} ({engine}, batch {size})")
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        result = bench(runner, batch=size, warmup=warmup, duration=duration, iterations=iterations,
                                       max_duration=max_duration)
                    for w in caught:
                        click.echo(f"warning: {w.message}", err=True)
                    record = result.to_dict()
                    record["path"] = str(model)
                    prep = preprocessing_of(model)  # recorded with the figures: what input the model expects
                    record["preprocessing"] = prep.to_dict() if prep is not None else None
                    env = record.pop("environment")
                    results.append(record)
                    click.echo(_bench_text(record))
        except RepDeployError as exc:
            failures.append({"path": str(model), "error": str(exc), "exit_code": exc.exit_code})
            click.echo(f"error: {model}: {exc}", err=True)
    if env:
        click.echo("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    if json_out:
        write_json_atomic(json_out, {"results": results, "failures": failures, "environment": env})
    verdict = "FAILED" if failures else "PASSED"
    click.echo(f"&&&& {verdict} repdeploy bench # {' '.join(sys.argv[1:])}")
    if failures:
        sys.exit(max(f["exit_code"] for f in failures))


@click.command("pipeline")
@click.argument("checkpoints", nargs=-1, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output directory (one run directory per model).")
@click.option("--data", default=None, help="Labelled validation images (class folders or .npz); default: built-in digits val split.")
@click.option("--calib-data", default=None, help="Calibration images; default: the built-in train split, else --data.")
@click.option("--calib-samples", default=256, show_default=True)
@click.option("--calib-method", default=None, type=click.Choice(["max", "percentile", "entropy", "mse"]),
              help="Calibration method; default: the PTQ default.")
@click.option("--engine", type=click.Choice(["ort", "trt"]), default="ort", show_default=True, help="Runtime for eval and bench.")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default=None,
              help="INT8 graph layout; default: ort for --engine ort, tensorrt for --engine trt.")
@click.option("--max-drop", type=float, default=None,
              help="Accuracy gate: max top-1 drop in absolute points; models over it are FAILED and the exit code is 3.")
@click.option("--batch", "bench_batch", default=1, show_default=True, help="Batch size for the latency figures.")
@click.option("--threads", type=int, default=None, help="CPU threads for ORT (default: ORT's choice).")
@click.option("--warmup", type=float, default=None, help="Warm-up seconds per benchmark (default 0.3).")
@click.option("--duration", type=float, default=None, help="Minimum measured seconds per benchmark (default 1.0).")
@click.option("--iterations", type=int, default=None, help="Minimum measured iterations per benchmark (default 30).")
@click.option("--max-duration", type=float, default=None,
              help="Seconds per model that latency runs may extend to while their 95 % interval is wider than "
                   "+-5 % (default 6; 0: no extension).")
@click.option("--sessions", "bench_sessions", type=int, default=None,
              help="Fresh runtime sessions per model that share the latency run; the speed-up's interval spans "
                   "them (default 3).")
@click.option("--eval-limit", type=int, default=None, help="Evaluate on the first N validation images only.")
@click.option("--qat", is_flag=True, help="Add a QAT column: fine-tune from the PTQ ranges (distilled) and evaluate.")
@click.option("--qat-epochs", default=2, show_default=True)
@click.option("--train-data", default=None, help="QAT training images; default: the train split of --data.")
@click.option("--fallback-float", is_flag=True,
              help="With --max-drop: leave the most sensitive layers in float until the drop fits, chosen on a "
                   "holdout of the calibration images (never --data).")
@click.option("--allow-mismatch", is_flag=True,
              help="Keep (exit 0) models whose verification failed; the report marks them.")
@click.option("--force", is_flag=True,
              help="Write into run directories that hold files no repdeploy manifest lists (those are kept).")
@preprocessing_options
@device_option
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def pipeline_cmd(checkpoints, output, data, calib_data, calib_samples, calib_method, engine, target, max_drop,
                 bench_batch, threads, warmup, duration, iterations, max_duration, bench_sessions, eval_limit, qat,
                 qat_epochs, train_data, fallback_float, allow_mismatch, force, prep, device, load_kwargs, as_json):
    """Every checkpoint end to end: fuse+verify, export FP32, quantize INT8, evaluate, benchmark, report.

    Writes one run directory per model and report.json/.csv/.md/.html in OUTPUT, then prints the
    table. With no CHECKPOINTS it runs the built-in zoo on the built-in digits (`make demo`).
    A model that fails a stage is reported as ERROR and the others still run.
    Every numeric hand-off is verified (fusion, ORT vs torch, INT8 vs fake-quant, TensorRT vs ORT).
    Exit codes: 0 all passed, 1 a model failed verification (unless --allow-mismatch), 3 a model
    is over --max-drop, else the first failed model's code.

    \b
    Examples:
      repdeploy pipeline -o runs/demo
      repdeploy pipeline --qat -o runs/demo-qat                # PTQ and QAT side by side
      repdeploy pipeline a.pth b.pth --data val/ --calib-data calib/ --max-drop 1.0 -o runs/mine
      repdeploy pipeline a.pth --data val/ --engine trt --target tensorrt -o runs/gpu
    """
    import warnings

    from ..pipeline import (DEFAULT_BENCH_SESSIONS, DEFAULT_DURATION_S, DEFAULT_ITERATIONS, DEFAULT_MAX_DURATION_S,
                            DEFAULT_WARMUP_S, run_pipeline)
    from ..progress import status
    from ..report import print_table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(
            list(checkpoints), output_dir=output, data=data, calib_data=calib_data, engine=engine, target=target,
            max_drop=max_drop, calib_samples=calib_samples, calib_method=calib_method, bench_batch=bench_batch,
            threads=threads, warmup=DEFAULT_WARMUP_S if warmup is None else warmup,
            duration=DEFAULT_DURATION_S if duration is None else duration,
            iterations=DEFAULT_ITERATIONS if iterations is None else iterations,
            max_duration=DEFAULT_MAX_DURATION_S if max_duration is None else max_duration,
            bench_sessions=DEFAULT_BENCH_SESSIONS if bench_sessions is None else bench_sessions,
            eval_limit=eval_limit, qat=qat, qat_epochs=qat_epochs, train_data=train_data,
            load_kwargs={k: v for k, v in load_kwargs.items() if v}, force=force, device=device,
            fallback_float=fallback_float, allow_mismatch=allow_mismatch, **prep,
        )
    for w in caught:
        status(f"warning: {w.message}")
    records = [r.to_dict() for r in result.rows]
    if as_json:
        emit(result.to_dict(), True)
    else:
        print_table(records)
        click.echo(f"report: {result.report.html}")
    code = result.exit_code
    if code == 1 and any(r.status == "FAILED" and r.exit_code == 1 for r in result.rows):
        failed = [r.name for r in result.rows if r.status == "FAILED" and r.exit_code == 1]
        click.echo(f"error: verification failed for {', '.join(failed)} (see the parity column; "
                   "--allow-mismatch keeps such models)", err=True)
    elif code == 3:
        failed = [r.name for r in result.rows if r.status == "FAILED"]
        click.echo(f"error: accuracy gate failed for {', '.join(failed)} (top-1 drop > {max_drop:g} points)", err=True)
    sys.exit(code)


COMMANDS = [eval_cmd, bench_cmd, pipeline_cmd]
