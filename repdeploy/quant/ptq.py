"""Post-training quantization end to end: `quantize(checkpoint, ...)` -> a verified INT8 ONNX.

Steps: load and fuse (verified), calibrate activation ranges on sample images (or read a
calibration cache), export FP32 and INT8 QDQ ONNX, run both in ONNX Runtime against the torch
fake-quant model, optionally evaluate accuracy, and write per-layer diagnostics. Every output
is staged in a hidden directory inside OUTDIR and moved into place only when all of them are
complete, so a failure leaves nothing behind that looks finished.

The function signature is the contract the pipeline (issue 5) and the CLI call; keep it stable.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__, defaults
from ..errors import AccuracyGateError, CheckpointError, DataError, InputError, VerificationError
from ..io import ensure_writable_dir, write_json_atomic
from ..rundir import clean_stale_scratch, commit_files, make_scratch_dir, refuse_overwriting_inputs
from ..models.plain import PlainNet
from .calib import calibrate
from .calib_cache import CalibrationCache
from .calibrators import DEFAULT_PERCENTILE, METHODS
from .quantizer import TARGETS, QuantPlainNet
from ..zoo import is_zoo_path

VERIFY_IMAGES = 256  # images used for torch-vs-ORT parity and FP32-vs-INT8 fidelity (at <= 64 px)
DIAGNOSE_IMAGES = 32  # images for per-layer SQNR (one forward per layer for the isolated figure)
BATCH = 32
FALLBACK_HOLDOUT = 256  # labelled calibration-source images the float layers are chosen on


def images_for(input_size: int, count: int, floor: int) -> int:
    """Scale an image count set for <= 64 px inputs down with the pixel count (A0 at 224: 1/12).

    Verification and diagnostics run the fake-quant torch model, whose cost grows with the
    pixels; at 224 px the full counts took minutes on 2 cores for figures that settle sooner.
    """
    scale = min(1.0, (64.0 / max(1, input_size)) ** 2)
    return max(floor, min(count, int(round(count * scale))))


@dataclass
class QuantizeResult:
    """What `quantize` wrote and measured. `report` is the content of report.json."""

    output_dir: Path
    fused: Path
    fp32_onnx: Path
    int8_onnx: Path
    calib_cache: Path
    report_path: Path
    report: dict = field(repr=False)
    qnet: QuantPlainNet = field(repr=False)
    # The headline figures of `report`, typed (None where not measured: no eval data).
    target: str = "ort"
    calib_method: str = ""
    calib_samples: int = 0
    sqnr_db: float | None = None  # FP32 vs INT8 logits on ONNX Runtime
    top1_agreement: float = 0.0  # FP32 vs INT8 top-1 on the verification images
    ort_parity_passed: bool = False  # ORT INT8 vs the torch fake-quant model
    fp32_top1: float | None = None
    int8_top1: float | None = None
    top1_drop: float | None = None
    gate_passed: bool | None = None  # None: no --max-drop, or no eval data to measure it on
    float_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "fused": str(self.fused), "fp32_onnx": str(self.fp32_onnx),
                "int8_onnx": str(self.int8_onnx), "calib_cache": str(self.calib_cache),
                "report": str(self.report_path), "target": self.target, "calib_method": self.calib_method,
                "calib_samples": self.calib_samples, "sqnr_db": self.sqnr_db, "top1_agreement": self.top1_agreement,
                "ort_parity_passed": self.ort_parity_passed, "fp32_top1": self.fp32_top1,
                "int8_top1": self.int8_top1, "top1_drop": self.top1_drop, "gate_passed": self.gate_passed,
                "float_layers": self.float_layers}


def _load_model(model: Any, load_kwargs: dict) -> tuple[PlainNet, dict]:
    from ..checkpoints import Loaded

    if isinstance(model, Loaded):  # what repdeploy.load() returns
        if model.model is None:
            raise InputError(f"{model.path}: a scales file has no weights to quantize; {model.deploy_steps}")
        model = model.model
    if isinstance(model, PlainNet):
        return model.eval(), {"source": "PlainNet (in memory)", "variant": model.spec.name, "zoo": False}
    if isinstance(model, torch.nn.Module) and hasattr(model, "spec"):  # a train-form model: fuse (verified)
        from ..fuse import fuse

        fused = fuse(model.eval())
        return fused.plain.eval(), {"source": f"{type(model).__name__} (in memory)", "variant": model.spec.name,
                                    "zoo": False, "fusion": fused.equivalence.to_dict()}
    if isinstance(model, (str, os.PathLike)):
        from ..checkpoints import load_fused

        path = Path(model)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist; give a .pth/.pt/.safetensors file")
        plain, loaded, equivalence = load_fused(path, **load_kwargs)
        info = {"source": str(path), "variant": loaded.spec.name, "format": loaded.format, "form": loaded.form,
                "zoo": is_zoo_path(path),
                "fusion": equivalence.to_dict() if equivalence is not None else None}
        return plain.eval(), info
    raise InputError(f"quantize takes a checkpoint path, a repdeploy model (PlainNet or a RepVGG/RepOpt-VGG "
                     f"module) or what repdeploy.load() returned, not {type(model).__name__}")


def _check_arguments(calib_method: str, target: str, calib_samples: int, percentile: float,
                     max_drop: float | None, eval_data=None, eval_limit: int | None = None, seed: int = 0,
                     fallback: bool = False, resize: int | None = None) -> None:
    from .. import validate

    validate.integer("--calib-samples", calib_samples, low=1, high=10_000_000, allow_none=False)
    validate.number("--percentile", percentile, allow_none=False)
    validate.integer("--eval-limit", eval_limit, low=1)
    validate.seed("--seed", seed)
    validate.integer("--resize", resize, low=1)
    if calib_method not in METHODS:
        raise InputError(f"unknown calibration method {calib_method!r}; use one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if calib_samples < 1:
        raise InputError(f"--calib-samples must be >= 1, got {calib_samples}")
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"--percentile must be in (0, 100], got {percentile}")
    validate.max_drop("--max-drop", max_drop)
    if max_drop is not None and eval_data is None and not fallback:
        # Without eval data the drop is never measured: the gate would silently pass everything.
        # (With fallback, max_drop is the budget the holdout choice meets; the pipeline gates after.)
        raise InputError(f"--max-drop {max_drop:g} needs --eval-data (labelled images) to measure the top-1 drop")


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
    device: str | torch.device | None = "auto",
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

    Every numeric hand-off gets a verdict (report `verdicts`, see repdeploy/verify.py): fusion,
    ORT FP32 vs torch FP32, ORT INT8 vs torch fake-quant. A failed one makes the report FAILED
    and raises VerificationError (exit 1) after the outputs are written, unless `allow_mismatch`,
    which the report then records.

    >>> r = quantize("ckpt.pth", calib_data="calib/", eval_data="val/", output_dir="out/")  # doctest: +SKIP
    >>> r.top1_drop, r.int8_onnx.name                                                      # doctest: +SKIP
    (0.4, 'model_int8_ort.onnx')
    >>> r = quantize(plain, calib_data=torch_loader, output_dir="out/")                    # doctest: +SKIP
    """
    from ..devices import resolve_device

    _check_arguments(calib_method, target, calib_samples, percentile, max_drop, eval_data, eval_limit, seed,
                     fallback, resize)
    where = resolve_device(device)
    names = {"fused": "fused.pt", "fp32": "model_fp32.onnx", "int8": f"model_int8_{target}.onnx",
             "calib": "calib.json", "report": "report.json"}
    source_path = model if isinstance(model, (str, os.PathLike)) else None
    # (--calib-cache may be OUTDIR/calib.json: it is read before anything is written, and written
    # back with the same ranges.)
    paths = [v for v in (source_path, calib_data, eval_data) if isinstance(v, (str, os.PathLike))]  # not in-memory data
    refuse_overwriting_inputs(paths, files=[Path(output_dir) / n for n in names.values()])
    refuse_overwriting_inputs([calib_cache], files=[Path(output_dir) / n for k, n in names.items() if k != "calib"])
    created = not Path(output_dir).exists()
    out = ensure_writable_dir(output_dir)
    try:
        return _quantize(model, out, names, calib_data, forward_loop, calib_samples, calib_method, percentile,
                         calib_cache, target, eval_data, eval_limit, max_drop, fallback, seed, load_kwargs, mean, std,
                         where, allow_mismatch=allow_mismatch, resize=resize, preprocessing=preprocessing)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: a failed run leaves no new directory behind
        raise


