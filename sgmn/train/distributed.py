"""Data-parallel training under torchrun: one process per GPU, one global batch.

`batch_size` in the config is the GLOBAL batch (the paper's 256 over 8 GPUs). Step s trains on
exactly the batch a single process would train on at step s; rank r encodes the contiguous
slice r of it. Models call `gather` on their per-process embeddings and labels, so every rank
computes the same loss over the global batch (the in-batch negatives span all processes).

`gather` is differentiable: the backward of `torch.distributed.nn.functional.all_gather` sums
the gradients that every rank's (identical) loss sends to this rank's slice, i.e. world_size x
dLoss/dslice, and DistributedDataParallel averages the parameter gradients over the ranks, so
the parameter gradient equals the single-process gradient of the same global-batch loss.

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op and nothing is initialised.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
# torch 2.14 marks the public autograd all_gather deprecated in favour of the private
# torch.distributed._functional_collectives; it is still the supported differentiable gather
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                        category=FutureWarning)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process; (0, 1, 0) when not distributed."""
    if not is_distributed():
        return 0, 1, 0
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


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


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0 in rank order (identity when not distributed).

    Every rank must pass a tensor of the same shape and dtype. Floating tensors that require
    grad go through the differentiable all_gather; other tensors (labels, masks: integer and
    bool included) through the plain one.
    """
    if not is_distributed():
        return x
    if x.requires_grad and torch.is_grad_enabled():
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(x), dim=0)
    y = x.to(torch.uint8) if x.dtype == torch.bool else x  # bool is not a collective dtype everywhere
    y = y.detach().contiguous()
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


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
