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
        s = r["stats"]
        speedup = (f"  speed-up {r['speedup_vs_first']:.3f}x over {doc['baseline']}"
                   if several and r.get("speedup_vs_first") is not None else "")
        lines += [
            f"{r['label']}  engine {r['engine']}  batch {r['batch']}  input {tuple(r['input_shape'])}  "
            f"threads {_threads(r, env)}",
            f"  median {s['median_ms']:.3f} ms, 95 % interval {s['median_ci_low_ms']:.3f}-{s['median_ci_high_ms']:.3f} "
            f"(+-{s['ci_halfwidth']:.1%}){'  NOISY' if s['noisy'] else ''}  IQR {s['iqr_ms']:.3f} ms",
            f"  latency ms: min {s['min_ms']:.3f}  mean {s['mean_ms']:.3f}  p50 {s['p50_ms']:.3f}  "
            f"p90 {s['p90_ms']:.3f}  p95 {s['p95_ms']:.3f}  p99 {s['p99_ms']:.3f}  max {s['max_ms']:.3f}",
            f"  std {s['std_ms']:.3f} ms  CoV {s['cv']:.1%}"
            f"  iterations {s['count']}  over {r['measured_s']:.2f} s",
            f"  throughput {r['throughput_ips']:.1f} img/s{speedup}",
        ]
    if several:
        lines.append("")
        lines.append(f"{'model':<40} {'batch':>5} {'p50 ms':>9} {'speed-up':>8}  "
                     f"(speed-up = p50 of {doc['baseline']} / p50 of the model, timed interleaved)")
        for r in doc["results"]:
            speedup = "-" if r.get("speedup_vs_first") is None else f"{r['speedup_vs_first']:.3f}x"
            lines.append(f"{r['label']:<40} {r['batch']:>5} {r['stats']['p50_ms']:>9.3f} {speedup:>8}")
    for sp in doc.get("speedups") or []:
        per_session = ", ".join(f"{v:.3f}" for v in sp["session_speedups"])
        lines.append(f"speed-up of {sp['candidate']} over {sp['reference']} at batch {sp['batch']}: {sp['speedup']:.3f}x, "
                     f"95 % interval {sp['ci_low']:.3f}-{sp['ci_high']:.3f} over {sp['rounds']} rounds in "
                     f"{sp['sessions']} fresh session(s)" + (f" (per session {per_session})" if per_session else "")
                     + ("  NOISY" if sp["noisy"] else ""))
    if doc.get("ort_session"):
        lines.append(f"ORT session settings: {doc['ort_session']['text']}")
    if env:
        lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append(f"&&&& {doc['verdict']} repdeploy bench # {doc['command']}")
    return "\n".join(lines)


def _speedup_record(speedup, batch: int, reference: str, candidate: str) -> dict:
    """bench_stats.Speedup in bench's JSON words: `speedup` is reference time / candidate time."""
    d = speedup.to_dict()
    return {"batch": batch, "reference": reference, "candidate": candidate, "speedup": d["ratio"],
            "ci_low": d["ci_low"], "ci_high": d["ci_high"], "rounds": d["rounds"], "sessions": d["sessions"],
            "session_speedups": d["session_ratios"], "noisy": d["noisy"]}


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
@click.option("--sessions", type=int, default=defaults.BENCH_SESSIONS, show_default=True,
              help="Fresh runtime sessions, one after another, that the time is split over; the speed-up's "
                   "interval spans them, so a level a new session does not reproduce shows as noise.")
@click.option("--ort-spin-us", default="recorded", show_default=True, metavar="N|recorded|default",
              help="ORT engine: how long idle intra-op threads spin (us) before sleeping, the same for every model: "
                   "'recorded' applies the setting a model file records (repdeploy's INT8 ort layout: 100) to all "
                   "of them, 'default' leaves ORT's defaults, N sets N.")
