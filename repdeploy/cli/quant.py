"""quantize: a checkpoint to a verified INT8 QDQ ONNX (for ONNX Runtime or TensorRT)."""

from __future__ import annotations

import click

from .. import defaults
from .common import emit, handle_errors, json_option, quiet_option
from .options import checkpoint_options, device_option, diagnostics_option, input_size_option, preprocessing_options
from .core import input_format_option, labels_option


def _text(r: dict) -> str:
    lines = [f"{r['model']} -> {r['output_dir']}  ({r['target']} INT8, {r['calib_method']} on {r['calib_samples']} images)"]
    if r.get("preprocessing"):
        from ..preprocess import Preprocessing

        lines.append(f"  input       {Preprocessing.from_dict(r['preprocessing']).summary()}")
    sq = r.get("sqnr_db")
    lines.append(f"  fidelity    SQNR {sq:.1f} dB, top-1 agreement with FP32 {r['top1_agreement']:.1%}"
                 if sq is not None else f"  fidelity    identical to FP32, top-1 agreement {r['top1_agreement']:.1%}")
    p = r["ort_parity"]
    for v in r.get("verdicts") or []:
        lines.append(f"  verify      {v['line']}")
    if not r.get("verdicts"):
        lines.append(f"  parity      ORT vs torch fake-quant: max |diff| {p['max_abs_diff']:.2e}, "
                     f"top-1 {p['top1_agreement']:.1%} ({'ok' if p['passed'] else 'MISMATCH'})")
    lines.append(f"  ORT kernels {r['ort_integer_nodes']} integer nodes after graph optimisation")
    if "fp32_top1" in r:
        top5 = f", top-5 {r['fp32_top5']:.2f} -> {r['int8_top5']:.2f}" if r.get("fp32_top5") is not None else ""
        lines.append(f"  accuracy    top-1 {r['fp32_top1']:.2f} -> {r['int8_top1']:.2f} "
                     f"(drop {r['top1_drop']:.2f}){top5} on {r['eval_images']} images")
    s = r.get("layers_summary") or {}
    if s.get("mean_centre_share") is not None:
        lines.append(f"  weights     centre-tap share {s['mean_centre_share']:.2f} (flat kernel: 0.11), "
                     f"most sensitive: {', '.join(s['most_sensitive_layers'])}")
    if r["target"] == "tensorrt":
        lines.append("  note        tensorrt layout: build it with TensorRT; ONNX Runtime runs it unfused")
    if r.get("float_layers"):
        lines.append(f"  float       left in float: {', '.join(r['float_layers'])}")
    gate = r.get("accuracy_gate")
    if gate and gate.get("passed") is not None:
        lines.append(f"  gate        max drop {gate['max_drop']}: {'PASSED' if gate['passed'] else 'FAILED'}")
    fb = r.get("fallback")
    if fb and fb.get("holdout_images"):
        lines.append(f"  fallback    layers chosen on a calibration holdout of {fb['holdout_images']} images "
                     f"({fb.get('holdout_source')}); accuracy above measured after the choice")
    for w in r.get("warnings") or []:
        lines.append(f"  warning     {w['message']}")
    fg = r.get("fidelity_gate")
    if fg:
        lines.append(f"  gate        fidelity on {fg.get('images')} verification images: "
                     f"{'PASSED' if fg['passed'] else 'FAILED: ' + '; '.join(fg['failures'])}")
    if r.get("verify_images") is not None:
        lines.append(f"  verified on {r['verify_images']} images of {r.get('verify_data')}"
                     + ("" if r.get("verify_disjoint") else " (NOT held out of calibration)"))
    if r.get("status") == "KEPT":
        from ..verify import kept_line

        lines.append(f"  status      {kept_line(r.get('failures') or [])}")
    else:
        lines.append(f"  status      {r.get('status', '-')}" + (f": {'; '.join(r['failures'])}" if r.get("failures") else ""))
    return "\n".join(lines)


@click.command("quantize")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--int8", "int8", is_flag=True, default=True,
              help="Quantize to INT8 (the only precision; the flag states it explicitly).")
@click.option("--calib-data", type=click.Path(), default=None,
              help="Calibration images: folder, .npy/.npz, or 'builtin'. Zoo models default to builtin.")
@click.option("--calib-samples", type=int, default=defaults.CALIB_SAMPLES, show_default=True, help="Seeded sample size.")
@click.option("--calib-method", type=click.Choice(["max", "percentile", "entropy", "mse"]),
              default=defaults.CALIB_METHOD, show_default=True, help="How activation ranges are chosen.")
