"""Training throughput and peak memory: RepVGG (branch train form, SGD) vs RepOpt-VGG (plain, RepOptimizer-SGD).

Both models of a pair have the same layout (depths, widths); RepOpt-VGG trains one 3x3 conv + BN
per block with gradient multipliers, RepVGG trains 3x3-BN + 1x1-BN (+ identity BN) branches.

- Throughput: both models live in one process and train in alternating blocks of steps, so load
  from other processes hits both alike; `images_per_s` is images over wall time summed across
  blocks, `images_per_cpu_s` over this process's CPU time (steadier on a shared machine), and the
  speed-up is the median of the per-block ratios.
- Memory: each model trains a few steps in its own subprocess, so its peak RSS (VmHWM) is its
  own; `train_mem_mb` is that peak minus the RSS after building the model and its batch
  (activations, gradients, optimizer state).

The paper reports 1.8x faster training for RepOpt-VGG-B1 on GPU. Prints one JSON line per figure.

    .venv/bin/python benchmarks/train_throughput.py [--pairs mini,a0] [--blocks 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PAIRS = {
    # name: (RepVGG variant, input size, batch, steps per block)
    "mini": ("RepVGG-mini", 32, 64, 5),
    "a0": ("RepVGG-A0", 64, 16, 3),
}
FAMILIES = ("repvgg", "repopt")


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def setup(family: str, variant: str, size: int, batch: int):
    """(spec, model, step function) for one side of a pair, seeded."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from repdeploy.data import open_dataset
    from repdeploy.models import VARIANTS, build, get_spec
    from repdeploy.optim import MultiplierMap, SGDWithMultipliers
    from repdeploy.optim.repopt import expected_scale_keys, repopt_initialize, set_repopt_multipliers
    from repdeploy.training.loop import parameter_groups

    torch.manual_seed(0)
    base = get_spec(variant, num_classes=10)
    if family == "repvgg":
        spec, form = base, "train"
    else:
        # The RepOpt-VGG counterpart of the same layout (no groups, no SE, as RepOpt-VGG has none).
        counterpart = variant.replace("RepVGG-", "RepOpt-VGG-")
        spec = (get_spec(counterpart, num_classes=10) if counterpart in VARIANTS else
                dataclasses.replace(base, name=f"RepOpt-VGG layout of {variant}", family="repopt", groups=(),
                                    use_se=False))
        form = "target"
    model = build(spec, form).train()
    multipliers = MultiplierMap(model)
    if family == "repopt":
        g = torch.Generator().manual_seed(0)
        scales = {k: torch.rand(n, generator=g) + 0.5 for k, n in expected_scale_keys(spec).items()}
        repopt_initialize(model, scales, g)
        set_repopt_multipliers(multipliers, spec, scales, "sgd")
    opt = SGDWithMultipliers(parameter_groups(model, 1e-4), multipliers, lr=0.01, momentum=0.9)
    x, y = next(open_dataset("builtin", split="train", image_size=size).batches(batch))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        opt.step()

    return spec, model, form, step


def memory_worker(family: str, variant: str, size: int, batch: int, steps: int) -> dict:
    spec, model, form, step = setup(family, variant, size, batch)
    baseline = _rss_mb("VmRSS")
    for _ in range(steps):
        step()
    peak = _rss_mb("VmHWM")
    return {"peak_rss_mb": round(peak, 1), "train_mem_mb": round(peak - baseline, 1)}


def throughput(variant: str, size: int, batch: int, block_steps: int, blocks: int, warmup: int) -> dict:
    sides = {f: setup(f, variant, size, batch) for f in FAMILIES}
    for _, _, _, step in sides.values():
        for _ in range(warmup):
            step()
    wall = {f: 0.0 for f in FAMILIES}
    cpu = {f: 0.0 for f in FAMILIES}
    ratios = []
    for b in range(blocks):
        block_wall = {}
        # Alternate which model goes first so neither always follows the other's cache state.
        for f in (FAMILIES if b % 2 == 0 else FAMILIES[::-1]):
            step = sides[f][3]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(block_steps):
                step()
            block_wall[f] = time.perf_counter() - w0
            wall[f] += block_wall[f]
            cpu[f] += time.process_time() - c0
        ratios.append(block_wall["repvgg"] / block_wall["repopt"])
    images = batch * block_steps * blocks
    out = {}
    for f in FAMILIES:
        spec, model, form, _ = sides[f]
        out[f] = {
            "model": spec.name, "family": f, "form": form, "input_size": size, "batch": batch,
            "params": sum(p.numel() for p in model.parameters()), "steps": block_steps * blocks,
            "images_per_s": round(images / wall[f], 1), "images_per_cpu_s": round(images / cpu[f], 1),
        }
    out["speedup"] = round(statistics.median(ratios), 3)
    out["speedup_cpu"] = round(cpu["repvgg"] / cpu["repopt"], 3)
    out["speedup_block_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="mini,a0", help=f"comma-separated, from {', '.join(PAIRS)}")
    ap.add_argument("--blocks", type=int, default=10, help="alternating blocks of steps per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--memory-steps", type=int, default=3)
    # One thread by default: on a shared machine two OpenMP threads stall whenever one is
    # descheduled, which made 2-thread block ratios range 0.8x..5.8x in one run; 1 thread kept 1.5..2.3x.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-worker", nargs=4, metavar=("FAMILY", "VARIANT", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_worker:
        family, variant, size, batch = args.memory_worker
        print(json.dumps(memory_worker(family, variant, int(size), int(batch), args.memory_steps)))
        return

    for pair in args.pairs.split(","):
        variant, size, batch, block_steps = PAIRS[pair]
        result = throughput(variant, size, batch, block_steps, args.blocks, args.warmup)
        memory = {}
        for family in FAMILIES:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-worker", family, variant, str(size), str(batch),
                 "--memory-steps", str(args.memory_steps), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            )
            memory[family] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"figure": "train_throughput", "pair": pair, "threads": args.threads,
                              **result[family], **memory[family]}))
        print(json.dumps({"figure": "train_speedup_repopt_over_repvgg", "pair": pair, "value": result["speedup"],
                          "cpu_time_ratio": result["speedup_cpu"], "per_block_range": result["speedup_block_range"]}))
        print(json.dumps({"figure": "train_memory_ratio_repopt_over_repvgg", "pair": pair,
                          "value": round(memory["repopt"]["train_mem_mb"] / max(1e-9, memory["repvgg"]["train_mem_mb"]), 3)}))


if __name__ == "__main__":
    main()
