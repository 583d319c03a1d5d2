"""qat: quantization-aware training of the fused model, on one process or many (torchrun)."""

from __future__ import annotations

import click

from .. import defaults
from ..quant.ranges import DEFAULT_RANGE_LR
from .common import emit, handle_errors, json_option, quiet_option
from .options import (amp_option, checkpoint_options, deprecated_alias, device_option, diagnostics_option,
                      input_size_option, preprocessing_options)


def _text(r: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.2f} %"

    lines = [f"QAT {r['model']} -> {r['output_dir']}"]
    lines.append(f"  top-1  FP32 {pct(r.get('fp32_top1'))}   PTQ {pct(r.get('ptq_top1'))}   QAT {pct(r.get('qat_top1'))}")
    if r.get("qat_drop") is not None:
        lines.append(f"  drop   PTQ {r['ptq_drop']:+.2f}   QAT {r['qat_drop']:+.2f} points")
    lines.append(f"  INT8 ONNX ({r['target']}): {r['int8_onnx']}")
    for v in r.get("verdicts") or []:
        lines.append(f"  verify {v['line']}")
    fg = r.get("fidelity_gate")
    if fg:
        lines.append(f"  gate   fidelity on {fg.get('images')} images: "
                     f"{'PASSED' if fg['passed'] else 'FAILED: ' + '; '.join(fg['failures'])}")
    if r.get("status") == "KEPT":
        from ..verify import kept_line

        lines.append(f"  status {kept_line([v['line'] for v in r.get('verdicts') or [] if not v['passed']])}")
    return "\n".join(lines)


@click.command("qat")
@click.argument("checkpoint", required=False, type=click.Path())
@click.option("--train-data", type=click.Path(), default=None, help="Training images: ImageFolder tree, labelled .npz, or 'builtin'.")
@click.option("--eval-data", type=click.Path(), default=None, help="Validation images (default: the source's val split or 10% held out).")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(), help="Output directory.")
@click.option("--epochs", type=int, default=defaults.QAT_EPOCHS, show_default=True)
@click.option("--lr", type=float, default=None,
              help="Learning rate (default: sgd 0.01 capped at 1.5 / the loss's sharpness, adamw 1e-4, agd gain 0.05).")
@click.option("--batch-size", type=int, default=defaults.QAT_BATCH_SIZE, show_default=True, help="Per process.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw", "agd"]), default="sgd", show_default=True)
@click.option("--grad-mult", default="none", show_default=True,
              help="Structural prior on the gradients: none, bn (from a RepVGG checkpoint's branch BNs), "
                   "sgs, or repopt:SCALES_FILE.")
@click.option("--distill/--no-distill", default=False, help="Distil from the FP32 model (KL on logits).")
@click.option("--temperature", default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--calib-cache", type=click.Path(), default=None, help="Start from these ranges instead of calibrating.")
@click.option("--calib-data", type=click.Path(), default=None, help="Calibration images (default: the training data).")
@click.option("--calib-method", type=click.Choice(["max", "percentile", "entropy", "mse"]),
              default=defaults.CALIB_METHOD, show_default=True)
@click.option("--calib-samples", type=int, default=defaults.CALIB_SAMPLES, show_default=True)
@click.option("--percentile", type=float, default=defaults.CALIB_PERCENTILE, show_default=True,
              help="For --calib-method percentile.")
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default=defaults.TARGET, show_default=True)
@click.option("--train-samples", type=int, default=None, help="Train on a seeded subset of N images.")
@click.option("--learnable-ranges/--frozen-ranges", default=True, show_default=True,
              help="Train the activation ranges (log space, own Adam; frozen again before export), "
                   "or keep the calibrated ones.")
@click.option("--range-lr", type=float, default=DEFAULT_RANGE_LR, show_default=True,
              help="Adam lr of the trained ranges, in log(amax) per step.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTDIR/qat_state.pt.")
@click.option("--checkpoint-every", default=0, show_default=True,
              help="Steps between training-state checkpoints (0: every epoch).")
@click.option("--seed", type=int, default=defaults.SEED, show_default=True)
@click.option("--allow-mismatch", is_flag=True,
              help="Keep (exit 0) a QAT model whose verification failed; the report records it.")
@input_size_option
@click.option("--min-sqnr", type=float, default=None,
              help="Fail with exit code 3 if the INT8 ONNX's SQNR vs FP32 (dB, eval images) is lower; needs no labels.")
@click.option("--min-agreement", type=float, default=None,
              help="Fail with exit code 3 if INT8 and FP32 agree on fewer than this fraction (0-1) of the images.")
@preprocessing_options
@diagnostics_option
@device_option
@amp_option
@deprecated_alias("--val-data", "--eval-data")
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def qat_cmd(checkpoint, train_data, eval_data, output_dir, epochs, lr, batch_size, weight_decay, optimizer,
            grad_mult, distill, temperature, calib_cache, calib_data, calib_method, calib_samples, percentile, target,
            train_samples, learnable_ranges, range_lr, resume, checkpoint_every, seed, allow_mismatch, min_sqnr,
            min_agreement, input_size, prep, diagnostics, device, amp, load_kwargs, as_json):
    """Fine-tune a checkpoint's fused model with fake quantization, then export its INT8 ONNX.

    Starts from the PTQ calibration (or --calib-cache), trains the weights and the activation
    ranges, and reports FP32, PTQ and QAT top-1 side by side. With no CHECKPOINT it runs on the
    built-in zoo's RepVGG model and the built-in digits.

    \b
    Examples:
      repdeploy qat -o runs/qat                                   # built-in zoo model and data
      repdeploy qat repvgg.pth --train-data train/ --eval-data val/ --distill --grad-mult bn -o qat/
      repdeploy qat repopt.pth --train-data train/ --grad-mult repopt:scales.pth --optimizer adamw -o qat/
      torchrun --nproc_per_node=2 -m repdeploy qat repvgg.pth --train-data train/ -o qat/   # data-parallel
      repdeploy qat repvgg.pth --train-data train/ --device cuda --amp bf16 -o qat/   # on the GPU
      repdeploy qat repvgg.pth --train-data train/ -o qat/ --resume   # continue an interrupted run
    """
    from ..quant.qat import QatSettings, qat
    from .outcome import raise_for_results

    settings = QatSettings(
        train_data=train_data, val_data=eval_data, epochs=epochs, lr=lr, batch_size=batch_size,
        weight_decay=weight_decay, optimizer=optimizer, grad_mult=grad_mult, distill=distill, temperature=temperature,
        calib_cache=calib_cache, calib_data=calib_data, calib_method=calib_method, calib_samples=calib_samples,
        percentile=percentile, target=target, train_samples=train_samples, learnable_ranges=learnable_ranges,
        range_lr=range_lr, resume=resume, checkpoint_every=checkpoint_every, seed=seed, load_kwargs=load_kwargs,
        allow_mismatch=allow_mismatch, min_sqnr=min_sqnr, min_agreement=min_agreement, device=device, amp=amp,
        input_size=input_size, diagnostics=diagnostics, **prep)
    result = qat(checkpoint, settings, output_dir=output_dir)
    if result.int8_onnx is None:  # a non-zero rank of a distributed job: rank 0 reports
        return
    record = {**result.report, "output_dir": str(result.output_dir), "int8_onnx": str(result.int8_onnx)}
    record.pop("training", None)
    emit(record, as_json, _text)
    raise_for_results([result], " after QAT")


COMMANDS = [qat_cmd]
