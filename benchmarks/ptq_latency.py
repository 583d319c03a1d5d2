"""INT8 PTQ latency on ONNX Runtime CPU against FP32 and onnxruntime's own quantize_static (issue 12).

For each architecture (fused, random weights, trained-like BN statistics, 224 px), batch and
thread count, measured in ONE run with the sessions interleaved so machine drift hits all alike:
- "ours": our INT8 `ort` QDQ model (`export_qdq`), run the way `OrtRunner` runs it: repdeploy's
  `session_options` plus the session config the model records (`recorded_session_config`);
- "quantize_static": onnxruntime's `quantize_static` INT8 of the same FP32 ONNX (QDQ, uint8
  activations, per-channel int8 weights, MinMax on the same 32 images), run the way its users run
  it: a plain `SessionOptions` with the thread count set (ORT's defaults);
- "quantize_static_tuned": the same file with our session config, and "ours_ort_defaults": our
  file with ORT's defaults, so the reader sees how much of ours / quantize_static is the graph
  (ours / quantize_static_tuned, ours_ort_defaults / quantize_static) and how much the settings
  (ours / ours_ort_defaults);
- "fp32": the FP32 ONNX with our session config too (INT8 vs FP32 is a precision question), with
  `--fp32` or for A0 (its ratio target is A0 b1 t2).
Each round times every session in A..Z then Z..A order; a figure is the median of per-round
ratios with a bootstrap 90 % interval over the rounds. Targets: ours / quantize_static <= 0.95,
ours / FP32 <= 0.29 (A0, batch 1, 2 threads). Also printed: the node types ORT runs for each
INT8 model and, with `--profile`, ORT's per-node kernel times (median over runs).

Calibration cost is measured by benchmarks/calib_cost.py.

Prints one JSON line per figure; exits 1 when a target is missed.

    .venv/bin/python benchmarks/ptq_latency.py [--archs RepVGG-A0,RepVGG-B1] [--batches 1,8] [--threads 1,2]
        [--rounds 7] [--seconds 0.3] [--profile] [--session-config '{"session.intra_op.spin_duration_us": "50"}']
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repdeploy.export.onnx import export_onnx
from repdeploy.export.qdq import count_fused_nodes, export_qdq, integer_node_count
from repdeploy.fuse import fuse
from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm
from repdeploy.quant.calib import calibrate
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.runtime.ort import recorded_session_config, session_options

SIZE = 224
TARGET_PEER, TARGET_FP32 = 0.95, 0.29


def fused_model(arch: str):
    torch.manual_seed(0)
    return fuse(randomize_batchnorm(build(get_spec(arch), "train"), 0).eval()).plain.eval()


def calib_batches(n: int, batch: int = 16, seed: int = 0):
    # Random weights make the image content irrelevant to speed; seeded normal "images".
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        yield torch.randn(min(batch, n - start), 3, SIZE, SIZE, generator=g)


def plain_session(path: Path, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def our_session(path: Path, threads: int, config: dict[str, str]):
    """A session as OrtRunner builds it, with `config` (the session config our INT8 model records)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, config=config), providers=["CPUExecutionProvider"])


def median_ms(sess, x: np.ndarray, seconds: float, min_iters: int) -> float:
    name = sess.get_inputs()[0].name
    for _ in range(2):
        sess.run(None, {name: x})
    times, end = [], time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ort_quantize_static(fp32: Path, out: Path, n: int) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = (({"input": x.numpy()}) for x in calib_batches(n, batch=1))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def bootstrap_interval(values: list[float], level: float = 0.9, draws: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the median of `values`."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    medians = np.median(rng.choice(v, size=(draws, v.size), replace=True), axis=1)
    return [float(q) for q in np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])]


def kernel_profile(path: Path, threads: int, x: np.ndarray, config: dict[str, str], runs: int = 30) -> dict[str, float]:
    """ORT's per-node kernel time in us (median over `runs`), in graph order."""
    import onnxruntime as ort

    o = session_options(threads, config=config)
    o.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        o.profile_file_prefix = str(Path(tmp) / "profile")
        s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        for _ in range(runs + 5):
            s.run(None, {"input": x})
        events = json.loads(Path(s.end_profiling()).read_text())
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per.setdefault(f'{e["args"].get("op_name", "?")} {e["name"][:-12]}', []).append(e["dur"])
    return {k: float(np.median(v[5:])) for k, v in per.items()}


def session_config(ours: Path, args) -> dict[str, str]:
    """What our model records, or the candidate `--session-config` under trial."""
    return recorded_session_config(ours) if args.session_config is None else json.loads(args.session_config)


