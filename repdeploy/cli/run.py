"""eval, bench: measure models (accuracy, latency); the end-to-end job is cli/pipeline.py."""

from __future__ import annotations

import sys

import click

from .. import defaults
from .common import emit, handle_errors, json_option, log_warning, quiet_option
from .options import (ALIAS_REMOVAL, checkpoint_options, deprecated_alias, device_option, input_size_option,
                      preprocessing_options)

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
    from ..recorded import preprocessing_of
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
        s, host = r["stats"], r.get("host_stats")
        speedup = (f"  speed-up {r['speedup_vs_first']:.3f}x over {doc['baseline']}"
                   if several and r.get("speedup_vs_first") is not None else "")
        timing = (r.get("runner") or {}).get("timing")  # TensorRT: GPU compute, with host latency apart
        lines += [
            f"{r['label']}  engine {r['engine']}  batch {r['batch']}  input {tuple(r['input_shape'])}  "
            f"threads {_threads(r, env)}",
            f"  median {s['median_ms']:.3f} ms{' GPU compute' if host else ''}, 95 % interval "
            f"{s['median_ci_low_ms']:.3f}-{s['median_ci_high_ms']:.3f} "
            f"(+-{s['ci_halfwidth']:.1%}){'  NOISY' if s['noisy'] else ''}  IQR {s['iqr_ms']:.3f} ms",
            f"  latency ms: min {s['min_ms']:.3f}  mean {s['mean_ms']:.3f}  p50 {s['p50_ms']:.3f}  "
            f"p90 {s['p90_ms']:.3f}  p95 {s['p95_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}",
        ]
        if host:
            lines.append(f"  host latency ms (the whole call: copies, synchronization): median {host['median_ms']:.3f}"
                         f"  p90 {host['p90_ms']:.3f}  p99 {host['p99_ms']:.3f}" + (f"  [{timing}]" if timing else ""))
        lines += [f"  std {s['std_ms']:.3f} ms  CoV {s['cv']:.1%}  iterations {s['count']}  over {r['measured_s']:.2f} s",
                  f"  throughput {r['throughput_ips']:.1f} img/s{speedup}"]
    if several:
        with_host = any(r.get("host_stats") for r in doc["results"])
        lines.append("")
        lines.append(f"{'model':<40} {'batch':>5} {'p50 ms':>9} " + (f"{'host ms':>9} " if with_host else "")
                     + f"{'speed-up':>8}  (speed-up = time of {doc['baseline']} / time of the model, timed interleaved"
                     + ("; p50 ms is GPU compute, host ms the whole call" if with_host else "") + ")")
        for r in doc["results"]:
            speedup = "-" if r.get("speedup_vs_first") is None else f"{r['speedup_vs_first']:.3f}x"
            host = r.get("host_stats")
            host_cell = (f"{host['p50_ms']:>9.3f} " if host else f"{'-':>9} ") if with_host else ""
            lines.append(f"{r['label']:<40} {r['batch']:>5} {r['stats']['p50_ms']:>9.3f} {host_cell}{speedup:>8}")
    for sp in doc.get("speedups") or []:
        per_session = ", ".join(f"{v:.3f}" for v in sp["session_speedups"])
        lines.append(f"speed-up of {sp['candidate']} over {sp['reference']} at batch {sp['batch']}: {sp['speedup']:.3f}x, "
                     f"95 % interval {sp['ci_low']:.3f}-{sp['ci_high']:.3f} ({sp['interval']}; {sp['rounds']} rounds in "
                     f"{sp['sessions']} fresh session(s))" + (f" (per session {per_session})" if per_session else "")
                     + ("  NOISY" if sp["noisy"] else ""))
    if doc.get("ort_session"):
        lines.append(f"ORT session settings: {doc['ort_session']['text']}")
    if env:
        lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append(f"&&&& {doc['verdict']} repdeploy bench # {doc['command']}")
    return "\n".join(lines)


_OLD_JSON_FILE = "repdeploy.bench_old_json_file"


