"""eval, bench: measure models (accuracy, latency); the end-to-end job is cli/pipeline.py."""

from __future__ import annotations

import sys

import click

from .. import defaults
from .common import (ALIAS_REMOVAL, checkpoint_options, deprecated_alias, device_option, emit, handle_errors,
                     input_size_option, json_option, log_warning, preprocessing_options, quiet_option)

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
@click.option("--eval-data", default="builtin", show_default=True,
              help="Labelled images: class-folder directory, .npz with labels, or 'builtin' (digits val split).")
@click.option("--engine", type=ENGINE_CHOICE, default=None,
              help="Runtime; default: ort for .onnx and checkpoints, trt for engines.")
@click.option("--batch-size", type=int, default=defaults.EVAL_BATCH_SIZE, show_default=True)
@click.option("--eval-limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch / ORT.")
@input_size_option
@preprocessing_options
@device_option
@deprecated_alias("--data", "--eval-data")
@deprecated_alias("--limit", "--eval-limit")
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def eval_cmd(model, eval_data, engine, batch_size, eval_limit, threads, input_size, prep, device, load_kwargs,
             as_json):
    """Top-1 and top-5 accuracy of a checkpoint, fused .pt, .onnx or engine.

    Images are fed with the preprocessing record the model carries (ONNX metadata, fused.pt),
    as it was calibrated; --mean/--std/--resize override it, and a model without one gets the
    data's own (the built-in digits', an .npz's mean/std arrays, else ImageNet's).

    \b
    Examples:
      repdeploy eval runs/demo/repvgg_mini/model_int8_ort.onnx
      repdeploy eval runs/demo/repvgg_mini/fused.pt --eval-data builtin --engine torch --json
      repdeploy eval runs/demo/repvgg_mini/fused.pt --engine torch --device cuda   # needs an NVIDIA GPU
    """
    from ..evaluate import evaluate, open_eval_data
    from ..preprocess import preprocessing_of
    from ..runtime import model_kind, open_runner
    from ..validate import integer, threads as check_threads

    integer("--batch-size", batch_size, low=1, high=65536, allow_none=False)
    integer("--eval-limit", eval_limit, low=1)
    check_threads("--threads", threads)

    engine = engine or ("trt" if model_kind(model) == "engine" else "ort")
    kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
    record = preprocessing_of(model)
    with open_runner(model, engine, threads=threads, device=device, input_size=input_size, **kwargs) as runner:
        dataset = open_eval_data(runner, eval_data, preprocessing=record, **prep)
        acc = evaluate(runner, dataset, batch_size=batch_size, limit=eval_limit)
    out = acc.to_dict()
    out["preprocessing"] = dataset.preprocessing.to_dict()
    given = [f"--{k}" for k, v in prep.items() if v is not None]
    out["preprocessing_from"] = ("the model's record" if record is not None else "the data's defaults") + (
        f", with {' '.join(given)}" if given else "")
    emit(out, as_json, _eval_text)


def _threads(r: dict, env: dict) -> str:
    """The thread count a row ran with; ORT's default (0) means one per physical core."""
    runner = r["runner"]
    if runner.get("threads"):
        return str(runner["threads"])
    if runner.get("intra_op_threads"):
        return str(runner["intra_op_threads"])
    if r["engine"] == "ort":
        cores = env.get("physical_cores")
        return f"ORT default ({cores} physical cores)" if cores else "ORT default"
    return "-"


