"""Run the same inputs through two models (any runner: torch, ORT, TensorRT) and compare outputs.

What `polygraphy run --onnxrt --trt` does for one pair of backends, for any two model files a
user has (checkpoint, fused .pt, FP32/FP16/INT8 ONNX, engine): identical batches go through
both runners, and the logits are judged by the `compare` entry of the one tolerance table
(repdeploy/tolerance.py): numpy's `allclose` rule per element (|a - b| <= atol + rtol * |a|, a
being the reference MODEL_A as in Polygraphy), with the figures every hand-off reports: max
absolute and relative difference (over the logit scale), top-1 agreement and SQNR. A comparison
past the tolerances is FAILED: `Comparison.passed` says so, and the command line exits 1 (a
verification error, ToleranceError).

Inputs: images from `data` (preprocessed for the first model's input size) or, without data,
seeded standard-normal batches, as Polygraphy's default data loader does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import DataError, InputError
from .tolerance import TOLERANCES, allclose_rule, figures, judge

#: Polygraphy's defaults (the table's `compare` entry); an FP16 or INT8 model against FP32 needs looser ones.
DEFAULT_ATOL = TOLERANCES["compare"].atol
DEFAULT_RTOL = TOLERANCES["compare"].rtol
DEFAULT_SAMPLES = 16


@dataclass
class Comparison:
    """How two models' logits differ on the same inputs."""

    model_a: str
    engine_a: str
    model_b: str
    engine_b: str
    inputs: str
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float  # max |a - b| over the largest |a| (tolerance.figures)
    top1_agreement: float  # fraction 0-1
    sqnr_db: float | None  # None when both are identical (infinite)
    atol: float
    rtol: float
    mismatched: int  # elements outside atol + rtol * |a|
    passed: bool
    top1_a: float | None = None  # accuracy (%) when the inputs carry labels
    top1_b: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_logits(a: np.ndarray, b: np.ndarray, *, atol: float = DEFAULT_ATOL,
                   rtol: float = DEFAULT_RTOL) -> dict:
    """The comparison figures and allclose verdict for two logit arrays (`a` is the reference)."""
    v = judge("compare", a, b, reference_name="A", candidate_name="B", rule=allclose_rule(atol, rtol))
    return {"max_abs_diff": v.max_abs_diff, "mean_abs_diff": figures(a, b)["mean_abs_diff"],
            "max_rel_diff": v.max_rel_diff, "top1_agreement": v.top1_agreement, "sqnr_db": v.sqnr_db,
            "mismatched": v.mismatched, "passed": v.passed, "atol": atol, "rtol": rtol}


def default_engine(model: Any) -> str:
    """trt for engines, ort for ONNX, torch for modules and checkpoints."""
    from .runtime import model_kind

    if not isinstance(model, (str, Path)):
        return "torch"
    return {"engine": "trt", "onnx": "ort"}.get(model_kind(model), "torch")


@dataclass(frozen=True)
class CompareSettings:
    """Every option of `compare`: how each model runs, what it is fed, and the tolerances."""

    engine_a: str | None = None  # None: default_engine of the model
    engine_b: str | None = None
    data: str | None = None  # images; None: seeded standard-normal batches
    samples: int = DEFAULT_SAMPLES
    batch_size: int = 8
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    seed: int = 0
    threads: int | None = None
    device: str | None = "auto"
    load_kwargs: Mapping[str, Any] | None = None


def compare(model_a: Any, model_b: Any, settings: CompareSettings | None = None, **options: Any) -> Comparison:
    """Compare two models on the same inputs; the Comparison's `passed` is the verdict (never raised:
    the command line exits 1 on a failed one).

    `settings` holds every option (CompareSettings); any of its fields may be given as a keyword.

    >>> compare("model_fp32.onnx", "model.engine", atol=1e-3, rtol=1e-3).top1_agreement  # doctest: +SKIP
    1.0
    """
    from .validate import with_options

    s = with_options(CompareSettings, settings, options, "compare")
    engine_a, engine_b, data, samples, batch_size = s.engine_a, s.engine_b, s.data, s.samples, s.batch_size
    atol, rtol, seed, threads, device, load_kwargs = s.atol, s.rtol, s.seed, s.threads, s.device, s.load_kwargs
    from .data import open_dataset
    from .evaluate import accuracy_from_logits
    from .runtime import model_kind, open_runner

    if samples < 1 or batch_size < 1:
        raise InputError(f"--samples and --batch-size must be >= 1, got {samples} and {batch_size}")
    engine_a = engine_a or default_engine(model_a)
    engine_b = engine_b or default_engine(model_b)

    def runner(model, engine):
        kwargs = dict(load_kwargs or {}) if isinstance(model, (str, Path)) and model_kind(model) == "checkpoint" else {}
        return open_runner(model, engine, threads=threads, device=device, **kwargs)

    with runner(model_a, engine_a) as ra, runner(model_b, engine_b) as rb:
        meta_a, meta_b = ra.get_input_metadata(), rb.get_input_metadata()
        size = meta_a.image_size or meta_b.image_size
        channels = meta_a.channels or meta_b.channels or 3
        if size is None:
            raise InputError(f"cannot tell the input size of {ra.name} or {rb.name}; compare models with a known size")
        from .validate import fits_in_memory

        fits_in_memory("--samples", 4.0 * samples * channels * size * size, f"{samples} inputs of {size} px")
        labels = None
        if data is not None:
            dataset = open_dataset(data, split="val", image_size=size, channels=channels)
            batches = [x.numpy() for x, _ in dataset.batches(batch_size, limit=samples)]
            if dataset.has_labels:
                labels = np.concatenate([y.numpy() for _, y in dataset.batches(batch_size, limit=samples)])
            source = f"{dataset.source} ({len(dataset)} images, first {min(samples, len(dataset))})"
        else:
            rng = np.random.default_rng(seed)
            batches = [rng.standard_normal((min(batch_size, samples - i), channels, size, size)).astype(np.float32)
                       for i in range(0, samples, batch_size)]
            source = f"seeded standard-normal inputs (seed {seed})"
        if not batches:
            raise DataError(f"no inputs to compare: {data} is empty")
        out_a = np.concatenate([ra.infer(x) for x in batches])
        out_b = np.concatenate([rb.infer(x) for x in batches])
        names = (ra.name, rb.name)
    figures = compare_logits(out_a, out_b, atol=atol, rtol=rtol)
    result = Comparison(model_a=str(names[0]), engine_a=engine_a, model_b=str(names[1]), engine_b=engine_b,
                        inputs=source, images=int(out_a.shape[0]), **figures)
    if labels is not None and out_a.ndim == 2 and labels.max() < out_a.shape[1]:
        result.top1_a = accuracy_from_logits(out_a, labels)[0]
        result.top1_b = accuracy_from_logits(out_b, labels)[0]
    return result


__all__ = ["Comparison", "CompareSettings", "compare", "compare_logits", "default_engine", "DEFAULT_ATOL", "DEFAULT_RTOL"]
