"""How far repeated `make demo` runs agree: the speed-up of each zoo model over N pipeline runs.

Runs `repdeploy pipeline --threads 1` (the built-in zoo: what `make demo` runs) N times in
a row in fresh directories, and prints one JSON line per model per run (speed-up = FP32 / INT8
time, its 95 % interval, the INT8 / FP32 latency ratio `int8_over_fp32` and its interval, noisy,
the ORT session settings both sides ran with, the run's wall time and the 1-minute load before
and after it) and one summary line per model: the spread max/min of the speed-ups (issue 10's
goal: <= 1.10, or the runs are flagged noisy), whether all the intervals share a value, and for
issue 18 whether int8_over_fp32 <= 0.5 without "noisy" in every run.

    .venv/bin/python benchmarks/demo_stability.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", default="1", help="ORT threads per session: 1 is what `make demo` runs")
    args = ap.parse_args()
    per_model: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="demo-stability-") as tmp:
        for i in range(1, args.runs + 1):
            out = Path(tmp) / f"run{i}"
            load_before = round(os.getloadavg()[0], 2)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "repdeploy", "pipeline", "-o", str(out), "--threads", args.threads,
                                   "-q", "--json"],
                                  capture_output=True, text=True)
            wall = round(time.perf_counter() - start, 1)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            load = round(os.getloadavg()[0], 2)
            for m in json.loads(proc.stdout)["models"]:
                lo, hi = m["speedup_ci"]
                sessions = {json.dumps(b["runner"].get("session_config"), sort_keys=True) for b in m["bench"]}
                rec = {"figure": "demo_speedup", "run": i, "model": m["name"], "speedup": m["speedup"],
                       "ci": m["speedup_ci"], "int8_over_fp32": 1.0 / m["speedup"],
                       "int8_over_fp32_ci": [1.0 / hi, 1.0 / lo], "noisy": m["latency_noisy"],
                       "ort_session_both_sides": sorted(sessions), "demo_wall_s": wall,
                       "load_1m_before": load_before, "load_1m": load}
                per_model.setdefault(m["name"], []).append(rec)
                print(json.dumps(rec), flush=True)
    for name, recs in per_model.items():
        ups = [r["speedup"] for r in recs]
        common = max(r["ci"][0] for r in recs) <= min(r["ci"][1] for r in recs)
        print(json.dumps({"figure": "demo_speedup_spread", "model": name, "runs": len(recs),
                          "spread_max_over_min": max(ups) / min(ups), "intervals_share_a_value": common,
                          "any_noisy": any(r["noisy"] for r in recs),
                          "int8_over_fp32_at_most_half_not_noisy_every_run": all(
                              r["int8_over_fp32"] <= 0.5 and not r["noisy"] for r in recs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
