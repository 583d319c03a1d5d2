"""Post-training quantization end to end: `quantize(checkpoint, ...)` -> a verified INT8 ONNX.

Steps: load and fuse (verified), calibrate activation ranges on sample images (or read a
calibration cache), export FP32 and INT8 QDQ ONNX, run both in ONNX Runtime against the torch
fake-quant model, optionally evaluate accuracy, and write per-layer diagnostics. Every output
is staged in a hidden directory inside OUTDIR and moved into place only when all of them are
complete, so a failure leaves nothing behind that looks finished.

This module is the workflow; what it takes in is `ptq_inputs`, the ONNX checks `fidelity`, what
it hands back `ptq_report`. The function signature is the contract the pipeline (issue 5) and
the CLI call; keep it stable. It stays at about 360 lines because the workflow reads best as
one function from arguments to committed files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import defaults
from ..version import __version__
from ..errors import AccuracyGateError, DataError, InputError, VerificationError
from ..io import ensure_writable_dir, write_json_atomic
from ..rundir import (clean_stale_scratch, commit_files, make_scratch_dir, refuse_foreign_outputs,
                      refuse_overwriting_inputs)
from ..models.plain import PlainNet
from .calib import calibrate
from .calib_cache import CalibrationCache
from .calibrators import DEFAULT_PERCENTILE
from ..ingraph import check_input_format
from ..tolerance import MIN_VERIFY_IMAGES
from .fidelity import VERIFY_IMAGES, images_for, onnx_accuracy, verification_split, verify_int8
from .ptq_inputs import at_input_size, check_quantize_arguments, load_plain
from .ptq_report import (QuantizeResult, accuracy_gate, check_fidelity_bounds, diagnostics_probe, diagnostics_record,
                         fidelity_gate, status_word)
from .quantizer import QuantPlainNet

BATCH = 32
FALLBACK_HOLDOUT = 256  # labelled calibration-source images the float layers are chosen on


def quantize(
    model: str | os.PathLike | PlainNet | torch.nn.Module,
    *,
    output_dir: str | os.PathLike,
    calib_data: Any = None,
    forward_loop: Callable[[torch.nn.Module], Any] | None = None,
    calib_samples: int = defaults.CALIB_SAMPLES,
    calib_method: str = defaults.CALIB_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    calib_cache: str | os.PathLike | None = None,
    target: str = defaults.TARGET,
    eval_data: Any = None,
    eval_limit: int | None = None,
    max_drop: float | None = None,
    fallback: bool = False,
    seed: int = 0,
    load_kwargs: dict | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    allow_mismatch: bool = False,
    resize: int | None = None,
    preprocessing=None,
    device: str | torch.device | None = defaults.DEVICE,
    labels: str | os.PathLike | None = None,
    input_format: str = "float",
    diagnostics: str = defaults.DIAGNOSTICS,
    input_size: int | None = None,
    min_sqnr: float | None = None,
    min_agreement: float | None = None,
) -> QuantizeResult:
    """Quantize a checkpoint (or a fused PlainNet) to INT8 and verify it.

    Writes into `output_dir`: fused.pt, model_fp32.onnx, model_int8_<target>.onnx, calib.json,
    report.json. Calibration data, `calib_data`: an image folder, .npy/.npz or "builtin", or a
    tensor/array of images (N,C,H,W) (a seeded sample of `calib_samples` images of either); or an
    iterable of batches such as a torch DataLoader (its first `calib_samples` images); or instead
    `forward_loop`, a callable that runs the model it is given over your data (as in ModelOpt).
    In-memory images are model inputs, preprocessed as for training. Zoo models default to the
    built-in set. `eval_data` is a path, an (images, labels) pair of arrays/tensors, or a DataLoader
    of (images, labels) batches. `calib_cache` skips
    calibration and uses the ranges of a calib.json made for the same model. With `eval_data`
    (labelled), FP32 and INT8 top-1/top-5 are measured on ONNX Runtime; with `max_drop` too, a
    larger top-1 drop raises AccuracyGateError (exit 3) after the outputs are written; with
    `fallback` as well, the most sensitive layers are first returned to float (listed in the
    report under `fallback`) until the drop of the fake-quant model fits on a holdout of the
    calibration source's labelled images, disjoint from the calibration sample and never the
    eval set; the eval accuracy is then measured after that choice.
    `mean`/`std` override the preprocessing statistics (ImageNet for files and arrays, the
    digits' own for the built-in set) of both calibration and evaluation data, and `resize` the
    shorter side before the centre crop. The preprocessing record (preprocess.Preprocessing) is
    taken from `preprocessing`, else the one the model file or `calib_cache` carries, so a model
    is fed as it was calibrated; the record used is written into every output (fused.pt extra,
    both ONNX metadata_props, calib.json, report.json).
    `device` ("auto", "cpu", "cuda[:N]") is where calibration and the torch side of the
    verification run; export, diagnostics and files are computed on the CPU from the same
    ranges, so the outputs do not depend on it beyond float tolerance.
    `labels` (a file, one class name per line) names the classes in the ONNX metadata (default: the
    model's own names, the data's class folders, the zoo's digits: data/labels.py). `input_format`
    "uint8-nhwc"/"uint8-nchw" also writes model_int8_<target>_uint8_nhwc.onnx (or _nchw), which
    takes 8-bit pixels and normalises them in the graph (ingraph.py), with its own verdict.
    `input_size` feeds the model at that size instead of its variant's (recorded in every output).
    `diagnostics` ("sample", "full", "off"; quant/diagnostics.py) sets what the report's
    per-layer `layers` cost; report `timings` gives every stage's seconds.

    Every numeric hand-off gets a verdict (report `verdicts`, see repdeploy/verify.py): fusion,
    ORT FP32 vs torch FP32, ORT INT8 vs torch fake-quant. A failed one makes the report FAILED
    and raises VerificationError (exit 1) after the outputs are written, unless `allow_mismatch`,
    which the report then records. Verdicts are computed on the eval images when given, else on
    images held out of calibration (report `verify_images`, `verify_disjoint`). `min_sqnr` (dB) /
    `min_agreement` (0-1) gate the INT8 ONNX's fidelity to FP32 on them, without labels, with
    AccuracyGateError (exit 3) as `max_drop` does with labels.

    >>> r = quantize("ckpt.pth", calib_data="calib/", eval_data="val/", output_dir="out/")  # doctest: +SKIP
    >>> r.top1_drop, r.int8_onnx.name                                                      # doctest: +SKIP
    (0.4, 'model_int8_ort.onnx')
    >>> r = quantize(plain, calib_data=torch_loader, output_dir="out/")                    # doctest: +SKIP
    """
    from ..devices import resolve_device
    from .diagnostics import check_mode

    check_mode(diagnostics)
    check_quantize_arguments(calib_method, target, calib_samples, percentile, max_drop, eval_data, eval_limit,
                             seed, fallback, resize, input_size)
    where = resolve_device(device)
    names = {"fused": "fused.pt", "fp32": "model_fp32.onnx", "int8": f"model_int8_{target}.onnx",
             "calib": "calib.json", "report": "report.json"}
    if check_input_format(input_format) != "float":
        names["int8_pixels"] = f"model_int8_{target}_{input_format.replace('-', '_')}.onnx"
    source_path = model if isinstance(model, (str, os.PathLike)) else None
    # (--calib-cache may be OUTDIR/calib.json: it is read before anything is written, and written
    # back with the same ranges.)
    paths = [v for v in (source_path, calib_data, eval_data) if isinstance(v, (str, os.PathLike))]  # not in-memory data
    refuse_overwriting_inputs(paths, files=[Path(output_dir) / n for n in names.values()])
    refuse_overwriting_inputs([calib_cache], files=[Path(output_dir) / n for k, n in names.items() if k != "calib"])
    refuse_foreign_outputs(output_dir, names.values())  # the user's own fused.pt or report.json is never replaced
    created = not Path(output_dir).exists()
    out = ensure_writable_dir(output_dir)
    try:
        return _quantize(model, out, names, calib_data, forward_loop, calib_samples, calib_method, percentile,
                         calib_cache, target, eval_data, eval_limit, max_drop, fallback, seed, load_kwargs, mean, std,
                         where, allow_mismatch=allow_mismatch, resize=resize, preprocessing=preprocessing,
                         labels=labels, input_format=input_format, diagnostics=diagnostics, input_size=input_size,
                         fidelity_bounds=check_fidelity_bounds(min_sqnr, min_agreement))
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: a failed run leaves no new directory behind
        raise


def _quantize(model, out: Path, names: dict, calib_data, forward_loop, calib_samples: int, calib_method: str,
              percentile: float,
              calib_cache, target: str, eval_data, eval_limit: int | None, max_drop: float | None, fallback: bool,
              seed: int, load_kwargs: dict | None, mean, std, where, *, allow_mismatch: bool = False,
              resize: int | None = None, preprocessing=None, labels=None, input_format: str = "float",
              diagnostics: str = defaults.DIAGNOSTICS, input_size: int | None = None,
              fidelity_bounds: dict | None = None) -> QuantizeResult:
    from ..checkpoints import save_fused
    from ..data import ImageDataset, as_dataset, calibration_sample, holdout_split, same_images
    from .calib_data import from_dataset, open_calibration_data
    from ..export.onnx import export_onnx
    from ..export.qdq import check_tensorrt_qdq, count_fused_nodes, export_qdq, integer_node_count
    from ..data.labels import class_names_for
    from ..ingraph import pixels_from_inputs, write_checked
    from ..preprocess import Preprocessing, class_names_of, preprocessing_of
    from ..progress import status, timed
    from ..verify import failed, fusion_verdict, sanity_warnings

    clean_stale_scratch(out)  # staging of killed runs (and finishing a commit one was killed in)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    status("quantize: loading the model")  # fusing and proving a big model takes seconds
    plain, info = load_plain(model, load_kwargs or {})
    plain = at_input_size(plain, input_size)
    spec = plain.spec
    timings["load_s"] = time.perf_counter() - started
    status(f"quantize: {info['variant']} from {info['source']} -> {target} INT8")

    # Everything that can reject the input is checked before any expensive step.
    cache_in = None
    if calib_cache is not None:
        cache_in = CalibrationCache.load(calib_cache)
        cache_in.check_model(plain, source=str(calib_cache))
    if preprocessing is None and isinstance(model, (str, os.PathLike)):
        preprocessing = preprocessing_of(model)
    if preprocessing is None and cache_in is not None and isinstance(cache_in.data.get("preprocessing"), dict):
        preprocessing = Preprocessing.from_dict(cache_in.data["preprocessing"], f"{calib_cache} data.preprocessing")

    def in_memory(source) -> bool:
        return not isinstance(source, (str, os.PathLike, ImageDataset))

    def image_set(source, split: str):  # the forms `evaluate` takes too (data/forms.py)
        return as_dataset(source, split=split, image_size=spec.input_size, channels=spec.in_channels, mean=mean,
                          std=std, resize=resize, preprocessing=preprocessing, what=f"{split} data")

    if forward_loop is not None and calib_data is not None:
        raise InputError("give calib_data or forward_loop, not both")
    if forward_loop is not None and not callable(forward_loop):
        raise InputError(f"forward_loop must be a callable taking the model, got {type(forward_loop).__name__}")
    if calib_data is None and cache_in is None and forward_loop is None:
        if not info.get("zoo"):
            raise DataError("no calibration data: pass --calib-data (image folder, .npy/.npz, or 'builtin' "
                            "for the built-in digits) or --calib-cache FILE")
        calib_data = "builtin"
    # One record feeds calibration and evaluation alike: the given one, the model's or the
    # cache's, else the evaluation data's defaults (where a wrong one shows in the accuracy).
    eval_set = image_set(eval_data, "val") if eval_data is not None else None
    if preprocessing is None and eval_set is not None:
        preprocessing = eval_set.preprocessing
    n_verify = images_for(spec.input_size, VERIFY_IMAGES, MIN_VERIFY_IMAGES)
    if eval_limit is not None:
        n_verify = max(1, min(n_verify, eval_limit))
    calib_set = holdout = held_out = None
    if fallback and max_drop is not None:
        if calib_data is None:
            raise DataError("--fallback-float with --calib-cache needs --calib-data too: the layers to leave in "
                            "float are chosen on a labelled holdout of the calibration images, never the eval set")
        pool, holdout = holdout_split(image_set(calib_data, "train"), FALLBACK_HOLDOUT, seed)
        if not holdout.has_labels:
            raise DataError(f"--fallback-float needs labelled calibration images ({calib_data} has no labels): the "
                            "layers are chosen on a holdout of them; use class folders or labels in the .npz")
        if eval_set is not None and same_images(holdout, eval_set):
            raise DataError(f"--fallback-float: the calibration data {calib_data} is the eval data {eval_data}; "
                            "give calibration images of their own (a train split) so layers are not chosen on the "
                            "images they are judged on")
        if cache_in is None:
            calib_set = calibration_sample(pool, calib_samples, seed)
    elif cache_in is None and forward_loop is None and not in_memory(calib_data):
        pool = image_set(calib_data, "train")
        if eval_set is None:  # verdicts on images calibration never saw
            pool, held_out = verification_split(pool, calib_samples, n_verify, seed)
        calib_set = calibration_sample(pool, calib_samples, seed)
    calib_source = None
    if calib_set is not None:
        calib_source = from_dataset(calib_set, BATCH)
    elif cache_in is None and forward_loop is None:
        calib_source = open_calibration_data(calib_data, samples=calib_samples, seed=seed, image_size=spec.input_size,
                                             channels=spec.in_channels, batch_size=BATCH, mean=mean, std=std)
    if eval_set is not None:
        from ..data.folders import check_class_match

        check_class_match(eval_set, spec.num_classes, info["variant"])  # by name, never shifted by position
    if eval_set is not None and not eval_set.has_labels:
        raise DataError(f"eval data {eval_set.source} has no labels; give a class-folder layout or labels in the .npz")
    if labels is not None:
        class_names_for(spec.num_classes, labels=labels)  # a labels file that does not fit fails before any work

    qnet = QuantPlainNet(plain, target).to(where)
    timings["data_s"] = time.perf_counter() - started - timings["load_s"]
    seen: list[torch.Tensor] = []  # the first calibration images, to verify on when there is no eval data
    with timed(timings, "calibration_s", None if cache_in is not None else f"quantize: calibrating ({calib_method}) "
               f"on {calib_source.source if calib_source is not None else 'the forward_loop data'}"):
        if cache_in is not None:
            qnet.load_ranges(cache_in.amax)
            cache = cache_in
        else:
            cache = calibrate(qnet, calib_source.batches() if calib_source is not None else None,
                              forward_loop=forward_loop, method=calib_method, percentile=percentile,
                              total_batches=calib_source.total_batches if calib_source is not None else None,
                              data=calib_source.describe() if calib_source is not None else {"source": "forward_loop"},
                              keep_inputs=seen, keep_limit=n_verify)
        qnet.cpu()
    timings.update({f"calibration_{stage}": v for stage, v in cache.timings.items()})

    fallback_record = None
    if holdout is not None:
        from .sensitivity import restore_sensitive_layers

        with timed(timings, "fallback_s", f"quantize: top-1 drop on {len(holdout)} held-out calibration images"):
            xs, ys = zip(*holdout.batches(BATCH))
            fallback_record = restore_sensitive_layers(plain, qnet, torch.cat(xs), torch.cat(ys), max_drop=max_drop)
        fallback_record.holdout_source, fallback_record.holdout_split = holdout.source, holdout.split
        fallback_record.holdout_images = len(holdout)
        if fallback_record.float_layers:
            status(f"quantize: left in float to meet --max-drop {max_drop}: {', '.join(fallback_record.float_layers)}")

    # Verification images: the eval set when given, else images held out of calibration, else
    # (forward_loop, in-memory data) the first calibration images, which the report says.
    verify_set = None
    overlap = eval_set is not None and calib_set is not None and same_images(calib_set, eval_set)
    disjoint = held_out is not None or (eval_set is not None and not overlap)
    if eval_set is not None or held_out is not None:
        verify_set = eval_set if eval_set is not None else held_out
        verify_name = verify_set.source + ("" if eval_set is not None else " (held out of calibration)")
        x_verify = torch.cat([x for x, _ in verify_set.batches(BATCH, limit=n_verify)])
        verify_set = None  # (the record below is calibration's or the eval set's)
    elif seen:
        verify_name = calib_source.source if calib_source is not None else "forward_loop inputs"
        x_verify = torch.cat(seen)
    elif calib_data is not None and in_memory(calib_data):
        # cache given with in-memory data: the first images of that data
        first = open_calibration_data(calib_data, samples=n_verify, seed=seed, image_size=spec.input_size,
                                      channels=spec.in_channels, batch_size=BATCH, mean=mean, std=std)
        verify_name = first.source
        x_verify = torch.cat(list(first.batches()))
    else:  # cache given, no eval data: the first images of the val split
        verify_set = image_set(calib_data if calib_data is not None else "builtin", "val")
        disjoint = verify_set.split == "val"
        verify_name = verify_set.source
        x_verify = torch.cat([x for x, _ in verify_set.batches(BATCH, limit=n_verify)])
    if cache_in is not None:  # a hand-edited range must not pass as calibration (issue 21 N9)
        observed = calibrate(QuantPlainNet(plain, target), [x_verify], method="max", data={"source": verify_name})
        cache_in.check_plausible(observed.amax, source=str(calib_cache), data=verify_name)
    # The record the model is fed with from now on: what calibration (or the evaluation) used.
    # In-memory tensors carry none: the caller prepared them, and the outputs say so (None).
    fed = next((d for d in (calib_set, eval_set, verify_set) if d is not None), None)
    record = fed.preprocessing if fed is not None else preprocessing
    record_dict = record.to_dict() if record is not None else None
    path = model if isinstance(model, (str, os.PathLike)) else None
    class_names = class_names_for(spec.num_classes, labels=labels, recorded=class_names_of(path) if path else None,
                                  datasets=(calib_set, eval_set, verify_set), model_path=path)

    stage = make_scratch_dir(out, "set", "quantize")
    try:
        with timed(timings, "export_s", "quantize: exporting fused.pt and the FP32 ONNX"):
            save_fused(plain, stage / names["fused"], extra={"source": info["source"], "preprocessing": record_dict,
                                                             "class_names": class_names})
            export_onnx(plain, stage / names["fp32"], input_size=spec.input_size, in_channels=spec.in_channels,
                        preprocessing=record, class_names=class_names)
            status(f"quantize: writing the INT8 QDQ graph ({target} layout)")  # seconds apart on a big model
            export_qdq(qnet, stage / names["fp32"], stage / names["int8"], target=target)
            cache.save(stage / names["calib"])

        t0 = time.perf_counter()
        status(f"quantize: verifying ONNX Runtime against torch on {len(x_verify)} images")
        with diagnostics_probe(plain, qnet, x_verify, diagnostics) as probe:  # per-layer figures off its passes
            report = verify_int8(plain, qnet, stage / names["fp32"], stage / names["int8"], x_verify, target, where,
                                 record=record, lead=probe.images)
        report["verify_disjoint"] = bool(disjoint)  # no verification image is a calibration image
        fusion = fusion_verdict(info.get("fusion"))
        if fusion is not None:
            report["verdicts"].insert(0, fusion.to_dict())
        report["verify_data"] = verify_name
        if "int8_pixels" in names:  # the real verification images, as the 8-bit pixels they came from
            if record is None:
                raise InputError(f"--input-format {input_format} needs a preprocessing record; in-memory data carries "
                                 "none: pass preprocessing=")
            report["verdicts"].append(write_checked(stage / names["int8"], stage / names["int8_pixels"], record,
                                                    input_format, pixels_from_inputs(x_verify.numpy(), record)).to_dict())
        import onnx

        if target == "tensorrt":
            report["tensorrt_rule_violations"] = check_tensorrt_qdq(onnx.load(str(stage / names["int8"])))
        fused_nodes = count_fused_nodes(stage / names["int8"])
        report["ort_fused_nodes"] = fused_nodes
        report["ort_integer_nodes"] = integer_node_count(fused_nodes)
        timings["verify_s"] = time.perf_counter() - t0 - probe.seconds

        if eval_set is not None:
            with timed(timings, "eval_s", f"quantize: evaluating FP32 and INT8 on {eval_set.source}"):
                report.update(onnx_accuracy(stage / names["fp32"], stage / names["int8"], eval_set, eval_limit))
        with timed(timings, "diagnostics_s"):
            per_layer = diagnostics_record(plain, qnet, x_verify, diagnostics, probe)
        timings["diagnostics_s"] += probe.seconds
        timings["total_s"] = time.perf_counter() - started

        mismatches = failed(report["verdicts"])
        report["warnings"] = sanity_warnings(
            fp32_top1=report.get("fp32_top1"), num_classes=spec.num_classes, eval_images=report.get("eval_images"),
            calib_on_eval=overlap, verify_images=report["verify_images"])
        gate = accuracy_gate(max_drop, report)
        fgate = fidelity_gate(fidelity_bounds, report)
        gate_failures = ([f"top-1 drop {report['top1_drop']:.2f} points > --max-drop {max_drop:g}"]
                         if gate and gate["passed"] is False else []) + (fgate or {}).get("failures", [])
        report = {
            "tool": f"repdeploy {__version__}",
            "status": status_word(mismatches, allow_mismatch, gate_failures),
            "failures": mismatches + gate_failures,
            "allow_mismatch": allow_mismatch,
            "model": info["variant"], "source": info["source"], "arch": spec.to_dict(),
            "fusion": info.get("fusion"),
            "calib_method": cache.method, "calib_samples": cache.samples,
            "calib_percentile": cache.percentile, "calib_cache_used": str(calib_cache) if calib_cache else None,
            "calib_data": cache.data, "target": target, "device": str(where),
            "preprocessing": record_dict,
            **report,
            "accuracy_gate": gate,
            "fidelity_gate": fgate,
            "float_layers": qnet.float_layers(),
            "fallback": fallback_record.to_dict() if fallback_record is not None else None,
            **per_layer,
            "files": dict(names),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        write_json_atomic(stage / names["report"], report)
        # report.json goes last: its presence means every other file is complete and of this run.
        commit_files(stage, out, [names[k] for k in ("fused", "fp32", "int8", "int8_pixels", "calib", "report")
                                  if k in names])
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    result = QuantizeResult.from_report(out, names, report, qnet, target, gate)
    if mismatches and not allow_mismatch:
        raise VerificationError(f"{info['variant']}: {mismatches[0]}; the INT8 model does not compute what was "
                                f"measured (see {result.report_path} verdicts); pass --allow-mismatch to keep it anyway")
    if gate_failures:
        dropped = (f"INT8 top-1 dropped {report['top1_drop']:.2f} points > --max-drop {max_drop}"
                   if gate and gate["passed"] is False else f"INT8 {gate_failures[0]}")
        raise AccuracyGateError(f"{info['variant']}: {dropped}; see {result.report_path} "
                                "(layers_summary.most_sensitive_layers) or try QAT")
    return result
