"""INT8 PTQ accuracy on the shipped zoo: our calibrators vs onnxruntime's quantize_static (issue 4).

For every zoo model (repdeploy/assets/zoo/zoo.json): top-1 on the built-in val split (400
images) of FP32, of our `ort` INT8 with each calibration method, and of onnxruntime's own
`quantize_static` (QDQ, uint8 activations, per-channel int8 weights, MinMax) on the same FP32
ONNX and the same calibration images. Also SQNR of the logits and the diagnostics summary that
explains the difference between RepVGG and RepOpt-VGG. Prints one JSON line per figure.

    .venv/bin/python benchmarks/ptq_accuracy.py [--calib-samples 512] [--methods entropy,max,percentile,mse]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from repdeploy.data import calibration_sample, open_dataset
from repdeploy.evaluate import accuracy_from_logits, sqnr_db
from repdeploy.export.onnx import ort_session
from repdeploy.progress import set_quiet
from repdeploy.quant.ptq import quantize
from repdeploy.zoo import builtin_zoo


def logits_of(path: Path, dataset) -> tuple[np.ndarray, np.ndarray]:
    s = ort_session(path)
    name = s.get_inputs()[0].name
    outs, labels = [], []
    for x, y in dataset.batches(100):
        outs.append(s.run(None, {name: x.numpy()})[0])
        labels.append(y.numpy())
    return np.concatenate(outs), np.concatenate(labels)


def ort_quantize_static(fp32: Path, out: Path, calib) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = ({"input": x.numpy()} for x, _ in calib.batches(1))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--methods", default="entropy,max,percentile,mse")
    args = ap.parse_args()
    set_quiet(True)
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    with tempfile.TemporaryDirectory() as tmp:
        for entry in builtin_zoo():
            runs = {}
            for method in args.methods.split(","):
                r = quantize(str(entry.file), output_dir=Path(tmp) / entry.name / method, calib_data="builtin",
                             calib_samples=args.calib_samples, calib_method=method, eval_data="builtin")
                runs[method] = r
                rep = r.report
                print(json.dumps({
                    "figure": "zoo_ptq_accuracy", "model": rep["model"], "family": rep["arch"]["family"],
                    "quantizer": f"repdeploy {method}", "calib_samples": rep["calib_samples"],
                    "fp32_top1": rep["fp32_top1"], "int8_top1": rep["int8_top1"], "top1_drop": round(rep["top1_drop"], 2),
                    "sqnr_db": round(rep["sqnr_db"], 2), "top1_agreement": rep["top1_agreement"],
                    "layers_summary": rep["layers_summary"],
                }), flush=True)
            first = next(iter(runs.values()))
            spec = first.qnet.spec
            calib = calibration_sample(open_dataset("builtin", split="train", image_size=spec.input_size),
                                       args.calib_samples, 0)
            val = open_dataset("builtin", split="val", image_size=spec.input_size)
            own = Path(tmp) / entry.name / "ort_quantize_static.onnx"
            ort_quantize_static(first.fp32_onnx, own, calib)
            fp32_logits, labels = logits_of(first.fp32_onnx, val)
            int8_logits, _ = logits_of(own, val)
            fp32_top1, _ = accuracy_from_logits(fp32_logits, labels)
            int8_top1, _ = accuracy_from_logits(int8_logits, labels)
            print(json.dumps({
                "figure": "zoo_ptq_accuracy", "model": spec.name, "family": spec.family,
                "quantizer": "onnxruntime quantize_static MinMax", "calib_samples": len(calib),
                "fp32_top1": fp32_top1, "int8_top1": int8_top1, "top1_drop": round(fp32_top1 - int8_top1, 2),
                "sqnr_db": round(sqnr_db(fp32_logits, int8_logits), 2),
                "top1_agreement": float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean()),
            }), flush=True)


if __name__ == "__main__":
    main()
