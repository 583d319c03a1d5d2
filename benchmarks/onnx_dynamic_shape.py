"""ORT CPU latency of one ONNX with dynamic height/width vs the same graph with them fixed (issue 9).

The export now makes H and W dynamic; this checks it costs nothing at the nominal size. Both
sessions are timed in alternating blocks in one process (median of block medians). One JSON line.

    .venv/bin/python benchmarks/onnx_dynamic_shape.py [--model RepVGG-A0] [--threads 2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from repdeploy.export.onnx import export_onnx
from repdeploy.fuse import fuse
from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="RepVGG-A0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    spec = get_spec(args.model)
    plain = fuse(randomize_batchnorm(build(spec, "train")).eval()).plain
    sessions = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, dynamic in (("dynamic_hw", True), ("static_hw", False)):
            path = export_onnx(plain, Path(d) / f"{kind}.onnx", input_size=spec.input_size, dynamic_spatial=dynamic)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            sessions[kind] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, spec.input_size, spec.input_size), dtype=np.float32)
    blocks = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for kind, session in sessions.items():
            for _ in range(3):
                session.run(None, {"input": x})
            times = []
            for _ in range(args.iterations):
                t0 = time.perf_counter()
                session.run(None, {"input": x})
                times.append((time.perf_counter() - t0) * 1e3)
            blocks[kind].append(statistics.median(times))
    dyn, static = statistics.median(blocks["dynamic_hw"]), statistics.median(blocks["static_hw"])
    print(json.dumps({"figure": "ort_dynamic_hw_over_static", "model": args.model, "input_size": spec.input_size,
                      "threads": args.threads, "dynamic_ms": round(dyn, 2), "static_ms": round(static, 2),
                      "ratio": round(dyn / static, 3), "onnxruntime": ort.__version__}), flush=True)


if __name__ == "__main__":
    main()
