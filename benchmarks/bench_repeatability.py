"""Do repeated `repdeploy bench` runs of one FP32/INT8 pair agree within their stated intervals?

Issue 22's check: five bench runs of the same pair, each a fresh process (so a fresh ORT thread
pool, as a user's next run gets), under the same session settings for both sides, must give
speed-ups whose 95 % intervals overlap. The pair defaults to the zoo's A0-width speed model
(repvgg_a0_96), quantized once into a temporary directory; --fp32/--int8 take any pair.

Each run's interval is bench's t-interval over its fresh sessions' log speed-ups
(docs/benchmarks.md, "Bench repeatability"). The default --bench-args give each run 10 sessions,
each in a fresh process (`--fresh-processes`: what is fixed per process then varies between
sessions as it does between runs), and 5 s per model: about 20-30 s a run on an idle 2-core
machine, so five runs and the quantization stay under about 5 minutes.

Prints one JSON line per run (speed-up = FP32 time / INT8 time, its interval and half-width,
per-session speed-ups, noisy, the ORT session settings both sides ran with, the 1-minute load
before and after), a summary JSON line, and last a one-line verdict: whether every pair of
intervals overlaps, with the intervals.

    .venv/bin/python benchmarks/bench_repeatability.py                     # 5 runs of the zoo's A0-96 pair
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

#: Many short fresh sessions: the interval is over sessions, so their number buys its precision.
DEFAULT_BENCH_ARGS = "--sessions 10 --duration 5 --warmup 1 --fresh-processes"


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
    ap.add_argument("--bench-args", default=DEFAULT_BENCH_ARGS,
                    help=f"`repdeploy bench` options for every run (default {DEFAULT_BENCH_ARGS!r})")
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
            half = max(sp["speedup"] - sp["ci_low"], sp["ci_high"] - sp["speedup"]) / sp["speedup"]
            rec = {"figure": "bench_speedup", "run": i, "speedup": round(sp["speedup"], 4),
                   "ci": [round(sp["ci_low"], 4), round(sp["ci_high"], 4)], "ci_halfwidth": round(half, 4),
                   "interval": sp.get("interval"), "sessions": sp["sessions"],
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
                      "any_noisy": any(r["noisy"] for r in runs), "bench_args": args.bench_args}), flush=True)
    loads = [v for r in runs for v in (r["load_1m_before"], r["load_1m_after"])]
    shown = ", ".join(f"{r['speedup']:.2f}x [{r['ci'][0]:.2f}-{r['ci'][1]:.2f}]" for r in runs)
    print(f"verdict: intervals overlap {'yes' if pairwise else 'no'} ({len(runs)} runs: {shown}; "
          f"load {min(loads):.2f}-{max(loads):.2f})", flush=True)
    return 0 if pairwise else 1


if __name__ == "__main__":
    sys.exit(main())
