"""What a latency figure depends on: the CPU, its cores, thread settings and library versions.

The environment block of every benchmark record and report (`environment`), and the CPU facts
`repdeploy doctor` shows.
"""

from __future__ import annotations

import os
import platform

import numpy as np


def physical_cores() -> int | None:
    """Physical cores (ONNX Runtime's default intra-op thread count), from /proc/cpuinfo on Linux."""
    try:
        cores = set()
        physical = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    cores.add((physical, value.strip()))
        return len(cores) or None
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a latency figure depends on: CPU, core counts, thread settings, library versions."""
    import onnxruntime
    import torch

    from ..version import __version__

    env = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        # other work on the machine is the commonest reason for noisy figures; record it
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "repdeploy": __version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:  # only report TensorRT when it is importable; never fail the environment block over it
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