@click.option("--percentile", type=float, default=defaults.CALIB_PERCENTILE, show_default=True,
              help="For --calib-method percentile.")
@click.option("--calib-cache", type=click.Path(), default=None,
              help="Reuse (or hand-edited) calib.json of the same model; skips calibration.")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default=defaults.TARGET, show_default=True,
              help="QDQ layout: ort (ONNX Runtime CPU integer kernels) or tensorrt (explicit quantization).")
@click.option("--eval-data", type=click.Path(), default=None,
              help="Labelled data (folder, .npz, 'builtin') to measure FP32 vs INT8 top-1/top-5.")
@click.option("--eval-limit", type=int, default=None, help="Evaluate on the first N images only.")
@click.option("--max-drop", type=float, default=None,
              help="Fail with exit code 3 if INT8 top-1 drops more than this many points (needs --eval-data).")
@click.option("--min-sqnr", type=float, default=None,
              help="Fail with exit code 3 if the INT8 ONNX's SQNR vs FP32 (dB, verification images) is lower; "
                   "needs no labels.")
@click.option("--min-agreement", type=float, default=None,
              help="Fail with exit code 3 if INT8 and FP32 pick the same class on fewer than this fraction (0-1) "
                   "of the verification images; needs no labels.")
@click.option("--fallback-float", "fallback", is_flag=True,
              help="With --max-drop: leave the most sensitive layers in float until the drop fits.")
@click.option("--allow-mismatch", is_flag=True,
              help="Keep (exit 0) a model whose verification failed; the report records that it was allowed.")
@input_size_option
@preprocessing_options
@labels_option
@input_format_option
@diagnostics_option
@click.option("--seed", type=int, default=defaults.SEED, show_default=True, help="Seed of the calibration sample.")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(), help="Output directory.")
@device_option
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def quantize_cmd(checkpoint, int8, calib_data, calib_samples, calib_method, percentile, calib_cache, target,
                 eval_data, eval_limit, max_drop, min_sqnr, min_agreement, fallback, allow_mismatch, input_size, prep,
                 labels, input_format, diagnostics, seed, output_dir, device, load_kwargs, as_json):
    """Quantize a checkpoint to a verified INT8 ONNX, with a report of what it cost.

    Writes fused.pt, model_fp32.onnx, model_int8_<target>.onnx, calib.json and report.json
    into OUTPUT. With no CHECKPOINT every model of the built-in zoo is quantized into
    OUTPUT/<model>/ with the built-in data.

    \b
    Examples:
      repdeploy quantize ckpt.pth --int8 --calib-data calib/ --eval-data val/ -o out/
      repdeploy quantize ckpt.pth --int8 --calib-cache out/calib.json --target tensorrt -o out_trt/
      repdeploy quantize --int8 --eval-data builtin --max-drop 1.0 -o runs/zoo
      repdeploy quantize ckpt.pth --int8 --calib-data calib/ --eval-data val/ --max-drop 1 --fallback-float -o out/
      repdeploy quantize ckpt.pth --int8 --calib-data calib/ --input-format uint8-nhwc -o out_uint8/
    """
    from ..quant.ptq import QuantizeSettings, quantize, quantize_zoo
    from .outcome import raise_for_results

    settings = QuantizeSettings(
        calib_data=calib_data, calib_samples=calib_samples, calib_method=calib_method, percentile=percentile,
        calib_cache=calib_cache, target=target, eval_data=eval_data, eval_limit=eval_limit, max_drop=max_drop,
        fallback=fallback, seed=seed, load_kwargs=load_kwargs, allow_mismatch=allow_mismatch, device=device,
        labels=labels, input_format=input_format, input_size=input_size, diagnostics=diagnostics, min_sqnr=min_sqnr,
        min_agreement=min_agreement, **prep)
    results = ([quantize(checkpoint, settings, output_dir=output_dir)] if checkpoint is not None
               else quantize_zoo(settings, output_dir=output_dir))
    records = [{**r.report, "output_dir": str(r.output_dir)} for r in results]
    doc = records[0] if len(records) == 1 else {"models": records}
    # emit writes --json-out with or without --json (issue 21 N11), and prints the text otherwise.
    emit(doc, as_json, lambda _: "\n".join(_text(r) for r in records))
    raise_for_results(results)


COMMANDS = [quantize_cmd]
