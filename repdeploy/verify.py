"""What a report makes of the verdicts, and the sanity warnings it must show.

The verdicts themselves (figures, the named tolerance of each hand-off, the rules) come from
repdeploy/tolerance.py, the one comparison. A failed verdict makes the model FAILED, with the
verdict's line as the reason; the command still writes every output and then exits 1, unless the user passed
`--allow-mismatch`, which the report records. Sanity warnings (an FP32 accuracy at or below
chance, too few evaluation images, calibration on the evaluation images) do not fail a model
but sit beside its figures in every report format.
"""

from __future__ import annotations

from typing import Sequence

from .tolerance import MIN_VERIFY_IMAGES, Verdict, tolerance

#: fewer evaluation images than this and a top-1 figure moves by more than a point per image
MIN_EVAL_IMAGES = 100


def fusion_verdict(equivalence: dict | None) -> Verdict | None:
    """The fusion check's figures (fuse.Equivalence.to_dict()) as a verdict; None for an already-plain model."""
    if not equivalence or "max_rel_diff" not in equivalence:
        return None
    rel, tol = float(equivalence["max_rel_diff"]), float(equivalence.get("tolerance", tolerance("fusion").max_rel))
    return Verdict("fusion", "trained form", "fused PlainNet", "relative", float(equivalence["max_abs_diff"]), rel,
                   bool(equivalence.get("passed", rel <= tol)), tolerance=tol,
                   images=(equivalence.get("input_shape") or [None])[0])


def failed(verdicts: Sequence[Verdict | dict]) -> list[str]:
    """The lines of the failed verdicts (records or dicts), in order."""
    out = []
    for v in verdicts:
        d = v if isinstance(v, dict) else v.to_dict()
        if not d.get("passed"):
            out.append(d.get("line") or d.get("check", "?"))
    return out


def kept_line(failures: Sequence[str]) -> str:
    """What a report prints for a model kept by --allow-mismatch: never PASSED."""
    return "KEPT despite a failed check (--allow-mismatch): " + "; ".join(failures)


def parity_cell(verdicts: Sequence[dict], allowed: bool = False) -> str:
    """The report's parity column: 'ok' when every verdict passed, else 'MISMATCH' and the failed checks."""
    if not verdicts:
        return "-"
    bad = [d["check"] for d in verdicts if not d.get("passed")]
    if not bad:
        return "ok"
    return f"MISMATCH ({', '.join(bad)}){' allowed' if allowed else ''}"


def sanity_warnings(*, fp32_top1: float | None, num_classes: int | None, eval_images: int | None,
                    calib_on_eval: bool, verify_images: int | None = None) -> list[dict]:
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
    if verify_images is not None and verify_images < MIN_VERIFY_IMAGES:
        warnings.append(warning(f"{verify_images} verify images", f"verdicts on only {verify_images} images "
                                f"(< {MIN_VERIFY_IMAGES}): the agreement test can hardly fail; give more calibration "
                                "images (some are held out) or --eval-data"))
    if calib_on_eval:
        warnings.append(warning("calibrated on eval", "calibrated on the evaluation images: the INT8 accuracy is "
                                "optimistic; pass --calib-data"))
    return warnings


def warning(flag: str, message: str) -> dict:
    """One report warning: a short flag for the table and the full message beneath it."""
    return {"flag": flag, "message": message}
