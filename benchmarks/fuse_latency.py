"""Torch eager latency: train form vs fused PlainNet, measured in one run (issue: foundation).

Prints one JSON line per model. Reference on this machine kind: timm's own fusion gives 1.53x
(A0) and 1.28x (B1g4) at 224, batch 1.

    .venv/bin/python benchmarks/fuse_latency.py [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from repdeploy.fuse import fuse
from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


@torch.inference_mode()
def median_ms(model, x, repeats: int) -> float:
    for _ in range(5):
        model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--models", default="RepVGG-A0,RepVGG-B1g4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 224, 224)
    for name in args.models.split(","):
        torch.manual_seed(0)
        train = randomize_batchnorm(build(get_spec(name), "train")).eval()
        plain = fuse(train).plain.eval()
        # Interleave the two so drift in machine load hits both alike.
        t_train, t_fused = [], []
        for _ in range(3):
            t_train.append(median_ms(train, x, args.repeats // 3))
            t_fused.append(median_ms(plain, x, args.repeats // 3))
        tt, tf = statistics.median(t_train), statistics.median(t_fused)
        print(json.dumps({
            "figure": "torch_eager_fused_speedup", "model": name, "input": "1x3x224x224",
            "threads": args.threads, "train_ms": round(tt, 2), "fused_ms": round(tf, 2),
            "speedup": round(tt / tf, 3), "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
