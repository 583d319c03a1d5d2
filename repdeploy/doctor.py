"""`repdeploy doctor`: what a bug report needs about the machine, in one record.

Versions of repdeploy and everything it imports, the torch build (CPU or CUDA), visible devices,
whether TensorRT is usable and why not, and the thread settings that decide CPU latency.
Nothing here fails: a missing or broken package is reported as such.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata

#: Distribution name -> import name, in the order a report lists them.
PACKAGES = {
    "torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
    "numpy": "numpy", "click": "click", "Pillow": "PIL", "rich": "rich", "matplotlib": "matplotlib",
    "safetensors": "safetensors", "tensorrt": "tensorrt", "polygraphy": "polygraphy",
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Installed version of each dependency (None: not installed)."""
    return {dist: _version(dist) for dist in PACKAGES}


def _torch_record() -> dict:
    import torch

    record = {
        "build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if record["cuda_available"]:
        record["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return record


def _onnxruntime_record() -> dict:
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken wheel is exactly what a bug report needs to show
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"providers": ort.get_available_providers(), "device": ort.get_device()}


def _tensorrt_record() -> dict:
    from .errors import BackendMissingError
    from .export.tensorrt import import_tensorrt
    from .export.trt_device import cuda_device

    # TensorRT + Polygraphy + a device the CUDA runtime sees (not torch, which may be the CPU build)
    try:
        trt = import_tensorrt()
        device = cuda_device()
    except BackendMissingError as exc:
        return {"usable": False, "reason": str(exc)}
    return {"usable": True, "version": getattr(trt, "__version__", None),
            "compute_capability": device.compute_capability}


def report() -> dict:
    """The doctor record (a plain dict, ready for JSON).

    >>> "torch" in report()["packages"]
    True
    """
    from .version import __version__
    from .bench import cpu_model, physical_cores

    importable = {}
    for dist, module in PACKAGES.items():
        if _version(dist) is None:
            continue
        try:
            importlib.import_module(module)
            importable[dist] = True
        except Exception as exc:
            importable[dist] = f"{type(exc).__name__}: {exc}"
    return {
        "repdeploy": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "packages": package_versions(),
        "import_errors": {k: v for k, v in importable.items() if v is not True},
        "torch": _torch_record(),
        "onnxruntime": _onnxruntime_record(),
        "tensorrt": _tensorrt_record(),
        "threads": {
            "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "physical_cores": physical_cores(),
            "onnxruntime_default_intra_op": "one per physical core (pass --threads to fix it)",
            "environment": {k: os.environ.get(k) for k in THREAD_VARIABLES},
        },
    }
