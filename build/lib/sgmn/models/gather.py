"""Cross-process gathering for losses over the global batch (used by the models' losses).

Under torchrun each process encodes its slice of the global batch; the models call `gather` on
their embeddings and labels so every rank computes the same loss over the whole batch (the
in-batch negatives span all processes). `gather` is differentiable: the backward of
`torch.distributed.nn.functional.all_gather` sums the gradients that every rank's (identical)
loss sends to this rank's slice, and DistributedDataParallel averages the parameter gradients,
so the parameter gradient equals the single-process gradient of the same global-batch loss.
Without torchrun every helper is a no-op. Launching and the other collectives live in
`sgmn.train.distributed`.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

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
