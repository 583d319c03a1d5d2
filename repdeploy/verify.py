"""Verdicts on every numeric hand-off, and the sanity warnings a report must show.

Each step that hands numbers to the next (fusion, torch FP32 -> ONNX Runtime FP32, torch
fake-quant -> ONNX Runtime INT8, ONNX Runtime -> TensorRT) is judged against a stated tolerance
and gets a `Verdict`. A failed verdict makes the model FAILED, with the verdict's line as the
reason; the command still writes every output and then exits 1, unless the user passed
`--allow-mismatch`, which the report records. Sanity warnings (an FP32 accuracy at or below
chance, too few evaluation images, calibration on the evaluation images) do not fail a model
but sit beside its figures in every report format.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .evaluate import sqnr_db, top1_agreement

#: relative tolerances, as a fraction of the largest |logit| of the reference model
FUSION_REL_TOL = 1e-4  # fuse.py's own check; fp32 fusion error is 1e-8 .. 5e-5 upstream
FP32_ORT_REL_TOL = 1e-4  # the same function in the same precision: only summation order differs
# INT8: ORT's integer kernels requantize with integer rounding where torch fake-quant rounds in
# float, so now and then an activation lands one step off and that flip can move a logit by a few
# percent of the largest (measured: 4.7 % on a fragile model whose other logits agree to 3e-6).
# A max-based figure is ruled by such single flips, as a latency std is by single spikes; the
# judged figure is the SQNR of the candidate against the reference (noise power below 1/1000 of
# the signal), with the class picked almost never changing. A wrong scale, a missing or extra
# Q/DQ or a layer quantized on one side only lands far below (0-20 dB).
INT8_ORT_MIN_SQNR_DB = 30.0
INT8_ORT_MIN_AGREEMENT = 0.99
TRT_MIN_SQNR_DB = 30.0  # TensorRT picks its own kernels (and may fuse differently) for the same graph
TRT_MIN_AGREEMENT = 0.99
#: fewer evaluation images than this and a top-1 figure moves by more than a point per image
MIN_EVAL_IMAGES = 100


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison: what was compared, the figure, the tolerance, passed or not."""

    check: str  # fusion | ort_fp32 | ort_int8 | trt_fp32 | trt_int8
    reference: str
    candidate: str
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float | None  # on max_rel_diff; None: reported, not judged
    passed: bool
    top1_agreement: float | None = None  # fraction 0-1
    min_agreement: float | None = None
    images: int | None = None
    sqnr_db: float | None = None  # candidate vs reference; None when identical (infinite)
    min_sqnr_db: float | None = None

    def line(self) -> str:
        """One readable line, e.g. 'ort_int8 (ORT INT8 vs torch fake-quant): SQNR 12.0 dB < 30 dB, ...: FAILED'."""
        parts = []
        if self.tolerance is not None:
            sign = "<=" if self.max_rel_diff <= self.tolerance else ">"
            parts.append(f"max rel diff {self.max_rel_diff:.1e} {sign} {self.tolerance:.0e}")
        if self.min_sqnr_db is not None:
            sq = math.inf if self.sqnr_db is None else self.sqnr_db
            parts.append(f"SQNR {sq:.1f} dB {'>=' if sq >= self.min_sqnr_db else '<'} {self.min_sqnr_db:g} dB")
        if self.top1_agreement is not None and self.min_agreement is not None:
            sign = ">=" if self.top1_agreement >= self.min_agreement else "<"
            parts.append(f"top-1 agreement {self.top1_agreement:.1%} {sign} {self.min_agreement:.0%}")
        if self.tolerance is None:
            parts.append(f"max rel diff {self.max_rel_diff:.1e}")
        return f"{self.check} ({self.candidate} vs {self.reference}): {', '.join(parts)}: " + (
            "passed" if self.passed else "FAILED")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["line"] = self.line()
        return d


