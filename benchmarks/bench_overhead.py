"""Overhead of repdeploy's latency harness over a bare `InferenceSession.run` loop.

Both loops run the same ONNX session on the same batch for the same number of iterations,
interleaved in rounds so machine noise hits both alike. `harness_overhead_ratio` is the wall time
of the harness's measured loop (`BenchResult.measured_s`: runner.infer + recording each time) over
the bare loop's (1.00 = no overhead; the target is < 1.05). `harness_call_overhead_ratio` also
counts the fixed per-call costs (input batch, statistics, environment block).
Prints one JSON line per figure.

    .venv/bin/python benchmarks/bench_overhead.py [--variant RepVGG-mini] [--size 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="RepVGG-mini")
    ap.add_argument("--size", type=int, default=None, help="input size (default: the variant's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from repdeploy.bench import bench, cpu_model
    from repdeploy.export.onnx import export_onnx
    from repdeploy.fuse import fuse
    from repdeploy.models import build, get_spec
    from repdeploy.models.layers import randomize_batchnorm
    from repdeploy.runtime.ort import OrtRunner

    warnings.simplefilter("ignore")  # the CV warning is not what this script measures
    torch.manual_seed(0)
    spec = get_spec(args.variant)
    size = args.size or spec.input_size
    plain = fuse(randomize_batchnorm(build(spec, "train"), 0).eval()).plain
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(plain, Path(d) / "m.onnx", input_size=size)
        runner = OrtRunner(path, intra_op_threads=args.threads).activate()
        session, name = runner._session, runner._session.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)

        def bare() -> float:
            start = time.perf_counter()
            for _ in range(args.iterations):
                session.run(None, {name: x})
            return time.perf_counter() - start

        def harness() -> tuple[float, float]:
            # warm-up 0 and duration 0: exactly `iterations` measured calls
            start = time.perf_counter()
            result = bench(runner, batch=args.batch, warmup=0, duration=0, iterations=args.iterations)
            return result.measured_s, time.perf_counter() - start

        for _ in range(200):  # shared warm-up
            session.run(None, {name: x})
        ratios, call_ratios, bare_ms, harness_ms = [], [], [], []
        for i in range(args.rounds):
            # alternate which loop goes first, so neither always runs on a warmer cache
            if i % 2:
                (h, whole), b = harness(), bare()
            else:
                b, (h, whole) = bare(), harness()
            ratios.append(h / b)
            call_ratios.append(whole / b)
            bare_ms.append(b / args.iterations * 1e3)
            harness_ms.append(h / args.iterations * 1e3)
        runner.deactivate()

    common = {"variant": args.variant, "input_size": size, "batch": args.batch, "threads": args.threads,
              "iterations": args.iterations, "rounds": args.rounds, "cpu": cpu_model(),
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps({"figure": "bare_session_run_ms_per_iter", "value": statistics.median(bare_ms), **common}))
    print(json.dumps({"figure": "harness_ms_per_iter", "value": statistics.median(harness_ms), **common}))
    print(json.dumps({"figure": "harness_overhead_ratio", "value": statistics.median(ratios),
                      "per_round": [round(r, 4) for r in ratios], "target": "< 1.05", **common}))
    print(json.dumps({"figure": "harness_call_overhead_ratio", "value": statistics.median(call_ratios),
                      "per_round": [round(r, 4) for r in call_ratios], **common}))


if __name__ == "__main__":
    main()
