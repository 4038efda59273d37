"""Losses. The paper's similarity loss is the VSE++ triplet (Faghri et al., its ref [7]).

Every triplet hinge is reduced over its anchors by `reduction`: "sum", as VSE++ and the
official code do (so its weight against the mean-reduced SMF cross-entropy and the KL term
grows with the batch), or "mean" (config `sgmn.triplet_reduction`).
"""
from __future__ import annotations

import torch

REDUCTIONS = ("sum", "mean")


def _reduce(per_anchor: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "mean":
        return per_anchor.mean()
    raise ValueError(f"unknown triplet reduction '{reduction}' (one of {', '.join(REDUCTIONS)})")


def vse_triplet(sim: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                hardest: bool = True, reduction: str = "sum") -> torch.Tensor:
    """VSE++ max-of-hinges triplet loss over a (B, B) video x image similarity matrix (Eq. 5).

    Row b pairs video b with its image b (the diagonal). For each direction the hardest
    in-batch negative is used: hinge(margin + s(v, i_neg) - s(v, i_pos)); the two directions'
    hinges are added per anchor and reduced over the batch (`reduction`, VSE++: sum). With
    hardest=False each anchor's hinge is its mean over all negatives. A row without any
    negative (all one product) has hardest = -inf and contributes 0. Pairs of the same product
    (same label) are not negatives, since a batch may hold two clips of one product.
    """
    pos = sim.diagonal()                                                   # (B,)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)                      # (B, B)
    if not hardest:
        hinge_v2i = (margin + sim - pos.unsqueeze(1)).clamp(min=0).masked_fill(same, 0)  # (B, B)
        hinge_i2v = (margin + sim - pos.unsqueeze(0)).clamp(min=0).masked_fill(same, 0)
        n_neg = (~same).sum(1).clamp(min=1)
        return _reduce(hinge_v2i.sum(1) / n_neg + hinge_i2v.sum(0) / n_neg, reduction)
    neg = sim.masked_fill(same, float("-inf"))
    hardest_image = neg.max(dim=1).values                                  # per video (B,)
    hardest_video = neg.max(dim=0).values                                  # per image (B,)
    v2i = (margin + hardest_image - pos).clamp(min=0)
    i2v = (margin + hardest_video - pos).clamp(min=0)
    return _reduce(v2i + i2v, reduction)


def distance_weighted_triplet(sim: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                              dim: int = 512, cutoff: float = 1.7,
                              generator: torch.Generator | None = None,
                              reduction: str = "sum") -> torch.Tensor:
    """The official code's triplet: one negative per anchor by distance-weighted sampling.

    Wu et al. 2017: on the unit sphere in `dim` dimensions, pairwise distances concentrate; a
    negative is drawn with probability proportional to the inverse of that density,
    q(d) ~ d^(dim-2) (1 - d^2/4)^((dim-3)/2), with d = sqrt(2 - 2s) clamped at 0.5 and weight 0
    at d >= cutoff and for same-product pairs. The hinge of both directions is reduced over
    anchors (`reduction`; the official code sums); an anchor with no candidate contributes 0.
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
        return hinge * has

    return _reduce(one_direction(sim, pos) + one_direction(sim.T, pos), reduction)


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
                       margin: float = 0.2, hardest: bool = True, reduction: str = "sum") -> torch.Tensor:
    """vse_triplet over the rows and columns whose texts are present (empty ASR or title)."""
    keep = present.nonzero().squeeze(1)
    if keep.numel() < 2:
        return sim.sum() * 0
    return vse_triplet(sim[keep][:, keep], labels[keep], margin, hardest, reduction)


def kl_rows(graph_logits: torch.Tensor, target_logits: torch.Tensor, reference: str = "target",
            connected: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 16's K: a row-wise KL between softmax(graph) and softmax(target), averaged over rows.

    reference="target": KL(P_target || P_graph) = F.kl_div(log_softmax(graph), softmax(target)),
    the paper's K(G, H) read as PyTorch's kl_div(input=G, target=H). reference="graph":
    KL(P_graph || P_target) = F.kl_div(log_softmax(target), softmax(graph)), the official code's
    call, whose gradient reaches the graph through the reference distribution.
    `connected` (bool, same shape) restricts both distributions to the graph's edges (Eq. 12's
    G = R x C); each row keeps at least one edge.
    """
    if reference not in ("target", "graph"):
        raise ValueError(f"unknown KL reference '{reference}' (target or graph)")
    # in fp32 under autocast: near-uniform rows differ by less than bf16's resolution of log p
    graph_logits, target_logits = graph_logits.float(), target_logits.float()
    if connected is not None:  # a finite fill: exp() is exactly 0 and no inf reaches the backward
        fill = -1e4
        graph_logits = graph_logits.masked_fill(~connected, fill)
        target_logits = target_logits.masked_fill(~connected, fill)
    ref, other = (target_logits, graph_logits) if reference == "target" else (graph_logits, target_logits)
    log_p, log_q = ref.log_softmax(-1), other.log_softmax(-1)
    terms = log_p.exp() * (log_p - log_q)                                  # 0 off the graph
    return terms.sum() / ref.shape[0]
