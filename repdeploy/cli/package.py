"""package: ONNX files and TensorRT plans -> a Triton Inference Server model repository (repdeploy/triton/)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, handle_errors, json_option, quiet_option


def _text(r: dict) -> str:
    lines = [f"Triton model repository {r['repository']}:"]
    for m in r["models"]:
        labels = "labels.txt" if m["labels"] else "no labels"
        checked = "checked with Triton's schema" if m["checked"] else "NOT checked (pip install tritonclient)"
        lines.append(f"  {m['name']:<28} {m['platform']:<17} {m['precision']:<5} max_batch_size {m['max_batch_size']:<3}"
                     f" {labels}, {checked}")
    lines.append(f"serve it: docker run --rm -p8000:8000 -p8001:8001 -v {Path(r['repository']).resolve()}:/models "
                 "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models  (docs/triton.md)")
    return "\n".join(lines)


@click.command("package")
@click.argument("models", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The model repository (created if needed; other models in it are left alone).")
@click.option("--labels", type=click.Path(), default=None,
              help="Class names, one per line, for models whose ONNX records none (metadata repdeploy.class_names).")
@click.option("--max-batch-size", type=int, default=None,
              help="Triton's max_batch_size for dynamic-batch ONNX (default 8); a TensorRT plan takes its profile's "
                   "maximum, and a larger value is refused.")
@click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Where Triton runs each instance: default cpu for ONNX, gpu for TensorRT plans.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--tensorrt-accelerator", is_flag=True,
              help="ONNX on GPU: let ONNX Runtime hand the graph to TensorRT (the tensorrt INT8 layout, FP16, FP32).")
@click.option("--compute-capability", default=None,
              help="GPU compute capability a plan was built for (e.g. 8.6), where its side file does not say.")
@click.option("--tensorrt-version", default=None,
              help="TensorRT version that built a plan (e.g. 10.3.0), where its side file does not say.")
@click.option("--force", is_flag=True,
              help="Write into model directories holding files that their manifest.json does not list (those are kept).")
@json_option
@quiet_option
@handle_errors
def package_cmd(models, output, labels, max_batch_size, instance_kind, instances, tensorrt_accelerator,
                compute_capability, tensorrt_version, force, as_json):
    """Package MODELS (ONNX files, TensorRT plans) as a Triton model repository in OUTPUT.

    Each model becomes OUTPUT/NAME/ with config.pbtxt (inputs, outputs, types, dims and
    max_batch_size from the graph; dynamic batching, an instance group, zero-data warm-up, the
    preprocessing record in parameters), labels.txt and 1/model.onnx or 1/model_smXY.plan. Give a
    model as PATH (its name is its folder and file stem) or NAME=PATH; plans for several GPUs
    share one NAME. Re-running replaces only the model directories repdeploy wrote.

    \b
    Examples:
      repdeploy package runs/demo/repvgg_mini/model_int8_ort.onnx -o triton/
      repdeploy package a0=out/model_int8_ort.onnx a0_fp32=out/model_fp32.onnx --labels classes.txt -o triton/
      repdeploy package a0=sm80/model.plan a0=sm89/model.plan -o triton/
    """
    from ..triton import package_models

    result = package_models(list(models), output, labels=labels, max_batch_size=max_batch_size, kind=instance_kind,
                            instances=instances, tensorrt_accelerator=tensorrt_accelerator,
                            compute_capability=compute_capability, tensorrt_version=tensorrt_version, force=force)
    emit(result.to_dict(), as_json, _text)


COMMANDS = [package_cmd]
