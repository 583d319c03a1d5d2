"""compare: the same inputs through two models (torch / ORT / TensorRT), outputs side by side."""

from __future__ import annotations

import sys

import click

from .. import defaults
from .common import emit, handle_errors, json_option, quiet_option
from .options import checkpoint_options, deprecated_alias, device_option


def _text(r: dict) -> str:
    sqnr = "inf (identical)" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f} dB"
    lines = [
        f"A: {r['model_a']} ({r['engine_a']})",
        f"B: {r['model_b']} ({r['engine_b']})",
        f"  inputs            {r['images']} x {r['inputs']}",
        f"  max abs diff      {r['max_abs_diff']:.4g}   mean {r['mean_abs_diff']:.4g}",
        f"  max rel diff      {r['max_rel_diff']:.4g}",
        f"  top-1 agreement   {r['top1_agreement']:.2%}",
        f"  SQNR              {sqnr}",
    ]
    if r.get("top1_a") is not None:
        lines.append(f"  top-1             A {r['top1_a']:.2f} %   B {r['top1_b']:.2f} %")
    verdict = "PASSED" if r["passed"] else f"FAILED ({r['mismatched']} logits outside)"
    lines.append(f"  atol {r['atol']:g} rtol {r['rtol']:g}: {verdict}")
    return "\n".join(lines)


@click.command("compare")
@click.argument("model_a", type=click.Path())
@click.argument("model_b", type=click.Path())
@click.option("--engine", "engines", multiple=True, type=click.Choice(["torch", "ort", "trt"]),
              help="Runtime for both models, or give it twice (A then B). Default: trt for engines, ort for "
                   ".onnx, torch for checkpoints.")
@click.option("--eval-data", type=click.Path(), default=None,
              help="Images to feed (class folders, .npy/.npz or 'builtin'); default: seeded random inputs.")
@click.option("--eval-limit", "samples", type=int, default=16, show_default=True,
              help="How many inputs: the first N images of --eval-data, or N random ones.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Inputs per inference (8 fits the default TensorRT profile of `export`).")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance per logit.")
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="Relative tolerance per logit (of A).")
@click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Seed of the random inputs.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch / ORT.")
@device_option
@deprecated_alias("--data", "--eval-data")
@deprecated_alias("--samples", "--eval-limit")
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def compare_cmd(model_a, model_b, engines, eval_data, samples, batch_size, atol, rtol, seed, threads, device,
                load_kwargs, as_json):
    """Run the same inputs through MODEL_A and MODEL_B and compare their logits, like Polygraphy.

    Reports max absolute/relative difference, top-1 agreement and SQNR; every logit must satisfy
    |a - b| <= atol + rtol * |a| (A is the reference). Exit 1 past the tolerances (a failed
    verification, as in quantize and pipeline).

    \b
    Examples:
      repdeploy compare fused.pt model_fp32.onnx                                  # torch vs ORT
      repdeploy compare model_fp32.onnx model.engine --atol 1e-3 --rtol 1e-3      # ORT vs TensorRT
      repdeploy compare model_fp32.onnx model_int8_ort.onnx --eval-data val/ --atol 1 --rtol 1
      repdeploy compare a0.pth a0.pth --engine torch --engine ort
    """
    from ..compare import CompareSettings, compare
    from ..errors import ToleranceError

    if len(engines) > 2:
        raise click.BadParameter("give --engine once (both models) or twice (A, then B)", param_hint="--engine")
    engine_a = engines[0] if engines else None
    engine_b = engines[-1] if engines else None
    from ..validate import MAX_COMPARE_SAMPLES, integer

    integer("--samples", samples, low=1, high=MAX_COMPARE_SAMPLES, allow_none=False)  # 1e9 would never end
    result = compare(model_a, model_b, CompareSettings(
        engine_a=engine_a, engine_b=engine_b, data=eval_data, samples=samples, batch_size=batch_size, atol=atol,
        rtol=rtol, seed=seed, threads=threads, device=device, load_kwargs=load_kwargs))
    record = result.to_dict()
    emit(record, as_json, _text)
    click.echo(f"&&&& {'PASSED' if result.passed else 'FAILED'} repdeploy compare # {' '.join(sys.argv[1:])}",
               err=as_json)
    if not result.passed:
        raise ToleranceError(f"{result.mismatched} of the logits differ by more than atol {atol:g} + rtol {rtol:g}"
                             f" (max abs diff {result.max_abs_diff:.3g}); loosen the tolerances if this precision"
                             " is expected")


COMMANDS = [compare_cmd]
