"""Fidelity of an exported INT8 ONNX: what PTQ and QAT check before they call a model deployable.

On the same images, in ONNX Runtime: the FP32 ONNX against the torch FP32 model, the INT8 ONNX
against the torch fake-quant model (parity: the graph computes what was calibrated or trained)
and against the FP32 ONNX (fidelity: SQNR and top-1 agreement); with labelled data, top-1/top-5
of both ONNX files. The verdicts and their tolerances are repdeploy.verify's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..models.plain import PlainNet
from .quantizer import QuantPlainNet

VERIFY_IMAGES = 256  # images used for torch-vs-ORT parity and FP32-vs-INT8 fidelity (at <= 64 px)
VERIFY_BATCH = 32  # images per forward pass and per ORT run


def images_for(input_size: int, count: int, floor: int) -> int:
    """Scale an image count set for <= 64 px inputs down with the pixel count (A0 at 224: 1/12).

    Verification and diagnostics run the fake-quant torch model, whose cost grows with the
    pixels; at 224 px the full counts took minutes on 2 cores for figures that settle sooner.
    """
    scale = min(1.0, (64.0 / max(1, input_size)) ** 2)
    return max(floor, min(count, int(round(count * scale))))


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    """Logits of an ONNX file on ONNX Runtime for NCHW images `x`, in batches."""
    from ..export.onnx import ort_session

    session = ort_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: chunk.numpy()})[0] for chunk in x.split(VERIFY_BATCH)])


@torch.no_grad()
def verify_int8(plain: PlainNet, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, x: torch.Tensor,
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
            return np.concatenate([model(chunk.to(device)).float().cpu().numpy() for chunk in x.split(VERIFY_BATCH)])
        finally:
            model.cpu()

    ref = logits(plain)
    fake = logits(qnet)
    fp32 = run_ort(fp32_onnx, x)
    int8 = run_ort(int8_onnx, x)
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


def onnx_accuracy(fp32_onnx: Path, int8_onnx: Path, dataset, limit: int | None) -> dict:
    """Top-1/top-5 of the FP32 and the INT8 ONNX on a labelled dataset, and their drops."""
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
