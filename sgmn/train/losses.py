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


def distance_weighted_triplet(sim: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                              dim: int = 512, cutoff: float = 1.7,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """The official code's triplet: one negative per anchor by distance-weighted sampling.

    Wu et al. 2017: on the unit sphere in `dim` dimensions, pairwise distances concentrate; a
    negative is drawn with probability proportional to the inverse of that density,
    q(d) ~ d^(dim-2) (1 - d^2/4)^((dim-3)/2), with d = sqrt(2 - 2s) clamped at 0.5 and weight 0
    at d >= cutoff and for same-product pairs. The hinge is summed (not averaged) over anchors of
    both directions; an anchor with no candidate contributes 0.
    """
    pos = sim.diagonal()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)

    def one_direction(s: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = (2 - 2 * s.float()).clamp(min=0).sqrt().clamp(min=0.5)
            log_w = -(dim - 2) * d.log() - (dim - 3) / 2 * (1 - d.pow(2) / 4).clamp(min=1e-8).log()
            valid = ~same & (d < cutoff)
            log_w = log_w.masked_fill(~valid, float("-inf"))
            has = valid.any(1)
            w = (log_w - log_w.max(1, keepdim=True).values.nan_to_num(neginf=0)).exp().nan_to_num(0)
            w[~has] = 1.0  # placeholder row, zeroed below
            neg = torch.multinomial(w, 1, generator=generator).squeeze(1)
        hinge = (margin + s.gather(1, neg.unsqueeze(1)).squeeze(1) - p).clamp(min=0)
        return (hinge * has).sum()

    return one_direction(sim, pos) + one_direction(sim.T, pos)


def text_infonce(sim: torch.Tensor, labels: torch.Tensor, present: torch.Tensor,
                 temperature: float = 0.01) -> torch.Tensor:
    """One-way ASR -> title InfoNCE (the official text loss) over the pairs with both texts.

    Titles of the same product other than the row's own are not negatives.
    """
    keep = present.nonzero().squeeze(1)
    if keep.numel() < 2:
        return sim.sum() * 0
    s = sim[keep][:, keep] / temperature
    lab = labels[keep]
    same = lab.unsqueeze(0) == lab.unsqueeze(1)
    eye = torch.eye(len(keep), dtype=torch.bool, device=sim.device)
    s = s.masked_fill(same & ~eye, float("-inf"))
    return torch.nn.functional.cross_entropy(s, torch.arange(len(keep), device=sim.device))


def masked_vse_triplet(sim: torch.Tensor, labels: torch.Tensor, present: torch.Tensor,
                       margin: float = 0.2, hardest: bool = True) -> torch.Tensor:
    """vse_triplet over the rows and columns whose texts are present (empty ASR or title)."""
    keep = present.nonzero().squeeze(1)
    if keep.numel() < 2:
        return sim.sum() * 0
    return vse_triplet(sim[keep][:, keep], labels[keep], margin, hardest)


def kl_rows(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)) per row, averaged over rows (Eq. 16's K)."""
    return torch.nn.functional.kl_div(logits.log_softmax(-1), target_logits.softmax(-1),
                                      reduction="batchmean")
