"""The confusion table of the INT8 deployment verdicts on real-size models (issue 18).

For each architecture (A0, B0, B1g4 at 224, 1000 classes, BN statistics re-estimated on
scikit-image's photographs: tests/realsize.py) and seed, a correct deployment in both layouts
is judged as `quantize` judges it (quant.fidelity.int8_verdicts, on 64 verification crops that
calibration never saw), and then every planted fault of tests/planted_faults.py, in each layer
given. Prints one JSON line per case and the table (correct: passed / planted: failed).

    .venv/bin/python benchmarks/verdict_confusion.py [--archs RepVGG-A0,RepVGG-B0,RepVGG-B1g4] [--seeds 0,1,2]
        [--layers stage0.conv,stage1.0.conv,stage3.4.conv,stage4.0.conv] [--targets ort,tensorrt]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from planted_faults import FAULTS, plant  # noqa: E402
from realsize_deploy import deploy_all, judge  # noqa: E402


def failed_checks(verdicts: dict) -> list[str]:
    return [k for k, v in verdicts.items() if not v["passed"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="RepVGG-A0,RepVGG-B0,RepVGG-B1g4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--targets", default="ort,tensorrt")
    parser.add_argument("--layers", default="stage0.conv,stage1.0.conv,stage3.4.conv,stage4.0.conv")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                deployments = deploy_all(arch, seed, tuple(args.targets.split(",")), Path(tmp) / f"{arch}-{seed}")
                for target, d in deployments.items():
                    v = judge(d)
                    dep = v["ort_int8"]
                    row = {"arch": arch, "seed": seed, "target": target, "case": "correct", "layer": None,
                           "failed": failed_checks(v), "deviation": round(dep["deviation"], 4),
                           "simulated_sqnr_db": dep.get("simulated_sqnr_db"), "deployed_sqnr_db": dep.get("deployed_sqnr_db"),
                           "lost": dep["lost"], "gained": dep["gained"], "sign_p": dep["sign_p"]}
                    print(json.dumps(row), flush=True)
                    table[("correct", target, "passed" if not row["failed"] else "FAILED")] += 1
                    for fault in args.faults.split(","):
                        layers = [None] if fault == "wrong mean/std" else args.layers.split(",")
                        for layer in layers:
                            try:
                                path = plant(d.int8_onnx, fault, layer or "stage0.conv", Path(tmp))
                            except (KeyError, IndexError, StopIteration) as exc:
                                print(json.dumps({"arch": arch, "target": target, "case": fault, "layer": layer,
                                                  "skipped": str(exc)}), flush=True)
                                continue
                            try:
                                fv = judge(d, path)
                            except Exception as exc:  # noqa: BLE001  ONNX Runtime refuses the graph: quantize exits 1
                                frow = {"arch": arch, "seed": seed, "target": target, "case": fault, "layer": layer,
                                        "failed": [f"runtime error: {str(exc)[:120]}"]}
                            else:
                                fd = fv["ort_int8"]
                                frow = {"arch": arch, "seed": seed, "target": target, "case": fault, "layer": layer,
                                        "failed": failed_checks(fv), "deviation": round(fd["deviation"], 4),
                                        "deployed_sqnr_db": fd.get("deployed_sqnr_db"), "lost": fd["lost"],
                                        "gained": fd["gained"], "sign_p": fd["sign_p"]}
                            print(json.dumps(frow), flush=True)
                            table[(fault, target, "FAILED" if frow["failed"] else "passed")] += 1
                            path.unlink()
    print("\n| case | layout | passed | FAILED |\n|---|---|---|---|")
    for case, target in sorted({(c, t) for c, t, _ in table}):
        print(f"| {case} | {target} | {table[(case, target, 'passed')]} | {table[(case, target, 'FAILED')]} |")


if __name__ == "__main__":
    main()
