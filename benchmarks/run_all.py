"""Run every benchmark script in turn (`make bench`) and keep their JSON lines.

Each script prints one JSON line per figure; they are written to runs/bench/<script>.jsonl.
The full set takes tens of minutes on 2 cores: run it on an otherwise idle machine, because
the figures are ratios measured within one run and other load still widens their spread.

    .venv/bin/python benchmarks/run_all.py [--only fuse_latency,qat]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["fuse_latency", "train_throughput", "ptq_latency", "calib_cost", "ptq_accuracy", "qat", "ort_latency",
           "bench_overhead", "onnx_dynamic_shape", "demo_stability", "serving_overhead"]
# benchmarks/gpu_latency.py is run by hand on a GPU machine (it exits 4 without one).


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="Comma-separated script names (default: all).")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else SCRIPTS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        lines = []
        proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py")], stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                lines.append(line)
        if proc.wait() != 0:
            failed.append(name)
        (out / f"{name}.jsonl").write_text("".join(lines))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