@click.option("--compile", "use_compile", is_flag=True, help="torch engine: run through torch.compile.")
@device_option
@click.option("--json", "as_json", is_flag=False, flag_value="", default=None, metavar="",
              help="Print one JSON object on stdout instead of text.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="Also write the JSON result to this file.")
@deprecated_alias("--batch", "--batches")
@checkpoint_options
@quiet_option
@handle_errors
def bench_cmd(models, engine, batches, threads, warmup, duration, iterations, max_duration, sessions, ort_spin_us,
              use_compile, device, as_json, json_out, load_kwargs):
    """Latency of one or more models: warm up, then run until both --duration and --iterations are met.

    Reports the median with its bootstrap 95 % interval (NOISY when wider than +-5 %), IQR,
    min/mean/p50/p90/p95/p99/max ms, throughput, the speed-up of every model over the first one
    (the first's p50 / the model's p50, timed interleaved in one run over --sessions fresh
    sessions; with two models also the speed-up's interval), the threads, the ORT session
    settings (one set for every model, --ort-spin-us) and the environment, then a PASSED/FAILED
    line like trtexec.

    \b
    Examples:
      repdeploy bench runs/demo/repvgg_mini/model_fp32.onnx runs/demo/repvgg_mini/model_int8_ort.onnx --batches 1,8 --threads 2
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --duration 2 --json-out bench.json
      repdeploy bench runs/demo/repvgg_mini/fused.pt --engine torch --device cuda --batches 1,64   # needs an NVIDIA GPU
    """
    from ..bench import bench_sessions, unique_labels
    from ..errors import RepDeployError
    from ..io import ensure_writable_file
    from ..recorded import preprocessing_of
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
    from ..runtime.ort import shared_session_config
    from ..validate import integer

    integer("--sessions", sessions, low=1, high=100, allow_none=False)
    ort_session = shared_session_config(models, ort_spin_us) if engine == "ort" else None
    if json_out:
        ensure_writable_file(json_out)
        refuse_overwriting_inputs(models, files=[json_out])
    if engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()
    labels = dict(zip(models, unique_labels(models)))
    results, failures, env = [], [], None
    speedups: list[dict] = []
    runners = []
    for model in models:
        try:
            kwargs = load_kwargs if model_kind(model) == "checkpoint" else {}
            runner = open_runner(model, engine, threads=threads, compile=use_compile, device=device,
                                 name=labels[model], **kwargs)
            if ort_session is not None:
                ort_session.apply(runner)
            with runner:  # opened once here so a bad file is reported before any timing
                pass
            _warn_layout(model, engine)
            runners.append((model, runner))
        except RepDeployError as exc:
            failures.append({"path": str(model), "label": labels[model], "error": str(exc),
                             "exit_code": exc.exit_code})
            click.echo(f"error: {model}: {exc}", err=True)
    for size in sizes:
        if not runners:
            break
        status(f"bench {len(runners)} model(s) ({engine}, batch {size}, {sessions} session(s))")
        try:
            # one model has no speed-up to make honest: the plain harness, which meets the minimums exactly
            measured, speedup = bench_sessions(lambda: [r for _, r in runners], sessions=sessions if len(runners) > 1
                                               else 1, batch=size, warmup=warmup, duration=duration,
                                               iterations=iterations, max_duration=max_duration)
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
            p50 = record["stats"]["p50_ms"]
            record["speedup_vs_first"] = first / p50 if p50 > 0 else None
            prep = preprocessing_of(model)  # recorded with the figures: what input the model expects
            record["preprocessing"] = prep.to_dict() if prep is not None else None
            env = record.pop("environment")
            results.append(record)
        if speedup is not None and len(runners) == 2:
            speedups.append(_speedup_record(speedup, size, labels[runners[0][0]], labels[runners[1][0]]))
    doc = {"results": results, "failures": failures, "environment": env,
           "baseline": labels[runners[0][0]] if runners else None,
           "speedup_definition": "p50 latency of the first model (baseline) / p50 latency of this model at the same "
                                 "batch size, timed interleaved; above 1: faster than the baseline",
           "ort_session": None if ort_session is None else {**ort_session.to_dict(), "text": ort_session.describe()},
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
