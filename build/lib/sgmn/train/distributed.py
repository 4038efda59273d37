"""Data-parallel training under torchrun: one process per GPU, one global batch.

`batch_size` in the config is the GLOBAL batch (the paper's 256 over 8 GPUs). Step s trains on
exactly the batch a single process would train on at step s; rank r encodes the contiguous
slice r of it. Models call `gather` (`sgmn.models.gather`, re-exported here) on their
per-process embeddings and labels, so every rank computes the same loss over the global batch;
this module launches the processes and holds the other collectives.

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op and nothing is initialised.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from sgmn.models.gather import gather, is_distributed, world  # noqa: F401 (part of this module's API)

log = logging.getLogger(__name__)


def init_from_env() -> tuple[int, int, int]:
    """Join the process group torchrun describes in the environment (idempotent).

    Backend nccl when CUDA is available (the CUDA device is set to LOCAL_RANK first), else gloo.
    With WORLD_SIZE unset or 1 nothing is initialised and (0, 1, 0) is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    log.info("process %d of %d (local rank %d, backend %s)", dist.get_rank(), world_size,
             local_rank, backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files and logs."""
    return world()[0] == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_slice(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global-batch tensor (the inverse of `gather`)."""
    rank, world_size, _ = world()
    if world_size == 1:
        return x
    if x.shape[0] % world_size:
        raise ValueError(f"a global batch of {x.shape[0]} does not split over {world_size} processes")
    n = x.shape[0] // world_size
    return x[rank * n:(rank + 1) * n]


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
