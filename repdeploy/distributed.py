"""The torch.distributed job a process belongs to: joining it, sharding data, barriers.

Under `torchrun --nproc_per_node=N` every rank calls `init_world` once. Where the rank's model
and data live, and so which backend the group uses (NCCL on `cuda:LOCAL_RANK`, gloo on the CPU
or when ranks outnumber GPUs), is decided by `devices.distributed_placement`; this module only
joins the group that placement names. A single process is rank 0 of a world of 1, so callers
write one code path: `shard` hands it the whole data set and `barrier` returns at once.

Only rank 0 writes outputs (`World.is_main`); the other ranks keep what they must save in
private files, so an output directory never sees two writers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .devices import distributed_placement, resolve_device


@dataclass
class World:
    """Where this process sits in a torch.distributed job (a single process is rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str | torch.device | None = "auto") -> World:
    """Join the process group torchrun describes in the environment, if any.

    The device decides the backend (devices.distributed_placement): NCCL with this rank's
    model and data on `cuda:LOCAL_RANK`, gloo on the CPU. A single process just resolves
    `device`.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device))
    import torch.distributed as dist

    placement = distributed_placement(str(device) if device is not None else "auto")
    if placement.device.type == "cuda":
        torch.cuda.set_device(placement.device)  # NCCL binds each rank to the current device
    if not dist.is_initialized():
        dist.init_process_group(backend=placement.backend)
    return World(dist.get_rank(), dist.get_world_size(), placement.backend, placement.device)


def barrier(world: World) -> None:
    """Wait for every rank (e.g. until rank 0 has written what the others read); a no-op alone."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def shard(dataset, world: World):
    """This rank's share of a dataset: every size-th image from a rank offset.

    Each rank then shuffles its shard per epoch (seeded), which is what DistributedSampler does
    up to the order of shuffling and sharding; the shards are disjoint and cover the data.
    """
    if not world.distributed:
        return dataset
    import numpy as np

    return dataset.subset(np.arange(world.rank, len(dataset), world.size))


__all__ = ["World", "init_world", "barrier", "shard"]
