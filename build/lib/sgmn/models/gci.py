"""Graph-based Cross-domain Interaction (SGMN Eqs. 6-16).

Nodes are the N clips and N shop images of the (global) batch. Four graphs weight attention
between them: G_V2V and G_I2I (intra-domain) and G_V2I, G_I2V (cross-domain). Each graph is a
connection mask (Eqs. 8-9: a node keeps its top K = ratio x N neighbours) times a relevance
(Eqs. 10-12); in attention a connected edge adds its relevance to the logit and an unconnected
one is -inf ("the graph replaces the mask in MHA"). A graph switched off (Table 6) leaves plain
attention there.

Cross-domain relevance (Eq. 10) comes from the frame profile h[v, i, t] = cos(frame t of v, image
i): its mean over real frames plus an MLP of its sorted values (top K = L); G_I2V uses the same
profile transposed with its own MLP (the official I->V profile is a constant). The batch linear
layer (Eq. 11) mixes each row across the batch. The cross-domain edges (Eq. 8) are chosen from
the profile's mean ("Mean(H)"), and K counts frames (K = L/2, the paper) or the batch (N/2, the
official code). Eq. 12's G = R x C is zero off the graph; as an attention mask that is -inf
(a zero logit would still attend), so off-graph entries are -inf here.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def topk_connections(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) bool: each row keeps the entries >= its k-th largest (ties kept)."""
    k = max(1, min(k, sim.shape[1]))
    kth = sim.topk(k, dim=1).values[:, -1:]
    return sim >= kth


def frame_profile(frames: torch.Tensor, mask: torch.Tensor, images: torch.Tensor,
                  normalise: str = "raw") -> torch.Tensor:
    """h (Nv, Ni, L): cosine of every real frame of every clip with every image; 0 at padding.

    normalise="l2" is the official variant: leaky-ReLU, then L2 over the real frames.
    """
    h = torch.einsum("vld,id->vil", frames, images) * mask.unsqueeze(1)   # (Nv, Ni, L)
    if normalise == "l2":
        h = F.normalize(F.leaky_relu(h, 0.1) * mask.unsqueeze(1), dim=-1)
    return h


def profile_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean(H) of Eqs. 8 and 10: the (Nq, Nk, L) profile's mean over the real frames (mask)."""
    return (h * mask).sum(-1) / mask.sum(-1).clamp(min=1)


class ProfileRelevance(nn.Module):
    """A = mean over real frames + MLP(sorted profile) (Eq. 10), from an (Nq, Nk, L) profile."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_frames, num_frames), nn.ReLU(), nn.Linear(num_frames, 1))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # mask (Nq, Nk, L) bool of real frames for each entry
        ranked = h.masked_fill(~mask, float("-inf")).sort(-1, descending=True).values
        ranked = ranked.masked_fill(torch.isinf(ranked), 0.0)             # padding after the real frames
        return profile_mean(h, mask) + self.mlp(ranked).squeeze(-1)       # (Nq, Nk)


class BatchLinear(nn.Module):
    """Eq. 11: Linear-ReLU-Linear across the batch axis of a relevance row, as a residual.

    The last layer starts at zero so that R = A at initialisation (the paper gives no init).
    """

    def __init__(self, n: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, n), nn.Linear(n, n)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.n = n

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.shape[1] != self.n:
            raise ValueError(f"batch linear layer built for a batch of {self.n}, got {a.shape[1]}")
        return a + self.fc2(F.relu(self.fc1(a)))


@contextlib.contextmanager
def _no_mha_fastpath():
    """nn.TransformerEncoderLayer's inference fast path (eval mode, no grad) returns NaN with a
    float attention mask (torch 2.14 on CPU, even an all-finite one); the graph masks are float,
    so GCI always takes the regular path."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _graph_mask(connect: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    return relevance.masked_fill(~connect, float("-inf"))


