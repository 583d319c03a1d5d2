"""A correct real-size INT8 deployment, built the way `quantize` builds one, for verdict tests.

`deploy(arch, seed, target, directory)`: a real-size model (tests/realsize.py), calibrated on
photo crops, exported to FP32 and INT8 ONNX with its preprocessing record, and the torch FP32
and fake-quant logits on verification crops that calibration never saw. `judge(d, int8_onnx)`
runs the verdicts `quantize` gives (quant.fidelity.int8_verdicts) on any INT8 file, such as one
with a planted fault (tests/planted_faults.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realsize import IMAGENET_MEAN, IMAGENET_STD, photo_batch, realistic_model
from repdeploy import export_onnx, fuse, Preprocessing
from repdeploy.export.qdq import export_qdq
from repdeploy.quant.calib import calibrate
from repdeploy.quant.fidelity import int8_verdicts, run_ort
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.tolerance import MIN_VERIFY_IMAGES

CALIB_IMAGES = 32
RECORD = Preprocessing(input_size=224, resize=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass
class Deployment:
    arch: str
    seed: int
    target: str
    qnet: QuantPlainNet
    fp32_onnx: Path
    int8_onnx: Path
    x: torch.Tensor  # verification crops, disjoint from the calibration crops (other seed)
    fp32: np.ndarray  # torch FP32 logits on x
    fake: np.ndarray  # torch fake-quant logits on x
    fp32_ort: np.ndarray  # the FP32 ONNX's logits on x (computed once per model)


@torch.no_grad()
def _logits(model, x: torch.Tensor) -> np.ndarray:
    return np.concatenate([model(c).numpy() for c in x.split(32)])


@torch.no_grad()
def deploy_all(arch: str, seed: int, targets: tuple[str, ...], directory: Path,
               images: int = MIN_VERIFY_IMAGES, calib_images: int = CALIB_IMAGES) -> dict[str, Deployment]:
    """One calibration (the cache serves both layouts, as calib.json does), one export per target."""
    plain = fuse(realistic_model(arch, seed)).plain.eval()
    x = photo_batch(images, 224, seed=5000 + seed)
    fp32 = _logits(plain, x)
    directory.mkdir(parents=True, exist_ok=True)
    fp32_onnx = export_onnx(plain, directory / "model_fp32.onnx", input_size=224, preprocessing=RECORD)
    fp32_ort = run_ort(fp32_onnx, x)
    calib = photo_batch(calib_images, 224, seed=4000 + seed)
    ranges = None
    out = {}
    for target in targets:
        qnet = QuantPlainNet(plain, target)
        if ranges is None:
            cache = calibrate(qnet, list(calib.split(16)))
            ranges = cache.amax
        else:
            qnet.load_ranges(ranges)
        qnet.eval()
        int8 = export_qdq(qnet, fp32_onnx, directory / f"model_int8_{target}.onnx", target=target)
        out[target] = Deployment(arch, seed, target, qnet, fp32_onnx, int8, x, fp32, _logits(qnet, x), fp32_ort)
    return out


def judge(d: Deployment, int8_onnx: Path | None = None) -> dict[str, dict]:
    """The verdicts `quantize` gives this deployment (or `int8_onnx` in its place), by check."""
    verdicts, _ = int8_verdicts(d.fp32, d.fake, d.qnet, d.fp32_onnx, int8_onnx or d.int8_onnx, d.x, RECORD,
                                fp32_ort=d.fp32_ort)
    return {v.check: v.to_dict() for v in verdicts}
