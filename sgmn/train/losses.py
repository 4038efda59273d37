"""Losses. The paper's similarity loss is the VSE++ triplet (Faghri et al., its ref [7])."""
from __future__ import annotations

import torch


def vse_triplet(sim: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                hardest: bool = True) -> torch.Tensor:
    """VSE++ max-of-hinges triplet loss over a (B, B) video x image similarity matrix.

    Row b pairs video b with its image b (the diagonal). For each direction the hardest
    in-batch negative is used: hinge(margin + s(v, i_neg) - s(v, i_pos)), summed over both
    directions and averaged over the batch. A row without any negative
    (all one product) has hardest = -inf and contributes 0. Pairs of the same product (same label) are not
    negatives, since a batch may hold two clips of one product.
    """
    pos = sim.diagonal()                                                   # (B,)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)                      # (B, B)
    if not hardest:
        hinge_v2i = (margin + sim - pos.unsqueeze(1)).clamp(min=0).masked_fill(same, 0)  # (B, B)
        hinge_i2v = (margin + sim - pos.unsqueeze(0)).clamp(min=0).masked_fill(same, 0)
        n_neg = (~same).sum(1).clamp(min=1)
        return (hinge_v2i.sum(1) / n_neg + hinge_i2v.sum(0) / n_neg).mean()
    neg = sim.masked_fill(same, float("-inf"))
    hardest_image = neg.max(dim=1).values                                  # per video (B,)
    hardest_video = neg.max(dim=0).values                                  # per image (B,)
    v2i = (margin + hardest_image - pos).clamp(min=0)
    i2v = (margin + hardest_video - pos).clamp(min=0)
    return (v2i + i2v).mean()
