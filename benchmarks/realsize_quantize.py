"""`repdeploy quantize` end to end on real-size models the project has never seen (issue 18).

For each architecture and seed: a RepVGG checkpoint at real size (224 px, 1000 classes, seeded
random weights, BN statistics re-estimated on scikit-image's photographs: tests/realsize.py) is
saved as a plain state dict, a folder of 128 JPEG photo crops is written (the default sample holds half of them out of
calibration: 64 verification images, the deployment rule's floor), and the command a user runs,

    repdeploy quantize ckpt.pth --int8 --calib-data photos/ [--target tensorrt] -o out/ --json

runs in a fresh process at default settings (calibration sample, method, verification images,
diagnostics). A row is its exit code, status, every verdict, the verification images' count and
whether any of them was a calibration image (report.json), and the stage times.

`--zero-se-bias` zeroes every squeeze-excitation bias before the BN statistics are measured (the
D2se case: identical tensors the ONNX exporter merges into one initializer).

    .venv/bin/python benchmarks/realsize_quantize.py [--archs RepVGG-A0,RepVGG-B0,RepVGG-B1g4]
        [--seeds 0,1,2] [--targets ort,tensorrt] [--photos 128] [--zero-se-bias]
        [--input-size N]

Prints one JSON line per run and a closing line: how many runs exited 0 with every verdict passed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from realsize import realistic_model, write_photo_folder  # noqa: E402

REPDEPLOY = Path(sys.executable).with_name("repdeploy")


def checkpoint(arch: str, seed: int, directory: Path, zero_se_bias: bool) -> Path:
    # SE biases are zeroed before the BN statistics are measured: zeroing them afterwards leaves
    # every later BN normalising with another layer's statistics.
    path = directory / f"{arch}-s{seed}.pth"
    torch.save(realistic_model(arch, seed, zero_se_bias=zero_se_bias).state_dict(), path)
    return path


def run(arch: str, seed: int, target: str, ckpt: Path, photos: Path, out: Path, input_size: int | None) -> dict:
    cmd = [str(REPDEPLOY), "quantize", str(ckpt), "--int8", "--calib-data", str(photos), "--arch", arch,
           "--target", target, "-o", str(out), "--json", "-q"]
    cmd += ["--input-size", str(input_size)] if input_size else []
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"arch": arch, "seed": seed, "target": target, "exit": done.returncode, "wall_s": round(wall, 1)}
    report_path = out / "report.json"
    if not report_path.is_file():
        row["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return row
    report = json.loads(report_path.read_text())
    row.update(
        status=report.get("status"),
        verdicts={v["check"]: v["passed"] for v in report.get("verdicts", [])},
        failed=[v["line"] for v in report.get("verdicts", []) if not v["passed"]],
        verify_images=report.get("verify_images"),
        verify_disjoint=report.get("verify_disjoint"),
        calib_images=(report.get("calib_data") or {}).get("images"),
        warnings=report.get("warnings"),
        timings=report.get("timings"),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="RepVGG-A0,RepVGG-B0,RepVGG-B1g4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="ort,tensorrt")
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--zero-se-bias", action="store_true")
    parser.add_argument("--input-size", type=int, help="passed to quantize (D2se's spec says 320; its models train at 224)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = write_photo_folder(tmp / "photos", args.photos, seed=7)
        for arch in args.archs.split(","):
            for seed in map(int, args.seeds.split(",")):
                ckpt = checkpoint(arch, seed, tmp, args.zero_se_bias)
                for target in args.targets.split(","):
                    row = run(arch, seed, target, ckpt, photos, tmp / f"{arch}-s{seed}-{target}", args.input_size)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    ok = [r for r in rows if r["exit"] == 0 and r.get("verdicts") and all(r["verdicts"].values())]
    print(f"{len(ok)} of {len(rows)} runs exited 0 with every verdict passed", flush=True)
    sys.exit(0 if len(ok) == len(rows) else 1)


if __name__ == "__main__":
    main()