def build_models(arch: str, tmp: Path) -> dict[str, Path]:
    plain = fused_model(arch)
    fp32 = export_onnx(plain, tmp / f"{arch}_fp32.onnx", input_size=SIZE)
    q = QuantPlainNet(plain, "ort")
    q.set_weight_ranges()
    calibrate(q, calib_batches(32), method="max")
    ours = export_qdq(q, fp32, tmp / f"{arch}_int8_ours.onnx")
    peer = tmp / f"{arch}_int8_quantize_static.onnx"
    ort_quantize_static(fp32, peer, 32)
    return {"fp32": fp32, "ours": ours, "quantize_static": peer}


def measure(arch: str, paths: dict[str, Path], batch: int, threads: int, args) -> bool:
    with_fp32 = args.fp32 or arch == "RepVGG-A0"
    config = session_config(paths["ours"], args)
    sessions = {"ours": our_session(paths["ours"], threads, config),
                "ours_ort_defaults": plain_session(paths["ours"], threads),
                "quantize_static": plain_session(paths["quantize_static"], threads),
                "quantize_static_tuned": our_session(paths["quantize_static"], threads, config)}
    if with_fp32:
        sessions["fp32"] = our_session(paths["fp32"], threads, config)
    x = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    min_iters = 10 if batch == 1 else 3
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    load_before = round(os.getloadavg()[0], 2)
    for _ in range(args.rounds):
        first = {k: median_ms(s, x, args.seconds, min_iters) for k, s in sessions.items()}
        second = {k: median_ms(s, x, args.seconds, min_iters) for k, s in reversed(list(sessions.items()))}
        for k in sessions:
            samples[k].append((first[k] + second[k]) / 2)
    common = {"model": f"{arch} fused", "input": f"{batch}x3x{SIZE}x{SIZE}", "batch": batch, "threads": threads,
              "rounds": args.rounds, "load_avg_1m": [load_before, round(os.getloadavg()[0], 2)],
              "session_config": config}
    print(json.dumps({"figure": "ort_latency_ms", "statistic": "median of round medians", **common,
                      **{k: round(statistics.median(v), 3) for k, v in samples.items()}}), flush=True)
    ok = True
    pairs = [("ours", "quantize_static", TARGET_PEER), ("ours", "quantize_static_tuned", None),
             ("ours_ort_defaults", "quantize_static", None), ("ours", "ours_ort_defaults", None)]
    if with_fp32:
        pairs.append(("ours", "fp32", TARGET_FP32 if (arch, batch, threads) == ("RepVGG-A0", 1, 2) else None))
    for a, b, target in pairs:
        ratios = [u / v for u, v in zip(samples[a], samples[b])]
        value = statistics.median(ratios)
        record = {"figure": f"{a}_over_{b}", **common, "value": round(value, 3),
                  "interval_90": [round(v, 3) for v in bootstrap_interval(ratios)],
                  "round_ratios": [round(r, 3) for r in ratios]}
        if target is not None:
            record.update(target=target, passed=value <= target)
            ok &= value <= target
        print(json.dumps(record), flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="RepVGG-A0,RepVGG-B1")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3, help="minimum time per session per half round")
    ap.add_argument("--fp32", action="store_true", help="time FP32 for every architecture (default: A0 only)")
    ap.add_argument("--profile", action="store_true", help="print ORT's per-node kernel times of both INT8 models")
    ap.add_argument("--session-config", help="JSON session config to try instead of the one our model records")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            paths = build_models(arch, Path(tmp))
            for key in ("ours", "quantize_static"):
                counts = count_fused_nodes(paths[key])
                print(json.dumps({"figure": "ort_fused_nodes", "model": f"{arch} {key}",
                                  "integer_nodes": integer_node_count(counts), "nodes": counts}), flush=True)
            if args.profile:
                x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
                config = session_config(paths["ours"], args)
                for key in ("ours", "quantize_static"):
                    prof = kernel_profile(paths[key], 2, x, config)
                    print(json.dumps({"figure": "ort_kernel_us", "model": f"{arch} {key}", "batch": 1, "threads": 2,
                                      "total_us": round(sum(prof.values())),
                                      "nodes": {k: round(v) for k, v in prof.items()}}), flush=True)
            for batch in (int(b) for b in args.batches.split(",")):
                for threads in (int(t) for t in args.threads.split(",")):
                    ok &= measure(arch, paths, batch, threads, args)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
