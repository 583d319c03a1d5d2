"""Where tensors live: `--device auto|cpu|cuda[:N]`, a model's device, a torchrun rank's device
and its DDP backend, mixed precision.

This is the one module that decides devices. Every torch step (training, hyper-search, QAT,
calibration and its verification, evaluation, `bench --engine torch`) resolves its device here,
so "auto" means the same everywhere: CUDA when torch sees a GPU, else the CPU. A device that is asked for but absent is a
BackendMissingError (exit 4), not a silent fall-back, so a job meant for a GPU never crawls
on the CPU unnoticed. Steps handed a model instead of a `--device` run where `module_device`
says it is. The process group itself (joining it, sharding, barriers) is `distributed.py`.

Results that leave a step (calibration ranges, exported files, logits) are moved back to the
CPU, so they are the same whichever device computed them, within float tolerance.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .errors import BackendMissingError, InputError

DEVICE_HELP = "Where torch runs: auto (CUDA when available), cpu, cuda or cuda:N."
AMP_CHOICES = ("none", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device string into a torch.device that exists here.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    match = _DEVICE.match(spec)
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise InputError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendMissingError(f"--device {spec}: no CUDA GPU is visible to torch (torch {torch.__version__}, "
                                  f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or a CUDA build of torch")
    n = torch.cuda.device_count()
    i = int(index) if index is not None else torch.cuda.current_device()
    if i >= n:
        raise BackendMissingError(f"--device {spec}: only {n} CUDA device(s) are visible (cuda:0..cuda:{n - 1})")
    return torch.device("cuda", i)


def describe_device(device: torch.device) -> dict:
    """A report record: the device and, for CUDA, the GPU's name."""
    record = {"device": str(device)}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def module_device(model: nn.Module) -> torch.device:
    """The device a module's parameters live on (the CPU for a module without any)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


@dataclass(frozen=True)
class DistributedPlacement:
    """The process group backend and the device of this rank in a torchrun job."""

    backend: str
    device: torch.device


def distributed_placement(requested: str | None = "auto", local_rank: int | None = None,
                          local_world_size: int | None = None) -> DistributedPlacement:
    """NCCL with the model and data on `cuda:LOCAL_RANK`, gloo on the CPU.

    NCCL only moves CUDA tensors, so picking it while the model stays on the CPU fails with
    "No backend type associated with device type cpu"; the device decides the backend. NCCL
    also refuses two ranks on one GPU, so when a machine runs more ranks than it has GPUs the
    ranks share them round-robin over gloo (which reduces CUDA tensors through the host).
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    requested = (requested or "auto").strip().lower()
    if requested == "auto" and not torch.cuda.is_available():
        return DistributedPlacement("gloo", torch.device("cpu"))
    if requested in ("auto", "cuda"):
        device = resolve_device(f"cuda:{local_rank % max(1, torch.cuda.device_count())}")
    else:
        device = resolve_device(requested)
    if device.type != "cuda":
        return DistributedPlacement("gloo", device)
    shared = local_world_size > torch.cuda.device_count() or requested.startswith("cuda:")
    return DistributedPlacement("gloo" if shared else "nccl", device)


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` (None: full fp32). fp16 autocast is for CUDA only."""
    amp = (amp or "none").lower()
    if amp not in AMP_CHOICES:
        raise InputError(f"--amp {amp!r}: use one of {', '.join(AMP_CHOICES)}")
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise InputError("--amp fp16 needs a CUDA device (CPU autocast is bf16); use --amp bf16 or --device cuda")
    return torch.float16 if amp == "fp16" else torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast on `device` with `dtype`, or nothing when dtype is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch to `device` (pinned, non-blocking copies on CUDA); a no-op on the CPU."""
    if device.type == "cpu":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (for host-side timing and before reading results)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["resolve_device", "describe_device", "module_device", "distributed_placement", "DistributedPlacement",
           "amp_dtype", "autocast", "to_device", "synchronize", "DEVICE_HELP", "AMP_CHOICES"]
