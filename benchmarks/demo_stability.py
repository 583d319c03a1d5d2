"""How far repeated `make demo` runs agree: the speed-up of each zoo model over N pipeline runs.

Runs `repdeploy pipeline` (the built-in zoo, default settings) N times in a row in fresh
directories, and prints one JSON line per model per run (speed-up, its 95 % interval, noisy,
1-minute load) and one summary line per model: the spread max/min of the speed-ups (issue 10's
goal: <= 1.10, or the runs are flagged noisy), and whether all the intervals share a value.

    .venv/bin/python benchmarks/demo_stability.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    per_model: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="demo-stability-") as tmp:
        for i in range(1, args.runs + 1):
            out = Path(tmp) / f"run{i}"
            proc = subprocess.run([sys.executable, "-m", "repdeploy", "pipeline", "-o", str(out), "-q", "--json"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            load = round(os.getloadavg()[0], 2)
            for m in json.loads(proc.stdout)["models"]:
                rec = {"figure": "demo_speedup", "run": i, "model": m["name"], "speedup": m["speedup"],
                       "ci": m["speedup_ci"], "noisy": m["latency_noisy"], "load_1m": load}
                per_model.setdefault(m["name"], []).append(rec)
                print(json.dumps(rec), flush=True)
    for name, recs in per_model.items():
        ups = [r["speedup"] for r in recs]
        common = max(r["ci"][0] for r in recs) <= min(r["ci"][1] for r in recs)
        print(json.dumps({"figure": "demo_speedup_spread", "model": name, "runs": len(recs),
                          "spread_max_over_min": max(ups) / min(ups), "intervals_share_a_value": common,
                          "any_noisy": any(r["noisy"] for r in recs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
