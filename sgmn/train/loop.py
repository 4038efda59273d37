"""The training loop shared by CLIP pretraining and retrieval training.

Resumable by construction: the batch and the augmentation randomness of step s are pure
functions of (seed, s), the learning rate is a function of s, and `ckpt/latest.pt` (model,
optimiser, step, RNG states, config) is written atomically every `checkpoint_every` steps. A
rerun after a kill continues from the last checkpoint and follows the same trajectory as an
uninterrupted run. The checkpoint directory is not a declared Snakemake output, so a failed job
does not delete it.

Under torchrun (sgmn.train.distributed) `batch_size` is the global batch: step s trains on the
single-process batch of step s, rank r loads its contiguous slice r, the model is wrapped in
DistributedDataParallel, and only rank 0 writes the checkpoint, the log and the progress bar.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from sgmn.io import atomic_save, git_commit
from sgmn.train import distributed
from sgmn.models.device import autocast, resolve_device, resolve_precision
from sgmn.train.optim import build_optimizer

log = logging.getLogger(__name__)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_progress(step: int, total: int, proportion: float = 0.1) -> float:
    """The official BertAdam schedule: x = step / total; x / proportion during the warmup, then
    0.5 (1 + cos(pi x)) of the whole run's progress (not re-based after the warmup, so the
    multiplier drops from 1 to cos^2(pi proportion / 2) when the warmup ends; 0 at step 0)."""
    x = step / max(1, total)
    if x < proportion:
        return x / proportion
    return 0.5 * (1 + math.cos(math.pi * x))


LR_SCHEDULES = ("cosine", "warmup_cosine_progress")


def lr_multiplier(schedule: str, total: int, warmup_steps: int, min_ratio: float = 0.0,
                  warmup_proportion: float = 0.1) -> Callable[[int], float]:
    """step -> lr multiplier of `schedule` (config train.lr_schedule)."""
    if schedule == "cosine":
        return lambda s: warmup_cosine(s, total, warmup_steps, min_ratio)
    if schedule == "warmup_cosine_progress":
        return lambda s: warmup_cosine_progress(s, total, warmup_proportion)
    raise ValueError(f"unknown lr schedule '{schedule}' (one of {', '.join(LR_SCHEDULES)})")


class StepBatchSampler(Sampler):
    """Index batches for steps [start, total): epoch e is a permutation seeded by (seed, e).

    `batch_for(step)` is the global batch; with world_size > 1 iteration yields this rank's
    contiguous slice of it (batch_size must be divisible by world_size).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int,
                 rank: int = 0, world_size: int = 1):
        if n < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
        if batch_size % world_size:
            raise ValueError(f"train.batch_size {batch_size} (the global batch) is not divisible by "
                             f"the {world_size} training processes")
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // batch_size  # drop_last: every batch is full

    def batch_for(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        k = self.batch_size // self.world_size
        for step in range(self.start, self.total):
            yield self.batch_for(step)[self.rank * k:(self.rank + 1) * k]

    def __len__(self):
        return self.total - self.start


def step_generator(seed: int, step: int) -> torch.Generator:
    """The torch RNG of one step's augmentations (independent of how the run got there)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def optimise(out: dict, opt: torch.optim.Optimizer, params: list, grad_clip: float, step: int) -> torch.Tensor:
    """One optimiser step on the sum of the `*_loss` terms of `out` (global-norm clip when
    grad_clip > 0); a non-finite loss stops the run, naming the step and every term."""
    loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: "
                                 + ", ".join(f"{k}={v.item():.4g}" for k, v in out.items()))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return loss


def train(model: torch.nn.Module, dataset: Dataset, collate: Callable, loss_fn: Callable,
          run_dir: str | Path, *, steps: int, batch_size: int, lr: float, warmup_steps: int,
          weight_decay: float, optimizer: str = "adamw", min_lr_ratio: float = 0.0,
          grad_clip: float = 0.0, seed: int = 0, checkpoint_every: int = 100,
          num_workers: int = 0, device: str = "auto", precision: str = "fp32",
          config: dict | None = None, clip_lr_scale: float = 1.0,
          freeze_stem: bool = False, lr_schedule: str = "cosine",
          warmup_proportion: float = 0.1) -> torch.nn.Module:
    """Train `model` for `steps` steps, resuming from run_dir/ckpt/latest.pt when present.

    loss_fn(model, batch, generator) returns a dict; its keys ending in `_loss` are summed.
    Under torchrun, loss_fn gets the DistributedDataParallel wrapper (the model is its
    `.module`) and this rank's slice of the global batch. optimizer: adam | adamw | bertadam
    (sgmn.train.optim); `visual.*` parameters train at lr * clip_lr_scale.
    """
    rank, world_size, local_rank = distributed.world()
    main = rank == 0
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "ckpt" / "latest.pt"
    dev = resolve_device(device)
    if world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
    torch.manual_seed(seed)
    model.to(dev)
    opt = build_optimizer(model, optimizer, lr, weight_decay, clip_lr_scale, freeze_stem)
    params = [p for group in opt.param_groups for p in group["params"]]
    multiplier = lr_multiplier(lr_schedule, steps, warmup_steps, min_lr_ratio, warmup_proportion)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)  # scales every group's own lr

    start = 0
    if ckpt_path.exists():
        start = _resume(ckpt_path, model, opt, sched, config)
    if start >= steps:
        return model

    sampler = StepBatchSampler(len(dataset), batch_size, seed, start, steps, rank, world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        persistent_workers=False)
    precision, why = resolve_precision(precision, dev, model)
    log.info("precision %s (%s)", precision, why)
    amp = autocast(precision, dev)
    model.train()
    net = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    log_file = open(run_dir / "train_log.jsonl", "a") if main else None
    bar = tqdm(total=steps, initial=start, desc=f"train {run_dir.name}", file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 15.0, dynamic_ncols=True, disable=not main)
    t0 = time.time()
    step = start
    for step, batch in enumerate(loader, start=start):
        batch = to_device(batch, dev)
        batch["step"] = step
        with amp:
            out = loss_fn(net, batch, step_generator(seed, step))
        loss = optimise(out, opt, params, grad_clip, step)
        sched.step()
        bar.update(1)
        if main and ((step + 1) % 10 == 0 or step + 1 == steps):
            record = {"step": step + 1, "loss": round(loss.item(), 6), "lr": lr * multiplier(step + 1),
                      "elapsed_s": round(time.time() - t0, 2),
                      **{k: round(v.item(), 6) for k, v in out.items() if k.endswith("_loss")}}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if main and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _checkpoint(ckpt_path, model, opt, sched, step + 1, config)
    bar.close()
    if log_file is not None:
        log_file.close()
    log.info("trained %d steps in %.1f s", steps - start, time.time() - t0)
    distributed.barrier()
    if main:
        ckpt_path.unlink(missing_ok=True)  # the run is complete: a rerun must not resume it
    return model


def _checkpoint(path: Path, model, opt, sched, step: int, config: dict | None) -> None:
    atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "config": config,
                 "git": git_commit(), "torch_rng": torch.get_rng_state()}, path)


def _resume(path: Path, model, opt, sched, config: dict | None) -> int:
    """Restore a checkpoint of the same config; one of another config is set aside.

    So is one whose optimiser has other parameter groups (written before a code change).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    groups = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
    if config is not None and state.get("config") != config:
        reason = "a different config"
    elif groups != [len(g["params"]) for g in opt.param_groups]:
        reason = "an optimiser with other parameter groups"
    else:
        reason = None
    if reason:
        distributed.barrier()  # every rank has read it before rank 0 sets it aside
        if distributed.is_main():
            stale = path.with_suffix(".stale.pt")
            path.replace(stale)
            log.warning("%s was written by %s: moved to %s, starting from step 0", path, reason, stale)
        return 0
    log.info("resuming from %s at step %d", path, state["step"])
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
