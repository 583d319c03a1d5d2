"""Do repeated `repdeploy bench` runs of one FP32/INT8 pair agree within their stated intervals?

Issue 22's check: five bench runs of the same pair, each a fresh process (so a fresh ORT thread
pool, as a user's next run gets), under the same session settings for both sides, must give
speed-ups whose 95 % intervals overlap. The pair defaults to the zoo's A0-width speed model
(repvgg_a0_96), quantized once into a temporary directory; --fp32/--int8 take any pair.

Prints one JSON line per run (speed-up = FP32 time / INT8 time, its interval, per-session
speed-ups, noisy, the ORT session settings both sides ran with, the 1-minute load before and
after) and a summary line: whether every pair of intervals overlaps and whether all share a value.

    .venv/bin/python benchmarks/bench_repeatability.py                     # 5 runs, default bench settings
    .venv/bin/python benchmarks/bench_repeatability.py --runs 5 --fp32 a/model_fp32.onnx --int8 a/model_int8_ort.onnx
    .venv/bin/python benchmarks/bench_repeatability.py --bench-args "--sessions 1"   # the old single-session interval
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def quantized_speed_model(directory: Path) -> tuple[Path, Path]:
    """FP32 and INT8 ONNX of the zoo's speed model (the default zoo's largest input), made here."""
    from repdeploy.zoo import builtin_zoo

    entry = max(builtin_zoo(), key=lambda e: e.input_size)
    proc = subprocess.run([sys.executable, "-m", "repdeploy", "quantize", str(entry.file), "--int8", "-o",
                           str(directory), "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: quantizing {entry.file} failed:\n{proc.stderr}")
    return directory / "model_fp32.onnx", directory / "model_int8_ort.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fp32", type=Path, default=None)
    ap.add_argument("--int8", type=Path, default=None)
    ap.add_argument("--bench-args", default="", help="extra `repdeploy bench` options, e.g. '--ort-spin-us default'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-repeat-") as tmp:
        fp32, int8 = (args.fp32, args.int8) if args.fp32 and args.int8 else quantized_speed_model(Path(tmp) / "q")
        runs = []
        for i in range(1, args.runs + 1):
            load_before = round(os.getloadavg()[0], 2)
            proc = subprocess.run([sys.executable, "-m", "repdeploy", "bench", str(fp32), str(int8), "--json", "-q",
                                   *shlex.split(args.bench_args)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            doc = json.loads(proc.stdout)
            sp = doc["speedups"][0]
            rec = {"figure": "bench_speedup", "run": i, "speedup": round(sp["speedup"], 4),
                   "ci": [round(sp["ci_low"], 4), round(sp["ci_high"], 4)], "sessions": sp["sessions"],
                   "session_speedups": [round(v, 4) for v in sp["session_speedups"]], "noisy": sp["noisy"],
                   "fp32_ms": round(doc["results"][0]["stats"]["median_ms"], 4),
                   "int8_ms": round(doc["results"][1]["stats"]["median_ms"], 4),
                   "ort_session": (doc.get("ort_session") or {}).get("text"),
                   "load_1m_before": load_before, "load_1m_after": round(os.getloadavg()[0], 2)}
            runs.append(rec)
            print(json.dumps(rec), flush=True)
    intervals = [r["ci"] for r in runs]
    pairwise = all(a[0] <= b[1] and b[0] <= a[1] for a, b in itertools.combinations(intervals, 2))
    common = max(lo for lo, _ in intervals) <= min(hi for _, hi in intervals)
    ups = [r["speedup"] for r in runs]
    print(json.dumps({"figure": "bench_speedup_repeatability", "runs": len(runs), "pair": [str(fp32), str(int8)],
                      "all_intervals_overlap_pairwise": pairwise, "all_intervals_share_a_value": common,
                      "spread_max_over_min": round(max(ups) / min(ups), 4),
                      "any_noisy": any(r["noisy"] for r in runs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