class _BenchCommand(click.Command):
    """bench's --json used to take a file name; `--json FILE` still writes FILE, for one release.

    The shared --json flag parses the command line; only the old spelling is rewritten first, to
    --json-out FILE. A word right after --json is always the old file form, never a model, so
    `bench --json a.onnx` cannot treat a model as a JSON path silently: a.onnx becomes the
    (refused) output and bench asks for a MODEL.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        end = args.index("--") if "--" in args else len(args)
        for i in range(end - 1):
            if args[i] == "--json" and not args[i + 1].startswith("-"):
                if any(a == "--json-out" or a.startswith("--json-out=") for a in args[:end]):
                    raise click.UsageError("--json FILE is the old spelling of --json-out FILE; give only --json-out",
                                           ctx=ctx)
                ctx.meta[_OLD_JSON_FILE] = args[i + 1]
                args[i] = "--json-out"
                break
        return super().parse_args(ctx, args)


@click.command("bench", cls=_BenchCommand)
@click.argument("models", nargs=-1, type=click.Path())
@click.option("--engine", type=ENGINE_CHOICE, default="ort", show_default=True)
@click.option("--batches", default=str(defaults.BENCH_BATCH_SIZE), show_default=True,
              help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--threads", type=int, default=None, help="CPU threads (ORT intra-op / torch).")
@click.option("--warmup", type=float, default=defaults.BENCH_WARMUP_S, show_default=True,
              help="Warm-up seconds per model, split over the sessions.")
@click.option("--duration", type=float, default=defaults.BENCH_DURATION_S, show_default=True,
              help="Minimum measured seconds per model and batch size.")
@click.option("--iterations", type=int, default=defaults.BENCH_ITERATIONS, show_default=True,
              help="Minimum measured iterations per model and batch size.")
@click.option("--max-duration", type=float, default=None,
              help="Keep running, up to this many seconds, while a median's 95 % interval is wider than +-5 %.")
@click.option("--sessions", type=int, default=defaults.BENCH_SESSIONS, show_default=True,
              help="Fresh runtime sessions, one after another, that the time is split over; each speed-up's "
                   "interval is a t-interval over the sessions' own speed-ups, so a level a new session does not "
                   "reproduce widens it.")
@click.option("--fresh-processes", is_flag=True,
              help="Run each session in a fresh process, so the speed-up's interval also spans what is fixed per "
                   "process (memory layout, thread placement): what a rerun of bench gets. About 1 s more a session.")
@click.option("--ort-spin-us", default="recorded", show_default=True, metavar="N|recorded|default",
              help="ORT engine: how long idle intra-op threads spin (us) before sleeping, the same for every model: "
                   "'recorded' applies the setting a model file records (repdeploy's INT8 ort layout: 100) to all "
                   "of them, 'default' leaves ORT's defaults, N sets N.")
@click.option("--compile", "use_compile", is_flag=True, help="torch engine: run through torch.compile.")
@device_option
@deprecated_alias("--batch", "--batches")
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def bench_cmd(models, engine, batches, threads, warmup, duration, iterations, max_duration, sessions, fresh_processes,
              ort_spin_us, use_compile, device, load_kwargs, as_json):
    """Latency of one or more models: warm up, then run until both --duration and --iterations are met.

    Reports the median with its bootstrap 95 % interval (NOISY when wider than +-5 %), IQR,
    min/mean/p50/p90/p95/p99/max ms (and host latency where the runtime times the GPU apart),
    throughput, the speed-up of every model over the first one (timed interleaved over
    --sessions fresh sessions, with a 95 % interval across them), the threads, the ORT session
    settings (one set for every model, --ort-spin-us) and the environment, then a PASSED/FAILED
    line like trtexec.

    \b
    Examples:
      repdeploy bench runs/demo/repvgg_mini/model_fp32.onnx runs/demo/repvgg_mini/model_int8_ort.onnx --batches 1,8 --threads 2
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --duration 2 --json-out bench.json
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --device cuda --batches 1,64   # needs an NVIDIA GPU
    """
    from ..bench import BenchModelsSettings, BenchSettings, bench_models

    ctx = click.get_current_context()
    old_json = ctx.meta.get(_OLD_JSON_FILE)
    if old_json is not None:
        log_warning(f"note: bench --json FILE is deprecated and goes in repdeploy {ALIAS_REMOVAL}; "
                    "use --json-out FILE (--json alone prints the JSON on stdout)")
    if not models:
        raise click.UsageError("give at least one MODEL (checkpoint, fused .pt, .onnx or engine)" if old_json is None
                               else f"--json is a flag now: give the MODELS first (`bench MODEL --json`), "
                                    f"or --json-out FILE; {old_json!r} was read as the old --json FILE")
    settings = BenchModelsSettings(
        engine=engine, batches=tuple(_batches(batches)), threads=threads, device=device, compile=use_compile,
        ort_spin_us=ort_spin_us, load_kwargs=load_kwargs, fresh_processes=fresh_processes,
        timing=BenchSettings(warmup=warmup, duration=duration, iterations=iterations, max_duration=max_duration,
                             sessions=sessions))
    report = bench_models(list(models), settings)
    shown = set()
    for failure in report.failures:  # the same cause at every batch size: once
        if failure["error"] not in shown:
            shown.add(failure["error"])
            click.echo(f"error: {failure['error']}", err=True)
    emit({**report.to_dict(), "command": " ".join(sys.argv[1:])}, as_json, _bench_text)
    if report.exit_code:
        sys.exit(report.exit_code)


COMMANDS = [eval_cmd, bench_cmd]
