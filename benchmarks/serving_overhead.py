"""The serving runtime's cost: import time and memory, and per-request overhead over a bare session.run.

1. Import, each in a fresh interpreter (median of `--imports` runs): `import repdeploy.serving`,
   the same plus `import onnxruntime` (what opening a model adds), and the package as it was before
   the facade went lazy (`import repdeploy` and every API name, which loads torch). Wall time and
   peak RSS (ru_maxrss) of the child.
2. Overhead at batch 1 on a real-size RepVGG-A0 (tests/realsize.py: 1000 classes, BN statistics
   from real photographs), INT8 `ort` layout from `quantize` calibrated on 32 photographs: the
   runtime's `Model.classify(x)` (session.run + softmax + top-5 with names) against a bare
   `session.run` on the same preprocessed array `x`, on the same session, in interleaved rounds
   (alternating which goes first) so machine load hits both alike. Figures: the median over
   rounds of (classify median / bare median), the ratio of the two minima (the least disturbed
   calls), and what classify adds timed on its own (`Model.rank`: softmax, top-5, names) as a
   fraction of the bare call; the target is an overhead <= 5 %.
Prints one JSON object.

    .venv/bin/python benchmarks/serving_overhead.py [--rounds 7] [--iterations 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

IMPORTS = {
    "repdeploy.serving": "import repdeploy.serving",
    "repdeploy.serving + onnxruntime": "import repdeploy.serving, onnxruntime",
    "repdeploy, every API name (the eager facade before)":
        "import repdeploy; [getattr(repdeploy, n) for n in repdeploy.__all__]",
}
# Peak RSS as the kernel's VmHWM of the child (ru_maxrss would carry the forking parent's peak).
CHILD = ("import sys, time; t = time.perf_counter(); exec(sys.argv[1]); s = time.perf_counter() - t; "
         "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
         "print(s, int(hwm) / 1024, int('torch' in sys.modules))")


def import_costs(runs: int) -> dict:
    out = {}
    for label, code in IMPORTS.items():
        times, rss = [], []
        for _ in range(runs):
            line = subprocess.run([sys.executable, "-c", CHILD, code], capture_output=True, text=True,
                                  check=True, cwd=str(ROOT)).stdout.split()
            times.append(float(line[0]))
            rss.append(float(line[1]))
            torch_loaded = bool(int(line[2]))
        out[label] = {"seconds_median": round(statistics.median(times), 3), "seconds_min": round(min(times), 3),
                      "peak_rss_mb_median": round(statistics.median(rss), 1), "torch_loaded": torch_loaded}
    return out


def a0_int8(work: Path) -> tuple[Path, Path]:
    """A real-size A0 quantized by repdeploy (ort layout), and one photograph as a JPEG."""
    from realsize import realistic_model, write_photo_folder

    from repdeploy.fuse import fuse
    from repdeploy.quant.ptq import quantize

    plain = fuse(realistic_model("RepVGG-A0")).plain
    photos = write_photo_folder(work / "photos", 32, size=256, seed=7)
    result = quantize(plain, calib_data=photos, calib_samples=32, calib_method="max", output_dir=work / "a0",
                      device="cpu", allow_mismatch=True)
    return result.int8_onnx, sorted(photos.iterdir())[0]


def overhead(model_path: Path, image: Path, rounds: int, iterations: int, threads: int) -> dict:
    from repdeploy.serving import Model

    model = Model(model_path, threads=threads)
    x = model.inputs([image])
    feed = {model.input_name: x}
    session = model.session

    def bare() -> None:
        session.run(None, feed)

    def runtime() -> None:
        model.classify(x, top_k=5)

    def per_call(fn) -> tuple[float, float]:
        samples = []
        for _ in range(iterations):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples), min(samples)

    for _ in range(10):  # warm both paths
        bare()
        runtime()
    ratios, bare_ms, runtime_ms, bare_min, runtime_min = [], [], [], [], []
    for r in range(rounds):
        first, second = (bare, runtime) if r % 2 == 0 else (runtime, bare)
        a, b = per_call(first), per_call(second)
        (t_bare, m_bare), (t_runtime, m_runtime) = (a, b) if first is bare else (b, a)
        ratios.append(t_runtime / t_bare)
        bare_ms.append(t_bare * 1e3)
        runtime_ms.append(t_runtime * 1e3)
        bare_min.append(m_bare * 1e3)
        runtime_min.append(m_runtime * 1e3)
    # What classify adds to session.run, timed on its own: softmax, top-5, names (CPU work that
    # machine load disturbs far less than a 10 ms inference).
    logits = model.logits(x)
    t = time.perf_counter()
    for _ in range(1000):
        model.rank(logits, 5)
    rank_ms = (time.perf_counter() - t) / 1000 * 1e3
    t = time.perf_counter()
    for _ in range(iterations):
        model.predict(image, top_k=5)
    predict_ms = (time.perf_counter() - t) / iterations * 1e3
    return {"model": str(model_path), "precision": model.precision, "threads": threads, "batch": 1,
            "rounds": rounds, "iterations_per_round": iterations,
            "bare_session_run_ms_median": round(statistics.median(bare_ms), 3),
            "runtime_classify_ms_median": round(statistics.median(runtime_ms), 3),
            "overhead_ratio_median": round(statistics.median(ratios), 4),
            "overhead_ratio_per_round": [round(v, 4) for v in ratios],
            "bare_session_run_ms_min": round(min(bare_min), 3), "runtime_classify_ms_min": round(min(runtime_min), 3),
            "overhead_ratio_of_minima": round(min(runtime_min) / min(bare_min), 4),
            "rank_top5_ms": round(rank_ms, 4),
            "overhead_fraction_rank_over_bare_min": round(rank_ms / min(bare_min), 5),
            "predict_from_jpeg_ms_mean": round(predict_ms, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--imports", type=int, default=5, help="fresh interpreters per import figure")
    args = ap.parse_args()
    from repdeploy.bench import environment

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, image = a0_int8(Path(tmp))
        result = {"import": import_costs(args.imports),
                  "overhead": overhead(onnx_path, image, args.rounds, args.iterations, args.threads),
                  "environment": environment()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
