"""inspect, fuse, export: what a checkpoint is, its verified PlainNet, and its ONNX."""

from __future__ import annotations

import click

from .common import emit, handle_errors, json_option, quiet_option
from .options import checkpoint_options


def _inspect_text(r: dict) -> str:
    if r["form"] == "scales":
        return f"{r['path']}: RepOpt-VGG scales file ({r['num_tensors']} tensors)\n  to deploy: {r['to_deploy']}"
    arch = r["arch"]
    lines = [
        f"{r['path']}",
        f"  format      {r['format']} ({r['container']})",
        f"  family      {r['family']}",
        f"  variant     {r['variant']}",
        f"  form        {r['form']}",
        f"  classes     {r['num_classes']}",
        f"  params      {r['params']:,} (deployed: {r['deploy_params']:,})",
        f"  depths      {arch['depths']}  widths {arch['widths']}"
        + (f"  groups {arch['groups']}" if arch["groups"] else "") + ("  SE" if arch["use_se"] else ""),
        f"  to deploy   {r['to_deploy']}",
    ]
    return "\n".join(lines)


def _onnx_text(r: dict) -> str:
    inputs = ", ".join(f"{i['name']} {i['shape']}" for i in r["inputs"])
    lines = [f"{r['path']}", f"  format      ONNX, opset {r['opset']}", f"  inputs      {inputs}",
             f"  ops         {sum(r['ops'].values())} nodes: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items())]
    if not r["quantized"]:
        lines.append("  layout      fp32 (no Q/DQ)")
        return "\n".join(lines)
    c = r["layout_check"]
    lines.append(f"  layout      {r['layout']} INT8 QDQ; checked against: {c['rules']}")
    if r["layout"] == "ort":
        n = sum(c["integer_nodes"].values())
        lines.append(f"  ORT fusion  {n} integer kernels ({', '.join(f'{k} {v}' for k, v in c['integer_nodes'].items())}),"
                     f" {c['float_weighted_nodes']} conv/gemm left in float: {'PASSED' if c['passed'] else 'FAILED'}")
    elif r["layout"] == "tensorrt":
        lines.append("  TensorRT    no rule violations: PASSED")
        lines.append(f"  note        {c['note']}")
    else:
        lines.append(f"  TensorRT    {c['violation_count']} rule violations, e.g. {c['violations'][0]}")
    if c.get("note") and r["layout"] == "ort":
        lines.append(f"  note        {c['note']}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=True))
@checkpoint_options
@click.option("--list-arch", is_flag=True, help="List the known variants and exit.")
@json_option
@quiet_option
@handle_errors
def inspect_cmd(checkpoint, load_kwargs, list_arch, as_json):
    """Say what a checkpoint is: format, family, variant, form, classes, parameters.

    Detection reads the keys and tensor shapes, never the file name.

    \b
    Examples:
      repdeploy inspect RepVGG-A0-train.pth
      repdeploy inspect ckpt.pth.tar --ema --json
      repdeploy inspect --list-arch
    """
    if list_arch:
        from ..models.specs import VARIANTS

        records = [s.to_dict() for s in VARIANTS.values()]
        if as_json:
            emit({"variants": records}, True)
        else:
            for s in records:
                click.echo(f"{s['name']:<18} {s['family']:<7} depths {s['depths']} widths {s['widths']}")
        return
    if checkpoint is None:
        raise click.UsageError("give a CHECKPOINT (or --list-arch)")
    if checkpoint.endswith(".onnx"):
        from ..export.onnx import describe_onnx

        emit(describe_onnx(checkpoint), as_json, _onnx_text)
        return
    from ..checkpoints import load

    emit(load(checkpoint, **load_kwargs).to_dict(), as_json, _inspect_text)


@click.command("fuse")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the fused model (.pt).")
@click.option("--tolerance", default=1e-4, show_default=True, help="Max logit error relative to the logit scale.")
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def fuse_cmd(checkpoint, output, tolerance, load_kwargs, as_json):
    """Fuse a checkpoint into a PlainNet and prove it computes the same function.

    The fused file records its architecture and loads with weights_only=True.

    \b
    Examples:
      repdeploy fuse RepVGG-B1g4-train.pth -o b1g4_fused.pt
      repdeploy fuse ckpt.pth -o fused.pt --json
    """
    from ..checkpoints import load, save_fused
    from ..fuse import fuse
    from ..io import ensure_writable_file
    from ..models import PlainNet

    from ..rundir import refuse_other_kind, refuse_overwriting_inputs
    from ..validate import number

    number("--tolerance", tolerance, low=0.0, low_open=True, high=1.0, allow_none=False)
    ensure_writable_file(output)
    refuse_overwriting_inputs([checkpoint], files=[output])
    refuse_other_kind(output, "torch")
    loaded = load(checkpoint, **load_kwargs)
    if loaded.model is None:
        raise click.UsageError(f"{checkpoint} is a scales file with no weights; {loaded.deploy_steps}")
    if isinstance(loaded.model, PlainNet):
        from ..fuse import compare, check_size

        plain = loaded.model
        size = check_size(plain.spec)
        eq = compare(plain, plain, (2, plain.spec.in_channels, size, size), tolerance=tolerance)
        if not eq.passed:  # NaN/Inf logits (--allow-nonfinite): never print PASSED for them
            from ..errors import FusionError

            raise FusionError(f"{checkpoint}: the model's logits are not finite (max |logit| {eq.logit_scale:.3g}); "
                              "it cannot be deployed")
    else:
        result = fuse(loaded.model, tolerance=tolerance)
        plain, eq = result.plain, result.equivalence
    save_fused(plain, output, extra={"source": str(checkpoint), "source_format": loaded.format,
                                     "source_form": loaded.form, "equivalence": eq.to_dict()})
    record = {
        "input": str(checkpoint), "variant": loaded.variant, "form": loaded.form,
        "max_abs_diff": eq.max_abs_diff, "max_rel_diff": eq.max_rel_diff, "tolerance": tolerance,
        "passed": eq.passed, "output": str(output),
        "params": sum(p.numel() for p in plain.parameters()),
    }
    emit(record, as_json, lambda r: (
        f"fused {r['variant']} ({r['form']} form) -> {r['output']}\n"
        f"  equivalence: max abs diff {r['max_abs_diff']:.3g}, max rel diff {r['max_rel_diff']:.3g} "
        f"(tolerance {r['tolerance']:g}): PASSED"
    ))


def labels_option(f):
    """--labels FILE: the class names a model's ONNX records (one per line, in the order of the logits)."""
    return click.option("--labels", type=click.Path(), default=None,
                        help="Class names, one per line in the order of the logits, recorded in the ONNX "
                             "(default: the model's own, the data's class folders, or the zoo's digits).")(f)


def input_format_option(f):
    """--input-format: float NCHW input, or uint8 pixels that the graph itself normalises."""
    from ..metadata import INPUT_FORMATS

    return click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="float", show_default=True,
                        help="float: the preprocessed NCHW input. uint8-nhwc / uint8-nchw: raw 8-bit pixels "
                             "(resized and cropped), normalised inside the graph (docs/serving.md).")(f)


@click.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .onnx (or .engine with --format trt).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "best"]), default=None,
              help="onnx: fp32 or fp16. trt: fp32, fp16, best (TensorRT picks per layer; 10.x) or int8 "
                   "(from a `quantize --target tensorrt` ONNX). Default: fp32, or what an input ONNX is.")