def _bench_text(doc: dict) -> str:
    env = doc["environment"] or {}
    lines = []
    several = len({r["label"] for r in doc["results"]}) > 1
    for r in doc["results"]:
        s = r["stats"]
        ratio = (f"  p50 {r['ratio_vs_first']:.3f}x {doc['baseline']}"
                 if several and r.get("ratio_vs_first") is not None else "")
        lines += [
            f"{r['label']}  engine {r['engine']}  batch {r['batch']}  input {tuple(r['input_shape'])}  "
            f"threads {_threads(r, env)}",
            f"  median {s['median_ms']:.3f} ms, 95 % interval {s['median_ci_low_ms']:.3f}-{s['median_ci_high_ms']:.3f} "
            f"(+-{s['ci_halfwidth']:.1%}){'  NOISY' if s['noisy'] else ''}  IQR {s['iqr_ms']:.3f} ms",
            f"  latency ms: min {s['min_ms']:.3f}  mean {s['mean_ms']:.3f}  p50 {s['p50_ms']:.3f}  "
            f"p90 {s['p90_ms']:.3f}  p95 {s['p95_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}",
            f"  std {s['std_ms']:.3f} ms  CoV {s['cv']:.1%}"
            f"  iterations {s['count']}  over {r['measured_s']:.2f} s",
            f"  throughput {r['throughput_ips']:.1f} img/s{ratio}",
        ]
    if several:
        lines.append("")
        lines.append(f"{'model':<40} {'batch':>5} {'p50 ms':>9} {'ratio':>7}  (p50 vs {doc['baseline']}, same run, interleaved)")
        for r in doc["results"]:
            ratio = "-" if r.get("ratio_vs_first") is None else f"{r['ratio_vs_first']:.3f}x"
            lines.append(f"{r['label']:<40} {r['batch']:>5} {r['stats']['p50_ms']:>9.3f} {ratio:>7}")
    for sp in doc.get("speedups") or []:
        lines.append(f"speed-up of the second model over the first at batch {sp['batch']}: {sp['ratio']:.3f}x, "
                     f"95 % interval {sp['ci_low']:.3f}-{sp['ci_high']:.3f} over {sp['rounds']} rounds"
                     + ("  NOISY" if sp["noisy"] else ""))
    if env:
        lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append(f"&&&& {doc['verdict']} repdeploy bench # {doc['command']}")
    return "\n".join(lines)


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--engine", type=ENGINE_CHOICE, default="ort", show_default=True)
@click.option("--batches", default=str(defaults.BENCH_BATCH_SIZE), show_default=True,
              help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--threads", type=int, default=None, help="CPU threads (ORT intra-op / torch).")
@click.option("--warmup", type=float, default=defaults.BENCH_WARMUP_S, show_default=True, help="Warm-up seconds.")
@click.option("--duration", type=float, default=defaults.BENCH_DURATION_S, show_default=True,
              help="Minimum measured seconds per model and batch size.")
@click.option("--iterations", type=int, default=defaults.BENCH_ITERATIONS, show_default=True,
              help="Minimum measured iterations per model and batch size.")
@click.option("--max-duration", type=float, default=None,
              help="Keep running, up to this many seconds, while a median's 95 % interval is wider than +-5 %.")
@click.option("--compile", "use_compile", is_flag=True, help="torch engine: run through torch.compile.")
@device_option
@click.option("--json", "as_json", is_flag=False, flag_value="", default=None, metavar="",
              help="Print one JSON object on stdout instead of text.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON result to this file.")
@deprecated_alias("--batch", "--batches")
@checkpoint_options
@quiet_option
@handle_errors
def bench_cmd(models, engine, batches, threads, warmup, duration, iterations, max_duration, use_compile, device, as_json,
              json_out, load_kwargs):
    """Latency of one or more models: warm up, then run until both --duration and --iterations are met.

    Reports the median with its bootstrap 95 % interval (NOISY when wider than +-5 %), IQR,
    min/mean/p50/p90/p95/p99/max ms, throughput, the p50 ratio of every model to the first one
    (timed interleaved, in one run; with two models also the speed-up's interval), the threads
    and the environment, then a PASSED/FAILED line like trtexec.

    \b
    Examples:
      repdeploy bench runs/demo/repvgg_mini/model_fp32.onnx runs/demo/repvgg_mini/model_int8_ort.onnx --batches 1,8 --threads 2
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --duration 2 --json-out bench.json
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --device cuda --batches 1,64   # needs an NVIDIA GPU
    """
    import contextlib

    from ..bench import bench_interleaved, unique_labels
    from ..errors import RepDeployError
    from ..io import ensure_writable_file
    from ..preprocess import preprocessing_of
    from ..progress import status
    from ..runtime import model_kind, open_runner

    from ..rundir import refuse_overwriting_inputs
    from ..validate import bench_options

    models, as_json, json_out = _old_bench_json(list(models), as_json, json_out)
    if not models:
        raise click.UsageError("give at least one MODEL (checkpoint, fused .pt, .onnx or engine)")
    click.get_current_context().meta["repdeploy.json_out"] = json_out
    click.get_current_context().meta["repdeploy.as_json"] = as_json  # a failure then prints a JSON error too
    sizes = _batches(batches)
    for size in sizes:  # every knob checked before the first model loads: NaN would never end
        bench_options(batch=size, warmup=warmup, duration=duration, iterations=iterations, threads_=threads)
    if json_out:
        ensure_writable_file(json_out)
        refuse_overwriting_inputs(models, files=[json_out])
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()
    labels = dict(zip(models, unique_labels(models)))
    results, failures, env = [], [], None
    speedups: list[dict] = []
    with contextlib.ExitStack() as stack:
        runners = []
        for model in models:
            try:
                kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
                runner = stack.enter_context(open_runner(model, engine, threads=threads, compile=use_compile, device=device,
                                                         name=labels[model], **kwargs))
                _warn_layout(model, engine)
                runners.append((model, runner))
            except RepDeployError as exc:
                failures.append({"path": str(model), "label": labels[model], "error": str(exc),
                                 "exit_code": exc.exit_code})
                click.echo(f"error: {model}: {exc}", err=True)
        for size in sizes:
            if not runners:
                break
            status(f"bench {len(runners)} model(s) ({engine}, batch {size})")
            try:
                measured, speedup = bench_interleaved([r for _, r in runners], batch=size, warmup=warmup,
                                                      duration=duration, iterations=iterations,
                                                      max_duration=max_duration)
            except RepDeployError as exc:
                failures.append({"path": ", ".join(str(m) for m, _ in runners), "error": str(exc),
                                 "exit_code": exc.exit_code, "batch": size})
                if all(f["error"] != str(exc) for f in failures[:-1]):  # the same cause at every batch: once
                    click.echo(f"error: {exc}", err=True)
                continue
            first = measured[0].stats.p50_ms
            for (model, _), result in zip(runners, measured):
                record = result.to_dict()
                record["path"] = str(model)
                record["label"] = labels[model]
                record["ratio_vs_first"] = record["stats"]["p50_ms"] / first if first > 0 else None
                prep = preprocessing_of(model)  # recorded with the figures: what input the model expects
                record["preprocessing"] = prep.to_dict() if prep is not None else None
                env = record.pop("environment")
                results.append(record)
            if speedup is not None and len(runners) == 2:
                speedups.append({"batch": size, **speedup.to_dict()})
    doc = {"results": results, "failures": failures, "environment": env,
           "baseline": labels[runners[0][0]] if runners else None,
           "ratio": "p50 latency of each model / p50 of the first model at the same batch size, timed interleaved",
           "speedups": speedups, "verdict": "FAILED" if failures else "PASSED", "command": " ".join(sys.argv[1:])}
    emit(doc, as_json, _bench_text)
    if failures:
        sys.exit(max(f["exit_code"] for f in failures))


def _old_bench_json(models: list[str], as_json: str | None, json_out: str | None) -> tuple[list[str], bool, str | None]:
    """bench's --json used to take a file name, and `--json FILE` still writes FILE (with a note).

    --json followed by an option or nothing is the flag. A word after it is always the old
    file form, never a model, so `bench --json a.onnx` cannot treat a model as a JSON path
    silently: a.onnx becomes the (refused) output and bench asks for a MODEL.
    """
    if as_json is None:
        return models, False, json_out
    if as_json == "":
        return models, True, json_out
    if json_out is not None:
        raise click.UsageError("--json FILE is the old spelling of --json-out FILE; give only --json-out")
    log_warning(f"note: bench --json FILE is deprecated and goes in repdeploy {ALIAS_REMOVAL}; "
                "use --json-out FILE (--json alone prints the JSON on stdout)")
    if not models:
        raise click.UsageError(f"--json is a flag now: give the MODELS first (`bench MODEL --json`), "
                               f"or --json-out FILE; {as_json!r} was read as the old --json FILE")
    return models, False, as_json


def _warn_layout(model: str, engine: str) -> None:
    """Timing a TensorRT-layout INT8 graph on ONNX Runtime measures its float fallback: say so."""
    if engine != "ort" or not str(model).endswith(".onnx"):
        return
    import onnx

    from ..export.qdq import TENSORRT_ON_ORT_WARNING, qdq_layout

    if qdq_layout(onnx.load(str(model), load_external_data=False)) == "tensorrt":
        log_warning(f"{model}: {TENSORRT_ON_ORT_WARNING}")


COMMANDS = [eval_cmd, bench_cmd]
