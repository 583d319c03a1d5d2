"""Calibration cost against one FP32 pass over the same images (issue 12).

Fused RepVGG-A0 at 224 (random weights, trained-like BN statistics), N seeded images (default
512) in batches of 32, as `repdeploy quantize` feeds them. For each method, in a fresh process
(so peak RSS is that method's alone), `--rounds` rounds of: one FP32 forward pass of the
PlainNet over the images and one calibration over the same images, in alternating order
(ABBA). The figure is the median of the per-round ratios calibration / FP32 pass, with a
bootstrap 90 % interval over the rounds: the machine is shared, and load that changes between
rounds then hits both sides of each ratio alike. The stage times are the calibration cache's
(`data_s`, `forward_s`, `collect_wait_s`, `collect_overlapped_s`, `search_s`) of the last round.
Memory: peak RSS at N/4 and N images must stay flat (streamed histograms). `cpu_ratio` is the
same ratio in CPU seconds of all threads (the work done), since wall time on a loaded machine
can favour the side that keeps two threads busy.

Prints one JSON line per figure.

    .venv/bin/python benchmarks/calib_cost.py [--images 512] [--methods entropy,max,mse,percentile]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time

import torch

ARCH, SIZE, BATCH, TARGET = "RepVGG-A0", 224, 32, 1.5


def images(n: int, seed: int = 0):
    # Random weights make the image content irrelevant to speed; seeded normal "images",
    # regenerated per pass (the same ones each time) so memory does not hold N images.
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, BATCH):
        yield torch.randn(min(BATCH, n - start), 3, SIZE, SIZE, generator=g)


def bootstrap_interval(values: list[float], level: float = 0.9, draws: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the median of `values`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    medians = np.median(rng.choice(v, size=(draws, v.size), replace=True), axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _child(method: str, n: int, threads: int, rounds: int, queue) -> None:
    from repdeploy.fuse import fuse
    from repdeploy.models import build, get_spec
    from repdeploy.models.layers import randomize_batchnorm
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plain = fuse(randomize_batchnorm(build(get_spec(ARCH), "train"), 0).eval()).plain.eval()
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()

    cpu: dict[str, list[float]] = {"fp32": [], "calib": []}

    @torch.no_grad()
    def fp32_pass() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        for x in images(n):
            plain(x)
        cpu["fp32"].append(time.process_time() - c0)
        return time.perf_counter() - t0

    def calibration() -> tuple[float, dict]:
        t0, c0 = time.perf_counter(), time.process_time()
        cache = calibrate(q, images(n), method=method)
        cpu["calib"].append(time.process_time() - c0)
        return time.perf_counter() - t0, cache.timings

    with torch.no_grad():
        plain(next(images(BATCH)))  # warm-up: first-call allocations are not either side's cost
    fp32, calib, stages = [], [], {}
    for r in range(rounds):
        if r % 2 == 0:
            fp32.append(fp32_pass())
            seconds, stages = calibration()
        else:
            seconds, stages = calibration()
            fp32.append(fp32_pass())
        calib.append(seconds)
    queue.put({"calib_s": calib, "fp32_s": fp32, "stages": stages, "cpu": cpu,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run(method: str, n: int, threads: int, rounds: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(method, n, threads, rounds, queue))
    p.start()
    r = queue.get()
    p.join()
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--methods", default="entropy,max,mse,percentile")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true", help="skip the N/4-image runs (peak RSS comparison)")
    args = ap.parse_args()
    common = {"model": f"{ARCH} fused", "input": f"{SIZE}x{SIZE}", "batch": BATCH, "threads": args.threads}
    failed = False
    for method in args.methods.split(","):
        r = run(method, args.images, args.threads, args.rounds)
        ratios = [c / f for c, f in zip(r["calib_s"], r["fp32_s"])]
        ratio = statistics.median(ratios)
        failed |= ratio > TARGET
        print(json.dumps({"figure": "calibration_over_fp32_pass", **common, "method": method, "images": args.images,
                          "rounds": args.rounds, "calib_s": [round(v, 2) for v in r["calib_s"]],
                          "fp32_pass_s": [round(v, 2) for v in r["fp32_s"]],
                          "round_ratios": [round(v, 3) for v in ratios], "value": round(ratio, 3),
                          "interval_90": [round(v, 3) for v in bootstrap_interval(ratios)],
                          "target": TARGET, "passed": ratio <= TARGET,
                          # CPU seconds of all threads: the work done, which wall time on a shared
                          # machine can hide (two busy threads get a larger share of the cores).
                          "cpu_s": {k: [round(v, 2) for v in vs] for k, vs in r["cpu"].items()},
                          "cpu_ratio": round(statistics.median(
                              c / f for c, f in zip(r["cpu"]["calib"], r["cpu"]["fp32"])), 3),
                          "stages_s": {k: round(v, 3) for k, v in r["stages"].items()},
                          "peak_rss_mb": round(r["peak_rss_mb"], 1), "load_avg_1m": os.getloadavg()[0]}), flush=True)
        if not args.skip_memory:
            small = run(method, args.images // 4, args.threads, 1)
            print(json.dumps({"figure": "calibration_peak_rss_mb", **common, "method": method,
                              "images": [args.images // 4, args.images],
                              "value": [round(small["peak_rss_mb"], 1), round(r["peak_rss_mb"], 1)]}), flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