def judge_logits(check: str, reference: np.ndarray, candidate: np.ndarray, *, reference_name: str,
                   candidate_name: str, tolerance: float | None = None, min_agreement: float | None = None,
                   min_sqnr_db: float | None = None) -> Verdict:
    """Judge `candidate` logits against `reference` logits (same inputs, same order) on the
    figures given a bound: max relative difference, SQNR, top-1 agreement."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"{check}: logits of shapes {ref.shape} and {cand.shape} cannot be compared")
    diff = float(np.abs(ref - cand).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    agreement = top1_agreement(ref, cand) if ref.ndim == 2 and len(ref) else None
    sqnr = sqnr_db(ref, cand)
    sqnr = None if sqnr == math.inf else sqnr  # identical: no noise to report
    passed = ((tolerance is None or rel <= tolerance)
              and (min_sqnr_db is None or sqnr is None or sqnr >= min_sqnr_db)
              and (min_agreement is None or agreement is None or agreement >= min_agreement))
    return Verdict(check, reference_name, candidate_name, diff, rel, tolerance, passed, agreement,
                   min_agreement, int(ref.shape[0]) if ref.ndim else None, sqnr, min_sqnr_db)


def fusion_verdict(equivalence: dict | None) -> Verdict | None:
    """The fusion check's figures (fuse.Equivalence.to_dict()) as a verdict; None for an already-plain model."""
    if not equivalence or "max_rel_diff" not in equivalence:
        return None
    rel, tol = float(equivalence["max_rel_diff"]), float(equivalence.get("tolerance", FUSION_REL_TOL))
    return Verdict("fusion", "trained form", "fused PlainNet", float(equivalence["max_abs_diff"]), rel, tol,
                   bool(equivalence.get("passed", rel <= tol)),
                   images=(equivalence.get("input_shape") or [None])[0])


def failed(verdicts: Sequence[Verdict | dict]) -> list[str]:
    """The lines of the failed verdicts (records or dicts), in order."""
    out = []
    for v in verdicts:
        d = v if isinstance(v, dict) else v.to_dict()
        if not d.get("passed"):
            out.append(d.get("line") or d.get("check", "?"))
    return out


def parity_cell(verdicts: Sequence[dict], allowed: bool = False) -> str:
    """The report's parity column: 'ok' when every verdict passed, else 'MISMATCH' and the failed checks."""
    if not verdicts:
        return "-"
    bad = [d["check"] for d in verdicts if not d.get("passed")]
    if not bad:
        return "ok"
    return f"MISMATCH ({', '.join(bad)}){' allowed' if allowed else ''}"


def sanity_warnings(*, fp32_top1: float | None, num_classes: int | None, eval_images: int | None,
                    calib_on_eval: bool) -> list[dict]:
    """Warnings that do not fail a model but must stand beside its figures.

    Each is {"flag": a short label for the table's notes column, "message": the full sentence}.
    """
    warnings = []
    if fp32_top1 is not None and num_classes:
        chance = 100.0 / num_classes
        if fp32_top1 <= chance:
            warnings.append(warning("at/below chance", f"FP32 top-1 {fp32_top1:.2f} % is at or below chance "
                                    f"({chance:.2f} % for {num_classes} classes): wrong data, labels or "
                                    "preprocessing (--mean/--std/--resize)?"))
    if eval_images is not None and eval_images < MIN_EVAL_IMAGES:
        warnings.append(warning(f"{eval_images} eval images", f"only {eval_images} evaluation images "
                                f"(< {MIN_EVAL_IMAGES}): one image moves top-1 by {100.0 / max(1, eval_images):.1f} points"))
    if calib_on_eval:
        warnings.append(warning("calibrated on eval", "calibrated on the evaluation images: the INT8 accuracy is "
                                "optimistic; pass --calib-data"))
    return warnings


def warning(flag: str, message: str) -> dict:
    """One report warning: a short flag for the table and the full message beneath it."""
    return {"flag": flag, "message": message}
