"""What a `quantize` run hands back: `QuantizeResult`, the accuracy gate on its top-1 drop, and
the per-layer part of its report (shared with `qat`).

The result is built from report.json's content, so the typed figures a caller reads are the ones
the report holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.plain import PlainNet
from .diagnostics import HOOK_BATCH, OWN_STRIDE, SQNRProbe, diagnose, summary
from .fidelity import images_for
from .quantizer import QuantPlainNet

SAMPLE_IMAGES = 32  # at <= 64 px; fewer at larger inputs (sample_size), never under 8


def sample_size(input_size: int) -> int:
    """Images the diagnostics run on at `input_size` (32 at 32 px, 8 at 224 px)."""
    return images_for(input_size, SAMPLE_IMAGES, HOOK_BATCH)


def diagnostics_probe(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, mode: str) -> SQNRProbe:
    """Hooks to enter around verification on `x`: they take the per-layer figures off its passes
    over the diagnostics' sample (none with mode "off"); `diagnostics_record(..., probe)` reads them."""
    images = 0 if mode == "off" else min(len(x), sample_size(plain.spec.input_size))
    return SQNRProbe(plain, qnet, images, own_stride=1 if mode == "full" else OWN_STRIDE)


def diagnostics_record(plain: PlainNet, qnet: QuantPlainNet, x: torch.Tensor, mode: str,
                       probe: SQNRProbe | None = None) -> dict:
    """The per-layer part of a quantize/qat report.json: `diagnostics`, `layers_summary`, `layers`
    (from `probe`'s hooks when they saw the sample, else from a float and a fake-quant pass here)."""
    from ..progress import status

    x = x[: sample_size(plain.spec.input_size)]
    if mode != "off":
        status(f"per-layer diagnostics ({mode}) on {len(x)} images")
    layers = diagnose(plain, qnet, x, mode=mode, probe=probe)
    return {"diagnostics": {"mode": mode, "images": len(x) if mode != "off" else 0},
            "layers_summary": summary(layers), "layers": [r.to_dict() for r in layers]}


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
    # What the checks found: PASSED, KEPT (a failed verdict kept by allow_mismatch) or FAILED; the
    # failed verdicts' lines (exit 1 at the command line) and the failed gates' (exit 3).
    status: str = "PASSED"
    verification_failures: list[str] = field(default_factory=list)
    gate_failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status != "FAILED"

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "fused": str(self.fused), "fp32_onnx": str(self.fp32_onnx),
                "int8_onnx": str(self.int8_onnx), "calib_cache": str(self.calib_cache),
                "report": str(self.report_path), "target": self.target, "calib_method": self.calib_method,
                "calib_samples": self.calib_samples, "sqnr_db": self.sqnr_db, "top1_agreement": self.top1_agreement,
                "ort_parity_passed": self.ort_parity_passed, "fp32_top1": self.fp32_top1,
                "int8_top1": self.int8_top1, "top1_drop": self.top1_drop, "gate_passed": self.gate_passed,
                "float_layers": self.float_layers, "status": self.status,
                "verification_failures": self.verification_failures, "gate_failures": self.gate_failures}

    @classmethod
    def from_report(cls, out: Path, names: dict, report: dict, qnet: QuantPlainNet, target: str,
                    gate: dict | None) -> "QuantizeResult":
        """The result of a run that wrote `names` into `out`, its figures read from `report`."""
        return cls(
            out, out / names["fused"], out / names["fp32"], out / names["int8"], out / names["calib"],
            out / names["report"], report, qnet, target=target, calib_method=report["calib_method"],
            calib_samples=report["calib_samples"], sqnr_db=report["sqnr_db"], top1_agreement=report["top1_agreement"],
            ort_parity_passed=report["ort_parity"]["passed"], fp32_top1=report.get("fp32_top1"),
            int8_top1=report.get("int8_top1"), top1_drop=report.get("top1_drop"),
            gate_passed=gate["passed"] if gate else None, float_layers=list(report["float_layers"]),
            status=report["status"], verification_failures=list(report["verification_failures"]),
            gate_failures=list(report["gate_failures"]))


def accuracy_gate(max_drop: float | None, figures: dict) -> dict | None:
    """The --max-drop verdict on the measured top-1 drop (`passed` None: no eval data to measure it on)."""
    if max_drop is not None and "top1_drop" in figures:
        return {"max_drop": max_drop, "passed": figures["top1_drop"] <= max_drop}
    if max_drop is not None:
        return {"max_drop": max_drop, "passed": None, "note": "no --eval-data: drop not measured"}
    return None


def check_fidelity_bounds(min_sqnr: float | None, min_agreement: float | None) -> dict | None:
    """The label-free gate's bounds, checked before any work: SQNR in dB, agreement as a fraction 0-1."""
    import math

    from ..errors import InputError

    if min_sqnr is not None and not math.isfinite(min_sqnr):
        raise InputError(f"--min-sqnr {min_sqnr}: give a finite number of dB (e.g. 20)")
    if min_agreement is not None and not (math.isfinite(min_agreement) and 0.0 <= min_agreement <= 1.0):
        raise InputError(f"--min-agreement {min_agreement}: give a fraction 0-1 (e.g. 0.9 for 90 %)")
    if min_sqnr is None and min_agreement is None:
        return None
    return {"min_sqnr_db": min_sqnr, "min_agreement": min_agreement}


def fidelity_gate(bounds: dict | None, figures: dict) -> dict | None:
    """The label-free gate: INT8 ONNX vs FP32 ONNX SQNR and top-1 agreement on the verification
    images, against --min-sqnr / --min-agreement (exit 3, as --max-drop with labels)."""
    if bounds is None:
        return None
    failures = []
    sq, agree = figures.get("sqnr_db"), figures.get("top1_agreement")
    if bounds["min_sqnr_db"] is not None and sq is not None and sq < bounds["min_sqnr_db"]:
        failures.append(f"SQNR vs FP32 {sq:.2f} dB < --min-sqnr {bounds['min_sqnr_db']:g}")
    if bounds["min_agreement"] is not None and agree is not None and agree < bounds["min_agreement"]:
        failures.append(f"top-1 agreement with FP32 {agree:.1%} < --min-agreement {bounds['min_agreement']:.1%}")
    return {**bounds, "sqnr_db": sq, "top1_agreement": agree, "images": figures.get("verify_images"),
            "passed": not failures, "failures": failures}


def status_word(mismatches: list, allow_mismatch: bool, gate_failures: list) -> str:
    """FAILED on a failed verdict or gate; KEPT when --allow-mismatch kept a model whose check
    failed (never PASSED); PASSED otherwise."""
    if (mismatches and not allow_mismatch) or gate_failures:
        return "FAILED"
    return "KEPT" if mismatches else "PASSED"