@click.option("--input-size", type=int, default=None,
              help="Nominal input resolution (default: the variant's); the ONNX takes any HxW.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--shapes", default=None, help="trt: fixed profile shapes, trtexec syntax, e.g. input:8x3x224x224.")
@click.option("--min-shapes", default=None, help="trt: profile minimum, e.g. input:1x3x224x224.")
@click.option("--opt-shapes", default=None, help="trt: profile optimum, e.g. input:8x3x224x224.")
@click.option("--max-shapes", default=None, help="trt: profile maximum, e.g. input:64x3x256x256.")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="trt: timing and engine caches (default: trt_cache/ beside the output).")
@click.option("--verbose", is_flag=True, help="trt: show TensorRT's build log.")
@labels_option
@input_format_option
@checkpoint_options
@json_option
@quiet_option
@handle_errors
def export_cmd(checkpoint, output, fmt, precision, input_size, opset, shapes, min_shapes, opt_shapes, max_shapes,
               cache_dir, verbose, labels, input_format, load_kwargs, as_json):
    """Export a checkpoint (train, deploy or fused form) to ONNX, or build a TensorRT engine.

    The model is fused and verified first; the ONNX (dynamic batch, height and width) is
    checked with onnx.checker and run once in ONNX Runtime against torch. With --format trt
    the engine is built through Polygraphy from a checkpoint (via its FP32/FP16 ONNX) or from
    an .onnx file (e.g. the INT8 QDQ graph of `quantize --target tensorrt`); without TensorRT
    and an NVIDIA GPU it exits 4.

    \b
    Examples:
      repdeploy export RepVGG-A0-train.pth -o a0.onnx
      repdeploy export fused.pt -o a0.onnx --input-size 256 --json
      repdeploy export fused.pt -o a0_fp16.onnx --precision fp16
      repdeploy export fused.pt -o a0_uint8.onnx --input-format uint8-nhwc
      repdeploy export out/model_int8_ort.onnx -o int8_uint8.onnx --input-format uint8-nhwc
      repdeploy export fused.pt -o a0.engine --format trt --precision fp16   # needs TensorRT + GPU
      repdeploy export out/model_int8_tensorrt.onnx -o a0_int8.engine --format trt \\
          --min-shapes input:1x3x224x224 --opt-shapes input:8x3x224x224 --max-shapes input:64x3x224x224
    """
    from ..errors import InputError
    from ..export.onnx import check_opset
    from ..io import ensure_writable_file
    from ..rundir import refuse_other_kind, refuse_overwriting_inputs
    from ..runtime import model_kind
    from ..validate import input_size as check_input_size

    check_input_size("--input-size", input_size)
    check_opset(opset)
    refuse_overwriting_inputs([checkpoint], files=[output])
    is_onnx = model_kind(checkpoint) == "onnx"
    if fmt == "trt":
        from ..export.tensorrt import build_engine, build_engine_from_model, import_tensorrt, onnx_precision
        from ..export.trt_profiles import parse_shapes, profile_summary

        profiles = parse_shapes(shapes, min_shapes=min_shapes, opt_shapes=opt_shapes, max_shapes=max_shapes)
        import_tensorrt()  # exit 4 before any work or any directory is made
        ensure_writable_file(output)
        if is_onnx:
            from pathlib import Path

            if not Path(checkpoint).is_file():
                raise InputError(f"ONNX model {checkpoint} does not exist; export one with `repdeploy export`")
            build = build_engine(checkpoint, output, precision=precision or onnx_precision(checkpoint),
                                 profiles=profiles, input_size=input_size,
                                 cache_dir=cache_dir or Path(output).parent / "trt_cache", verbose=verbose)
        else:
            from ..checkpoints import load_fused

            plain, loaded, eq = load_fused(checkpoint, **load_kwargs)
            build = build_engine_from_model(plain, output, input_size=input_size or plain.spec.input_size,
                                            precision=precision or "fp32", profiles=profiles,
                                            cache_dir=cache_dir, verbose=verbose)
        record = {"input": str(checkpoint), "format": "trt", **build.to_dict()}
        emit(record, as_json, lambda r: (
            f"built {r['precision']} engine -> {r['engine']} ({'from the engine cache' if r['cached'] else 'new build'}, "
            f"TensorRT {r['tensorrt_version']}, {'strongly' if r['strongly_typed'] else 'weakly'} typed)\n"
            f"  profile: {profile_summary(build.profiles)}"))
        return
    ensure_writable_file(output)
    if is_onnx and input_format != "float":
        from ..pipeline.export import pixel_input_from_onnx

        record = pixel_input_from_onnx(checkpoint, output, input_format)
        emit(record, as_json, lambda r: f"{r['input']} -> {r['output']} ({input_format} input)\n"
                                        f"  input:       {r['input_format_verdict']['line']}")
        return
    refuse_other_kind(output, "onnx")
    if is_onnx:
        raise InputError(f"{checkpoint} is already ONNX; give a checkpoint, or --format trt to build an engine from it")
    from ..pipeline.export import ExportSettings, export_model

    result = export_model(checkpoint, output, ExportSettings(
        input_size=input_size, opset=opset, precision=precision or "fp32", labels=labels, input_format=input_format,
        load_kwargs=load_kwargs))
    parity, in_graph = result.parity, result.record["input_format_verdict"]
    emit(result.record, as_json, lambda r: (
        f"exported {r['variant']} -> {r['output']} ({r['precision']}, opset {r['opset']}, dynamic batch and HxW, "
        f"nominal {r['input_size']}x{r['input_size']})\n"
        f"  ORT vs torch: max abs diff {parity.max_abs_diff:.3g}, max rel diff {parity.max_rel_diff:.3g} "
        f"(tolerance {r['ort_parity_tolerance']:g}), top-1 agreement {parity.top1_agreement:.0%}: PASSED"
        + (f"\n  input:       {in_graph['line']}" if in_graph else "")
    ))


COMMANDS = [inspect_cmd, fuse_cmd, export_cmd]