class GCI(nn.Module):
    def __init__(self, dim: int, num_frames: int, batch_size: int, heads: int = 8,
                 graphs: dict | None = None, connect_ratio: float = 0.5,
                 intra_connection: str = "intra", relevance_profile: str = "raw",
                 batch_linear: bool = True, attention: str = "two_stage",
                 connect_count: str = "frames", cross_connection: str = "profile_mean"):
        super().__init__()
        self.graphs = {"i2i": True, "v2v": True, "cross": True, **(graphs or {})}
        self.connect_ratio, self.intra_connection = connect_ratio, intra_connection
        if connect_count not in ("frames", "batch") or cross_connection not in ("profile_mean", "global"):
            raise ValueError(f"GCI: connect_count {connect_count!r} (frames | batch), "
                             f"cross_connection {cross_connection!r} (profile_mean | global)")
        self.num_frames, self.connect_count, self.cross_connection = num_frames, connect_count, cross_connection
        self.relevance_profile, self.attention = relevance_profile, attention
        if self.graphs["cross"]:  # relevance only exists where a cross-domain graph uses it
            self.v2i_rel, self.i2v_rel = ProfileRelevance(num_frames), ProfileRelevance(num_frames)
            self.bll_v2i = BatchLinear(batch_size) if batch_linear else None
            self.bll_i2v = BatchLinear(batch_size) if batch_linear else None
        if attention == "two_stage":   # Fig. 4: cross-domain MHA + LN, then intra-domain MHA + FFN
            self.cross_v = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.cross_i = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm_v, self.norm_i = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.intra_v = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True)
            self.intra_i = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True)
        elif attention == "joint":     # official: one post-LN layer over [V; I] with a block mask
            self.joint = nn.TransformerEncoderLayer(dim, heads, dim, dropout=0.1, batch_first=True)
        else:
            raise ValueError(f"unknown GCI attention '{attention}' (two_stage or joint)")

    def relevance(self, v, i, frames, mask):
        """Cross-domain relevance (Eqs. 10-11): R_V2I (N, N), R_I2V (N, N), and the profile's
        mean Mean(H) (N, N) that selects the cross-domain edges (Eq. 8)."""
        h = frame_profile(frames, mask, i, self.relevance_profile)        # (N, N, L)
        m = mask.unsqueeze(1).expand_as(h)
        r_v2i = self.v2i_rel(h, m)
        r_i2v = self.i2v_rel(h.transpose(0, 1), m.transpose(0, 1))
        if self.bll_v2i is not None:
            r_v2i, r_i2v = self.bll_v2i(r_v2i), self.bll_i2v(r_i2v)
        return r_v2i, r_i2v, profile_mean(h, m).detach()

    def num_edges(self, n: int) -> int:
        """K of Eq. 8: ratio x the frame count (the paper's L) or x the batch N (official)."""
        count = self.num_frames if self.connect_count == "frames" else n
        return max(1, min(n, round(self.connect_ratio * count)))

    def connections(self, v, i, h_mean=None):
        """Boolean edges (row = query) of the four graphs, from similarities under no_grad."""
        k = self.num_edges(v.shape[0])
        with torch.no_grad():
            s_vi = v @ i.T
            s_cross = h_mean if h_mean is not None and self.cross_connection == "profile_mean" else s_vi
            s_vv = v @ v.T if self.intra_connection == "intra" else s_vi
            s_ii = i @ i.T if self.intra_connection == "intra" else s_vi.T
            return {"v2i": topk_connections(s_cross, k), "i2v": topk_connections(s_cross.T, k),
                    "v2v": topk_connections(s_vv, k), "i2i": topk_connections(s_ii, k)}

    def masks(self, v, i, connect, r_v2i, r_i2v):
        """Additive attention masks (row = query) of the four graphs; None = plain attention."""
        g = {}
        if self.graphs["cross"]:
            g["v2i"] = _graph_mask(connect["v2i"], r_v2i)
            g["i2v"] = _graph_mask(connect["i2v"], r_i2v)
        if self.graphs["v2v"]:
            g["v2v"] = _graph_mask(connect["v2v"], torch.exp(-torch.cdist(v, v)))
        if self.graphs["i2i"]:
            g["i2i"] = _graph_mask(connect["i2i"], torch.exp(-torch.cdist(i, i)))
        return g

    def forward(self, v: torch.Tensor, i: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor):
        """v, i (N, D) normalised globals; frames (N, L, D) normalised, mask (N, L).

        Returns V_g, I_g (N, D) normalised and, for the KL loss (Eq. 16), the cross-domain
        graphs as {"v2i": (R_V2I, edges), "i2v": (R_I2V, edges)} (None without them).
        """
        r_v2i = r_i2v = h_mean = None
        if self.graphs["cross"]:  # frames and images detached: the relevance (and the KL) train only itself
            r_v2i, r_i2v, h_mean = self.relevance(v, i.detach(), frames.detach(), mask)
        connect = self.connections(v, i, h_mean)
        g = self.masks(v, i, connect, r_v2i, r_i2v)
        g = {key: m.to(v.dtype) for key, m in g.items()}
        with _no_mha_fastpath():
            vg, ig = self._attend(v, i, g)
        cross = {"v2i": (r_v2i, connect["v2i"]), "i2v": (r_i2v, connect["i2v"])} if r_v2i is not None else None
        return F.normalize(vg, dim=-1), F.normalize(ig, dim=-1), cross

    def _attend(self, v: torch.Tensor, i: torch.Tensor, g: dict):
        """Eqs. 13-14 (two-stage) or the official joint layer, guided by the graph masks g."""
        if self.attention == "joint":
            n = v.shape[0]
            full = v.new_zeros(2 * n, 2 * n)
            for key, rows, cols in (("v2v", 0, 0), ("v2i", 0, n), ("i2v", n, 0), ("i2i", n, n)):
                if key in g:
                    full[rows:rows + n, cols:cols + n] = g[key]
            out = self.joint(torch.cat([v, i]).unsqueeze(0), src_mask=full).squeeze(0)
            vg, ig = out[:n], out[n:]
        else:
            vq, iq = v.unsqueeze(0), i.unsqueeze(0)                           # one sequence of N nodes
            vm = self.norm_v(vq + self.cross_v(vq, iq, iq, attn_mask=g.get("v2i"), need_weights=False)[0])
            im = self.norm_i(iq + self.cross_i(iq, vq, vq, attn_mask=g.get("i2v"), need_weights=False)[0])
            vg = self.intra_v(vm, src_mask=g.get("v2v")).squeeze(0)
            ig = self.intra_i(im, src_mask=g.get("i2i")).squeeze(0)
        return vg, ig