def _quantize(model, out: Path, names: dict, calib_data, forward_loop, calib_samples: int, calib_method: str,
              percentile: float,
              calib_cache, target: str, eval_data, eval_limit: int | None, max_drop: float | None, fallback: bool,
              seed: int, load_kwargs: dict | None, mean, std, where, *, allow_mismatch: bool = False,
              resize: int | None = None, preprocessing=None) -> QuantizeResult:
    from ..checkpoints import save_fused
    from ..data import ImageDataset, calibration_sample, from_arrays, holdout_split, open_dataset, same_images
    from .calib_data import from_dataset, labelled_arrays, open_calibration_data
    from ..export.onnx import export_onnx
    from ..export.qdq import check_tensorrt_qdq, count_fused_nodes, export_qdq, integer_node_count
    from ..preprocess import Preprocessing, preprocessing_of
    from ..progress import status
    from ..verify import failed, fusion_verdict, sanity_warnings

    clean_stale_scratch(out)  # staging of killed runs (and finishing a commit one was killed in)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    plain, info = _load_model(model, load_kwargs or {})
    spec = plain.spec
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

    def image_set(source, split: str):
        if isinstance(source, ImageDataset):
            return source
        if in_memory(source):  # (images, labels) arrays or a loader: tensors as the caller prepared them
            images, labels = labelled_arrays(source)
            return from_arrays(images, labels, image_size=spec.input_size, channels=spec.in_channels,
                               mean=mean, std=std, name=f"{type(source).__name__} (in memory)")
        return open_dataset(source, split=split, image_size=spec.input_size, channels=spec.in_channels,
                            mean=mean, std=std, resize=resize, preprocessing=preprocessing)

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
    calib_set = holdout = None
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
        calib_set = calibration_sample(image_set(calib_data, "train"), calib_samples, seed)
    calib_source = None
    if calib_set is not None:
        calib_source = from_dataset(calib_set, BATCH)
    elif cache_in is None and forward_loop is None:
        calib_source = open_calibration_data(calib_data, samples=calib_samples, seed=seed, image_size=spec.input_size,
                                             channels=spec.in_channels, batch_size=BATCH, mean=mean, std=std)
    if eval_set is not None and not eval_set.has_labels:
        raise DataError(f"eval data {eval_set.source} has no labels; give a class-folder layout or labels in the .npz")
    n_verify = images_for(spec.input_size, VERIFY_IMAGES, 32)
    if eval_limit is not None:
        n_verify = max(1, min(n_verify, eval_limit))

    qnet = QuantPlainNet(plain, target).to(where)
    t0 = time.perf_counter()
    seen: list[torch.Tensor] = []  # the first calibration images, to verify on when there is no eval data
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
    timings["calibration_s"] = time.perf_counter() - t0
    timings.update({f"calibration_{stage}": v for stage, v in cache.timings.items()})

    fallback_record = None
    if holdout is not None:
        from .sensitivity import restore_sensitive_layers

        t0 = time.perf_counter()
        xs, ys = zip(*holdout.batches(BATCH))
        fallback_record = restore_sensitive_layers(plain, qnet, torch.cat(xs), torch.cat(ys), max_drop=max_drop)
        fallback_record.holdout_source = holdout.source
        fallback_record.holdout_split = holdout.split
        fallback_record.holdout_images = len(holdout)
        timings["fallback_s"] = time.perf_counter() - t0
        if fallback_record.float_layers:
            status(f"quantize: left in float to meet --max-drop {max_drop}: {', '.join(fallback_record.float_layers)}")

    # Verification images: the eval set when given, otherwise the first calibration images.
    verify_set = None
    if eval_set is not None:
        verify_name = eval_set.source
        x_verify = torch.cat([x for x, _ in eval_set.batches(BATCH, limit=n_verify)])
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
        verify_name = verify_set.source
        x_verify = torch.cat([x for x, _ in verify_set.batches(BATCH, limit=n_verify)])
    # The record the model is fed with from now on: what calibration (or the evaluation) used.
    # In-memory tensors carry none: the caller prepared them, and the outputs say so (None).
    fed = next((d for d in (calib_set, eval_set, verify_set) if d is not None), None)
    record = fed.preprocessing if fed is not None else preprocessing
    record_dict = record.to_dict() if record is not None else None

    stage = make_scratch_dir(out, "set", "quantize")
    try:
        t0 = time.perf_counter()
        save_fused(plain, stage / names["fused"], extra={"source": info["source"], "preprocessing": record_dict})
        export_onnx(plain, stage / names["fp32"], input_size=spec.input_size, in_channels=spec.in_channels,
                    preprocessing=record)
        export_qdq(qnet, stage / names["fp32"], stage / names["int8"], target=target)
        cache.save(stage / names["calib"])
        timings["export_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = _verify(plain, qnet, stage / names["fp32"], stage / names["int8"], x_verify, target, where)
        fusion = fusion_verdict(info.get("fusion"))
        if fusion is not None:
            report["verdicts"].insert(0, fusion.to_dict())
        report["verify_data"] = verify_name
        import onnx

        if target == "tensorrt":
            report["tensorrt_rule_violations"] = check_tensorrt_qdq(onnx.load(str(stage / names["int8"])))
        fused_nodes = count_fused_nodes(stage / names["int8"])
        report["ort_fused_nodes"] = fused_nodes
        report["ort_integer_nodes"] = integer_node_count(fused_nodes)
        timings["verify_s"] = time.perf_counter() - t0

        if eval_set is not None:
            t0 = time.perf_counter()
            report.update(_accuracy(stage / names["fp32"], stage / names["int8"], eval_set, eval_limit))
            timings["eval_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from .diagnostics import diagnose, summary

        layers = diagnose(plain, qnet, x_verify[: images_for(spec.input_size, DIAGNOSE_IMAGES, 8)])
        timings["diagnostics_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started

        mismatches = failed(report["verdicts"])
        report["warnings"] = sanity_warnings(
            fp32_top1=report.get("fp32_top1"), num_classes=spec.num_classes, eval_images=report.get("eval_images"),
            calib_on_eval=eval_set is not None and calib_set is not None and same_images(calib_set, eval_set))
        gate = None
        if max_drop is not None and "top1_drop" in report:
            gate = {"max_drop": max_drop, "passed": report["top1_drop"] <= max_drop}
        elif max_drop is not None:
            gate = {"max_drop": max_drop, "passed": None, "note": "no --eval-data: drop not measured"}
        verdict = "FAILED" if (mismatches and not allow_mismatch) or (gate and gate["passed"] is False) else "PASSED"
        report = {
            "tool": f"repdeploy {__version__}",
            "status": verdict,
            "failures": mismatches + ([f"top-1 drop {report['top1_drop']:.2f} points > --max-drop {max_drop:g}"]
                                      if gate and gate["passed"] is False else []),
            "allow_mismatch": allow_mismatch,
            "model": info["variant"], "source": info["source"], "arch": spec.to_dict(),
            "fusion": info.get("fusion"),
            "calib_method": cache.method, "calib_samples": cache.samples,
            "calib_percentile": cache.percentile, "calib_cache_used": str(calib_cache) if calib_cache else None,
            "calib_data": cache.data, "target": target, "device": str(where),
            "preprocessing": record_dict,
            **report,
            "accuracy_gate": gate,
            "float_layers": qnet.float_layers(),
            "fallback": fallback_record.to_dict() if fallback_record is not None else None,
            "layers_summary": summary(layers),
            "layers": [r.to_dict() for r in layers],
            "files": dict(names),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }
        write_json_atomic(stage / names["report"], report)
        # report.json goes last: its presence means every other file is complete and of this run.
        commit_files(stage, out, [names[k] for k in ("fused", "fp32", "int8", "calib", "report")])
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    result = QuantizeResult(
        out, out / names["fused"], out / names["fp32"], out / names["int8"], out / names["calib"],
        out / names["report"], report, qnet, target=target, calib_method=report["calib_method"],
        calib_samples=report["calib_samples"], sqnr_db=report["sqnr_db"], top1_agreement=report["top1_agreement"],
        ort_parity_passed=report["ort_parity"]["passed"], fp32_top1=report.get("fp32_top1"),
        int8_top1=report.get("int8_top1"), top1_drop=report.get("top1_drop"),
        gate_passed=gate["passed"] if gate else None, float_layers=list(report["float_layers"]))
    if mismatches and not allow_mismatch:
        raise VerificationError(f"{info['variant']}: {mismatches[0]}; the INT8 model does not compute what was "
                                f"measured (see {result.report_path} verdicts); pass --allow-mismatch to keep it anyway")
    if gate is not None and gate["passed"] is False:
        raise AccuracyGateError(
            f"{info['variant']}: INT8 top-1 dropped {report['top1_drop']:.2f} points > --max-drop {max_drop}; "
            f"see {result.report_path} (layers_summary.most_sensitive_layers) or try QAT"
        )
    return result


def _run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    from ..export.onnx import ort_session

    session = ort_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: chunk.numpy()})[0] for chunk in x.split(BATCH)])


