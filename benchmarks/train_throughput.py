"""Training throughput and peak memory: RepVGG (branch train form, SGD) vs RepOpt-VGG (plain, RepOptimizer-SGD).

Both models of a pair have the same layout (depths, widths); RepOpt-VGG trains the single 3x3
conv + BN per block with gradient multipliers, RepVGG trains three branches with three BNs. Each
measurement runs in its own subprocess so its peak RSS (VmHWM) is its own; `train_mem_mb` is the
peak minus the RSS after building the model (activations, gradients, optimizer state). Runs are
interleaved in rounds so machine noise hits both alike; the median is reported. The paper reports
1.8x faster training for RepOpt-VGG-B1 on GPU. Prints one JSON line per figure.

    .venv/bin/python benchmarks/train_throughput.py [--pairs mini,a0] [--rounds 3] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PAIRS = {
    # name: (RepVGG variant, input size, batch)
    "mini": ("RepVGG-mini", 32, 64),
    "a0": ("RepVGG-A0", 64, 32),
}


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(family: str, variant: str, size: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    import dataclasses

    import torch
    import torch.nn.functional as F

    from repdeploy.data import open_dataset
    from repdeploy.models import build, get_spec
    from repdeploy.optim import MultiplierMap, SGDWithMultipliers
    from repdeploy.optim.repopt import expected_scale_keys, repopt_initialize, set_repopt_multipliers
    from repdeploy.train import parameter_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = get_spec(variant, num_classes=10)
    if family == "repvgg":
        spec, form = base, "train"
    else:
        # The RepOpt-VGG counterpart of the same layout (no groups, no SE, as RepOpt-VGG has none).
        spec, form = dataclasses.replace(base, name=f"RepOpt({variant})", family="repopt", groups=(), use_se=False), "target"
    model = build(spec, form).train()
    multipliers = MultiplierMap(model)
    if family == "repopt":
        g = torch.Generator().manual_seed(0)
        scales = {k: torch.rand(n, generator=g) + 0.5 for k, n in expected_scale_keys(spec).items()}
        repopt_initialize(model, scales, g)
        set_repopt_multipliers(multipliers, spec, scales, "sgd")
    opt = SGDWithMultipliers(parameter_groups(model, 1e-4), multipliers, lr=0.01, momentum=0.9)
    x, y = next(open_dataset("builtin", split="train", image_size=size).batches(batch))
    baseline = _rss_mb("VmRSS")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    peak = _rss_mb("VmHWM")
    return {
        "model": spec.name, "family": family, "form": form, "input_size": size, "batch": batch, "threads": threads,
        "params": sum(p.numel() for p in model.parameters()), "steps": steps,
        "images_per_s": batch * steps / seconds, "peak_rss_mb": peak, "train_mem_mb": peak - baseline,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="mini,a0", help=f"comma-separated, from {', '.join(PAIRS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--worker", nargs=4, metavar=("FAMILY", "VARIANT", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        family, variant, size, batch = args.worker
        print(json.dumps(worker(family, variant, int(size), int(batch), args.steps, args.warmup, args.threads)))
        return

    for pair in args.pairs.split(","):
        variant, size, batch = PAIRS[pair]
        runs: dict[str, list[dict]] = {"repvgg": [], "repopt": []}
        for _ in range(args.rounds):
            for family in ("repvgg", "repopt"):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", family, variant, str(size), str(batch),
                     "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)],
                    check=True, capture_output=True, text=True,
                )
                runs[family].append(json.loads(out.stdout.strip().splitlines()[-1]))
        medians = {}
        for family, records in runs.items():
            rec = dict(records[0])
            for key in ("images_per_s", "peak_rss_mb", "train_mem_mb"):
                rec[key] = round(statistics.median(r[key] for r in records), 1)
            rec["rounds"] = args.rounds
            medians[family] = rec
            print(json.dumps({"figure": "train_throughput", "pair": pair, **rec}))
        print(json.dumps({
            "figure": "train_speedup_repopt_over_repvgg", "pair": pair,
            "value": round(medians["repopt"]["images_per_s"] / medians["repvgg"]["images_per_s"], 3),
        }))
        print(json.dumps({
            "figure": "train_memory_ratio_repopt_over_repvgg", "pair": pair,
            "value": round(medians["repopt"]["train_mem_mb"] / max(1e-9, medians["repvgg"]["train_mem_mb"]), 3),
        }))


if __name__ == "__main__":
    main()
