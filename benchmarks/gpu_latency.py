"""Torch CUDA figures (issue 9): fused vs train-form latency, fp32 and fp16, and QAT step time GPU vs CPU.

Prints one JSON line per figure. Latency is the median of `--repeats` CUDA-event timings after a
warm-up, train form and fused model interleaved round by round so drift hits both alike; fp16
runs the half model in channels_last memory format. The QAT step is one optimizer step of the
fake-quant RepVGG-A0 (forward, loss, backward, step) at batch 32 and 224 px, on the GPU and on
the CPU in the same run.

Without a CUDA GPU the latency figures cannot be measured: the script prints one JSON line per
figure with "measured": false and the reason, then exits 4, so nothing stands in for a figure.

    .venv/bin/python benchmarks/gpu_latency.py [--models RepVGG-A0,RepVGG-B1g4] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from repdeploy.fuse import fuse
from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


def cuda_median_ms(model, x, repeats: int, warmup: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def latency(args) -> None:
    for name in args.models.split(","):
        torch.manual_seed(0)
        train = randomize_batchnorm(build(get_spec(name), "train")).eval()
        plain = fuse(train).plain.eval()
        for precision in ("fp32", "fp16"):
            for batch in (1, 64):
                x = torch.randn(batch, 3, 224, 224, device="cuda")
                a, b = train.cuda(), plain.cuda()
                if precision == "fp16":
                    a = a.half().to(memory_format=torch.channels_last)
                    b = b.half().to(memory_format=torch.channels_last)
                    x = x.half().to(memory_format=torch.channels_last)
                t_train, t_fused = [], []
                for _ in range(3):
                    t_train.append(cuda_median_ms(a, x, args.repeats // 3))
                    t_fused.append(cuda_median_ms(b, x, args.repeats // 3))
                tt, tf = statistics.median(t_train), statistics.median(t_fused)
                print(json.dumps({"figure": "torch_cuda_latency", "measured": True, "model": name,
                                  "precision": precision, "batch": batch, "train_ms": round(tt, 3),
                                  "fused_ms": round(tf, 3), "speedup": round(tt / tf, 3),
                                  "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
                train, plain = train.float().cpu(), plain.float().cpu()
                train, plain = train.to(memory_format=torch.contiguous_format), plain.to(memory_format=torch.contiguous_format)


def qat_step_ms(device: str, steps: int, batch: int) -> float:
    from repdeploy.quant.calib import calibrate
    from repdeploy.quant.quantizer import QuantPlainNet

    torch.manual_seed(0)
    plain = fuse(randomize_batchnorm(build(get_spec("RepVGG-A0"), "train")).eval()).plain
    qnet = QuantPlainNet(plain, "ort").to(device)
    qnet.set_weight_ranges()
    calibrate(qnet, [torch.randn(8, 3, 224, 224)], method="max")
    qnet.train()
    opt = torch.optim.SGD(qnet.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(qnet(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first steps allocate and pick kernels
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="RepVGG-A0,RepVGG-B1g4")
    ap.add_argument("--repeats", type=int, default=51)
    ap.add_argument("--qat-batch", type=int, default=32)
    ap.add_argument("--qat-steps", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        reason = f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})"
        for figure in ("torch_cuda_latency", "qat_step_gpu_vs_cpu"):
            print(json.dumps({"figure": figure, "measured": False, "reason": reason}), flush=True)
        return 4
    latency(args)
    gpu = qat_step_ms("cuda", args.qat_steps, args.qat_batch)
    cpu = qat_step_ms("cpu", max(2, args.qat_steps // 2), args.qat_batch)
    print(json.dumps({"figure": "qat_step_gpu_vs_cpu", "measured": True, "model": "RepVGG-A0", "batch": args.qat_batch,
                      "gpu_ms": round(gpu, 2), "cpu_ms": round(cpu, 2), "cpu_over_gpu": round(cpu / gpu, 1),
                      "gpu": torch.cuda.get_device_name(), "cpu_threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