@torch.no_grad()
def _verify(plain: PlainNet, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, x: torch.Tensor,
            target: str, device: torch.device = torch.device("cpu")) -> dict:
    """Fidelity of the deployed INT8 ONNX vs FP32, and parity of ORT vs the torch fake-quant model.

    The torch models run on `device` and are back on the CPU afterwards.
    """
    from ..evaluate import sqnr_db, top1_agreement
    from .. import verify

    def logits(model) -> np.ndarray:
        # Batched: a whole verification set at 224 px through one forward would need gigabytes.
        model.to(device)
        try:
            return np.concatenate([model(chunk.to(device)).float().cpu().numpy() for chunk in x.split(BATCH)])
        finally:
            model.cpu()

    ref = logits(plain)
    fake = logits(qnet)
    fp32 = _run_ort(fp32_onnx, x)
    int8 = _run_ort(int8_onnx, x)
    fp32_verdict = verify.judge_logits("ort_fp32", ref, fp32, reference_name="torch FP32", candidate_name="ORT FP32",
                                         tolerance=verify.FP32_ORT_REL_TOL)
    int8_verdict = verify.judge_logits("ort_int8", fake, int8, reference_name="torch fake-quant",
                                         candidate_name="ORT INT8", min_sqnr_db=verify.INT8_ORT_MIN_SQNR_DB,
                                         min_agreement=verify.INT8_ORT_MIN_AGREEMENT)
    parity = {"max_abs_diff": int8_verdict.max_abs_diff, "max_rel_diff": int8_verdict.max_rel_diff,
              "top1_agreement": int8_verdict.top1_agreement, "images": int(x.shape[0]), "passed": int8_verdict.passed}
    record = {
        "verify_images": int(x.shape[0]),
        "sqnr_db": _json_float(sqnr_db(fp32, int8)),
        "top1_agreement": top1_agreement(fp32, int8),
        "torch_sqnr_db": _json_float(sqnr_db(ref, fake)),
        "torch_top1_agreement": top1_agreement(ref, fake),
        "ort_parity": parity,
        "fp32_ort_parity_max_abs_diff": fp32_verdict.max_abs_diff,
        "verdicts": [fp32_verdict.to_dict(), int8_verdict.to_dict()],
    }
    if target == "tensorrt":
        record["note"] = ("tensorrt layout: ONNX Runtime runs it unfused (in float) only to verify it; "
                          "it is not meant for ORT deployment")
    return record


def _accuracy(fp32_onnx: Path, int8_onnx: Path, dataset, limit: int | None) -> dict:
    from ..evaluate import evaluate
    from ..runtime import open_runner

    with open_runner(fp32_onnx, "ort", name="fp32") as r:
        fp32 = evaluate(r, dataset, limit=limit)
    with open_runner(int8_onnx, "ort", name="int8") as r:
        int8 = evaluate(r, dataset, limit=limit)
    rec = {"eval_data": dataset.source, "eval_images": fp32.images, "fp32_top1": fp32.top1,
           "int8_top1": int8.top1, "top1_drop": fp32.top1 - int8.top1,
           "fp32_top5": fp32.top5, "int8_top5": int8.top5}
    rec["top5_drop"] = fp32.top5 - int8.top5 if fp32.top5 is not None and int8.top5 is not None else None
    return rec


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None
