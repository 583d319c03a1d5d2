"""Latency through repdeploy's own runners and harness (what `repdeploy bench` and the pipeline
report): ORT FP32 vs INT8 (`ort` QDQ layout) at batch 1 and 8 with 1 and 2 threads, and torch
eager fused vs train form, for RepVGG-A0 and RepVGG-B1 at 224.

Random weights with trained-like BN statistics (latency only; accuracy is meaningless here),
calibrated on seeded normal images. Every pair being compared (fp32/int8, fused/train) is
measured in the same run, interleaved round by round, and reported as a ratio of medians.
Prints one JSON line per figure.

    .venv/bin/python benchmarks/ort_latency.py [--archs RepVGG-A0,RepVGG-B1] [--rounds 3] [--duration 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import torch

SIZE = 224


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="RepVGG-A0,RepVGG-B1")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=1.5, help="min seconds per measurement")
    ap.add_argument("--iterations", type=int, default=5, help="min iterations per measurement")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # CV warnings: the JSON carries the CV itself

    from repdeploy.bench import bench, cpu_model
    from repdeploy.export.onnx import export_onnx
    from repdeploy.export.qdq import export_qdq
    from repdeploy.fuse import fuse
    from repdeploy.models import build, get_spec
    from repdeploy.models.layers import randomize_batchnorm
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet
    from repdeploy.runtime.ort import OrtRunner
    from repdeploy.runtime.torch import TorchRunner

    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    common = {"input_size": SIZE, "cpu": cpu_model(), "rounds": args.rounds, "min_duration_s": args.duration,
              "torch": torch.__version__}

    def measure(runner, batch: int) -> tuple[float, float]:
        r = bench(runner, batch=batch, warmup=0.3, duration=args.duration, iterations=args.iterations)
        return r.stats.p50_ms, r.stats.cv

    for arch in args.archs.split(","):
        torch.manual_seed(0)
        train = randomize_batchnorm(build(get_spec(arch), "train"), 0).eval()
        plain = fuse(train).plain.eval()
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(plain, Path(d) / "fp32.onnx", input_size=SIZE)
            qnet = QuantPlainNet(plain, target="ort")
            g = torch.Generator().manual_seed(0)
            qnet.set_weight_ranges()
            calibrate(qnet, (torch.randn(8, 3, SIZE, SIZE, generator=g) for _ in range(args.calib_images // 8)),
                      method="max")
            int8 = export_qdq(qnet, fp32, Path(d) / "int8_ort.onnx", target="ort")
            for t in threads:
                runners = {"fp32": OrtRunner(fp32, intra_op_threads=t, inter_op_threads=1).activate(),
                           "int8": OrtRunner(int8, intra_op_threads=t, inter_op_threads=1).activate()}
                for b in batches:
                    ms = {"fp32": [], "int8": []}
                    cvs = {"fp32": [], "int8": []}
                    for i in range(args.rounds):
                        order = ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")
                        for label in order:
                            p50, cv = measure(runners[label], b)
                            ms[label].append(p50)
                            cvs[label].append(cv)
                    f, q = statistics.median(ms["fp32"]), statistics.median(ms["int8"])
                    base = {"arch": arch, "engine": "ort", "batch": b, "threads": t, **common,
                            "load_avg_1m": round(os.getloadavg()[0], 2)}
                    print(json.dumps({"figure": "ort_fp32_p50_ms", "value": round(f, 3), "cv": round(max(cvs["fp32"]), 3), **base}), flush=True)
                    print(json.dumps({"figure": "ort_int8_p50_ms", "value": round(q, 3), "cv": round(max(cvs["int8"]), 3), **base}), flush=True)
                    print(json.dumps({"figure": "ort_int8_over_fp32", "value": round(q / f, 3),
                                      "per_round": [round(a / c, 3) for a, c in zip(ms["int8"], ms["fp32"])], **base}), flush=True)
                for r in runners.values():
                    r.deactivate()
        if args.skip_torch:
            continue
        t = max(threads)
        runners = {"fused": TorchRunner(plain, threads=t, input_size=SIZE).activate(), "train": TorchRunner(train, threads=t, input_size=SIZE).activate()}
        ms = {"fused": [], "train": []}
        for i in range(args.rounds):
            for label in (("fused", "train") if i % 2 == 0 else ("train", "fused")):
                ms[label].append(measure(runners[label], 1)[0])
        for r in runners.values():
            r.deactivate()
        f, tr = statistics.median(ms["fused"]), statistics.median(ms["train"])
        base = {"arch": arch, "engine": "torch", "batch": 1, "threads": t, **common,
                "load_avg_1m": round(os.getloadavg()[0], 2)}
        print(json.dumps({"figure": "torch_fused_p50_ms", "value": round(f, 3), **base}), flush=True)
        print(json.dumps({"figure": "torch_train_form_p50_ms", "value": round(tr, 3), **base}), flush=True)
        print(json.dumps({"figure": "torch_train_over_fused", "value": round(tr / f, 3), **base}), flush=True)


if __name__ == "__main__":
    main()
