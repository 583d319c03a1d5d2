"""eval, bench, pipeline: measure models (accuracy, latency) and run the whole job end to end."""

from __future__ import annotations

import sys

import click

from .common import checkpoint_options, emit, handle_errors, json_option, quiet_option

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
    return (f"{r['model']} on {r['data']} ({r['images']} images, {r['engine']})\n"
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
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def eval_cmd(model, data, engine, batch_size, limit, threads, load_kwargs, as_json):
    """Top-1 and top-5 accuracy of a checkpoint, fused .pt, .onnx or engine.

    \b
    Examples:
      repdeploy eval runs/demo/RepVGG-mini/model_int8_ort.onnx
      repdeploy eval RepVGG-A0-train.pth --data val/ --engine torch --json
    """
    from ..evaluate import evaluate, open_eval_data
    from ..runtime import model_kind, open_runner

    engine = engine or ("trt" if model_kind(model) == "engine" else "ort")
    kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
    with open_runner(model, engine, threads=threads, **kwargs) as runner:
        acc = evaluate(runner, open_eval_data(runner, data), batch_size=batch_size, limit=limit)
    emit(acc.to_dict(), as_json, _eval_text)


def _bench_text(r: dict) -> str:
    s = r["stats"]
    lines = [
        f"{r['model']}  engine {r['engine']}  batch {r['batch']}  input {tuple(r['input_shape'])}  "
        f"threads {r['runner'].get('intra_op_threads') or r['runner'].get('threads') or '-'}",
        f"  latency ms: min {s['min_ms']:.3f}  mean {s['mean_ms']:.3f}  p50 {s['p50_ms']:.3f}  "
        f"p90 {s['p90_ms']:.3f}  p95 {s['p95_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}",
        f"  std {s['std_ms']:.3f} ms  CoV {s['cv']:.1%}{'  (HIGH: unstable timing)' if r['high_variance'] else ''}"
        f"  iterations {s['count']}  over {r['measured_s']:.2f} s",
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
@click.option("--compile", "use_compile", is_flag=True, help="torch engine: run through torch.compile.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also write all results to this JSON file.")
@checkpoint_options
@quiet_option
@handle_errors
def bench_cmd(models, engine, batch, threads, warmup, duration, iterations, use_compile, json_out, load_kwargs):
    """Latency of one or more models: warm up, then run until both --duration and --iterations are met.

    Reports min/mean/p50/p90/p95/p99/max ms, std, coefficient of variation (warns when high),
    throughput and the environment, then a PASSED/FAILED line like trtexec.

    \b
    Examples:
      repdeploy bench runs/demo/RepVGG-mini/model_fp32.onnx runs/demo/RepVGG-mini/model_int8_ort.onnx --batch 1,8 --threads 2
      repdeploy bench fused.pt --engine torch --duration 5 --json bench.json
    """
    import warnings

    from ..bench import bench
    from ..errors import RepDeployError
    from ..io import ensure_writable_file, write_json_atomic
    from ..progress import status
    from ..runtime import model_kind, open_runner

    sizes = _batches(batch)
    if json_out:
        ensure_writable_file(json_out)
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()
    results, failures, env = [], [], None
    for model in models:
        try:
            kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
            with open_runner(model, engine, threads=threads, compile=use_compile, **kwargs) as runner:
                for size in sizes:
                    status(f"bench {model} ({engine}, batch {size})")
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        result = bench(runner, batch=size, warmup=warmup, duration=duration, iterations=iterations)
                    for w in caught:
                        click.echo(f"warning: {w.message}", err=True)
                    record = result.to_dict()
                    record["path"] = str(model)
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


COMMANDS = [eval_cmd, bench_cmd]
