"""Helpers shared by the per-method test files (imported as `method_checks`; pytest puts tests/
on sys.path)."""
from __future__ import annotations

import torch


def trainer_loss(out: dict) -> torch.Tensor:
    """What the trainer minimises: the sum of the `*_loss` terms."""
    return sum(v for k, v in out.items() if k.endswith("_loss"))


def overfit_losses(model, batch: dict, steps: int, lr: float = 1e-3, loss_of=None) -> list[float]:
    """Adam on one batch for `steps` steps; the loss before each step (`loss_of(model.loss(batch))`,
    default the sum of every returned term)."""
    loss_of = loss_of or (lambda out: sum(out.values()))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_of(model.loss(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
