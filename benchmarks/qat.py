"""QAT figures (issue 6): QAT step time vs FP32 step time, and FP32 / PTQ / QAT top-1 on the zoo.

    .venv/bin/python benchmarks/qat.py [--epochs 3] [--skip-zoo]

Prints one JSON line per figure. Step times are measured in one run, interleaved, as a ratio.
The zoo part runs `repdeploy.quant.qat.qat` on every built-in zoo model with and without the
gradient prior (bn for RepVGG, the shipped scales for RepOpt-VGG) and distillation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from repdeploy.fuse import fuse
from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm
from repdeploy.quant.calib import calibrate
from repdeploy.quant.quantizer import QuantPlainNet


def step_time(model, x, y, repeats: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def step_times(name: str, batch: int, size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    plain = fuse(randomize_batchnorm(build(get_spec(name), "train"))).plain
    qnet = QuantPlainNet(plain, "ort")
    qnet.set_weight_ranges()
    calibrate(qnet, [torch.randn(8, 3, size, size)], method="max")
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, plain.spec.num_classes, (batch,))
    fp32, fq = [], []
    for _ in range(3):  # interleave so machine drift hits both alike
        fp32.append(step_time(plain, x, y, repeats))
        fq.append(step_time(qnet, x, y, repeats))
    a, b = statistics.median(fp32), statistics.median(fq)
    return {"figure": "qat_step_time", "model": name, "batch": batch, "input": size,
            "fp32_step_ms": round(a, 2), "qat_step_ms": round(b, 2), "ratio": round(b / a, 3),
            "threads": torch.get_num_threads()}


def zoo_table(epochs: int) -> list[dict]:
    from repdeploy.quant.qat import qat
    from repdeploy.zoo import builtin_zoo

    rows = []
    for entry in builtin_zoo():
        prior = "bn" if entry.family == "repvgg" else (f"repopt:{entry.scales}" if entry.scales else "sgs")
        for grad_mult, distill in (("none", False), (prior, False), ("none", True), (prior, True)):
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                r = qat(str(entry.file), train_data="builtin", output_dir=out, epochs=epochs,
                        grad_mult=grad_mult, distill=distill).report
            rows.append({"figure": "qat_zoo", "model": entry.name, "grad_mult": grad_mult.split(":")[0],
                         "distill": distill, "epochs": epochs, "calib_method": r["calib_method"],
                         "fp32_top1": r["fp32_top1"], "ptq_top1": r["ptq_top1"], "qat_top1": r["qat_top1"],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-zoo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(json.dumps(step_times("RepVGG-mini", 64, 32, args.repeats)), flush=True)
    print(json.dumps(step_times("RepVGG-A0", 8, 224, max(3, args.repeats // 3))), flush=True)
    if not args.skip_zoo:
        from repdeploy.progress import set_quiet

        set_quiet(True)
        zoo_table(args.epochs)


if __name__ == "__main__":
    main()
