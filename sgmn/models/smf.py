"""Selective Multi-modal Fusion (SGMN Eqs. 17-21): a cross-encoder on hard candidates.

For each shop image, the candidates are its own clip and the K hardest clips of other products
under the fused GRA similarity M = V.I^T + lambda A.T^T (Eq. 17; indices detached). The text is
fused into the tokens (Eq. 19), the image tokens pass a self-attention block and cross-attend to
the candidate clip's frame tokens (Eq. 20), and a pooled head scores the pair; a cross-entropy
over the candidates targets the positive in every row (Eq. 21; the official code's diag bug
made rows 1-3 target negatives). Symmetric: the same scorer ranks the candidate images of each
clip as well.

The fusion layer is the official one-key cross-attention, x = LN(x + MHA(x, text)); with a single
key the softmax is 1, so it is exactly LN(x + W_o(W_v t + b_v) + b_o), computed here as that
linear map (no attention over one key). Its dropout (official 0.1) on that attention weight of 1
drops a head's share of the text for a token, which is what `TextFusion` draws.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_candidates(sim: torch.Tensor, labels: torch.Tensor, num_neg: int):
    """Per row: the positive (the diagonal) then the num_neg highest-scoring other products.

    Returns (N, 1 + num_neg) indices and a validity mask (False where a row has fewer negatives).
    """
    n = sim.shape[0]
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    num_neg = min(num_neg, n - 1)
    neg = sim.detach().masked_fill(same, float("-inf")).topk(num_neg, dim=1)
    idx = torch.cat([torch.arange(n, device=sim.device).unsqueeze(1), neg.indices], 1)
    valid = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=sim.device), torch.isfinite(neg.values)], 1)
    return idx, valid


class TextFusion(nn.Module):
    """Eq. 19: add the (filtered) text to every token, then a post-LN feed-forward block.

    The official CrossAttentionLayer(dim, heads, 2 dim, dropout) with one key and value (the
    text): x = LN(x + drop(W_o (a * (W_v t + b_v)) + b_o)), x = LN(x + drop(FFN(x))), where the
    attention weight a is 1 per head and token, dropped (to 0, else 1 / (1 - p)) in training.
    """

    def __init__(self, dim: int, text_dim: int, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        self.value, self.out = nn.Linear(text_dim, dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop, self.heads, self.p = nn.Dropout(dropout), heads, dropout

    def forward(self, tokens: torch.Tensor, text: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        # tokens (B, T, D); text (B, Dt); present (B,): a missing text adds nothing
        b, t, d = tokens.shape
        value = self.value(text).view(b, 1, self.heads, d // self.heads)   # (B, 1, H, D/H)
        if self.training and self.p > 0:   # dropout on the attention weight (1): per token and head
            keep = torch.rand(b, t, self.heads, 1, device=tokens.device) >= self.p
            value = value * keep.to(value.dtype) / (1 - self.p)
        added = self.out(value.expand(b, t, -1, -1).flatten(2)) * present.view(b, 1, 1).to(tokens.dtype)
        x = self.norm1(tokens + self.drop(added))
        return self.norm2(x + self.drop(self.ffn(x)))


class PairScorer(nn.Module):
    """Eqs. 20-21's perceptual module: self-attention on the image tokens, cross-attention to the
    clip's tokens, a pooled head -> one logit per (image, clip) pair.

    Whatever depends on one side only (the image's self-attention block, its queries, a clip's
    keys and values) is computed once per image or clip and indexed per pair, so a pair costs
    only its attention product and feed-forward.
    """

    def __init__(self, dim: int, heads: int = 8, max_tokens: int = 512, pool: str = "avg",
                 self_heads: int | None = None):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        self.self_block = nn.TransformerEncoderLayer(dim, self_heads or heads, 4 * dim, dropout=0.1,
                                                     activation="gelu", batch_first=True, norm_first=True)
        self.norm_cross = nn.LayerNorm(dim)   # the official ResidualCrossAttention shares it for q and kv
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.heads, self.pool = heads, pool

    @torch.no_grad()
    def copy_clip_text_layer(self, block: nn.Module, positions: torch.Tensor) -> None:
        """The official init (modeling_sgmn.py:140-157): the self-attention block from CLIP's
        text layer 0 (an open_clip ResidualAttentionBlock) and the positions from its text
        positional embedding (as many as both have)."""
        sb = self.self_block
        pairs = [(sb.norm1, block.ln_1), (sb.norm2, block.ln_2), (sb.self_attn.out_proj, block.attn.out_proj),
                 (sb.linear1, block.mlp.c_fc), (sb.linear2, block.mlp.c_proj)]
        if block.ln_1.weight.shape != sb.norm1.weight.shape or block.mlp.c_fc.weight.shape != sb.linear1.weight.shape:
            raise ValueError(f"init official: CLIP's text width {block.ln_1.weight.shape[0]} (mlp "
                             f"{block.mlp.c_fc.weight.shape[0]}) does not match SMF's {sb.norm1.weight.shape[0]} "
                             f"(mlp {sb.linear1.weight.shape[0]})")
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        sb.self_attn.in_proj_weight.copy_(block.attn.in_proj_weight)
        sb.self_attn.in_proj_bias.copy_(block.attn.in_proj_bias)
        n = min(len(self.pos), len(positions))
        self.pos[:n] = positions[:n]

    def prepare(self, img_tok: torch.Tensor, vid_tok: torch.Tensor):
        """Per-image state (N, Tq, D) and queries, per-clip keys and values (N, H, T, D/H)."""
        x = self.self_block(img_tok + self.pos[: img_tok.shape[1]])
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        k, v = self.kv(self.norm_cross(vid_tok)).chunk(2, dim=-1)
        return x, split(self.q(self.norm_cross(x))), split(k), split(v)

    def forward(self, state, img_idx: torch.Tensor, vid_idx: torch.Tensor, vid_mask: torch.Tensor):
        """Logits (P,) of the pairs (image img_idx[p], clip vid_idx[p]); vid_mask (N, Tv) True=real."""
        x, q, k, v = state
        a = self.cross_attend(q, k, v, img_idx, vid_idx, vid_mask)           # (P, Tq, D)
        y = x.index_select(0, img_idx) + self.out(a)
        y = y + self.mlp(self.norm_mlp(y))
        pooled = y.mean(1) if self.pool == "avg" else y[:, 0]
        return self.head(pooled).squeeze(-1)

    @staticmethod
    def cross_attend(q, k, v, img_idx, vid_idx, vid_mask) -> torch.Tensor:
        """Eq. 20's cross-attention of every pair, (P, Tq, D), without copying a clip's keys and
        values per pair.

        A query row's softmax runs over its own clip's keys only, so the queries of all the
        images paired with one clip can attend together: they are stacked along the query axis
        (M slots per clip, M = the most pairs any clip has; empty slots repeat image 0 and are
        dropped). One attention call per clip batch then reads each clip's keys once, and their
        gradient is summed inside the attention's backward instead of by a scatter over pairs
        (which on CPU cost more than the attention itself).
        """
        n, h, tq, dh = q.shape
        p = vid_idx.shape[0]
        order = torch.argsort(vid_idx, stable=True)
        counts = torch.bincount(vid_idx, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(vid_idx)
        slot[order] = torch.arange(p, device=vid_idx.device) - starts[vid_idx[order]]
        m = int(counts.max())
        table = torch.zeros(n * m, dtype=torch.long, device=q.device)
        table[vid_idx * m + slot] = img_idx                                    # (clip, slot) -> image
        qs = q.index_select(0, table).view(n, m, h, tq, dh).transpose(1, 2).reshape(n, h, m * tq, dh)
        a = F.scaled_dot_product_attention(qs, k, v, attn_mask=vid_mask[:, None, None, :])
        a = a.view(n, h, m, tq, dh).permute(0, 2, 3, 1, 4).reshape(n * m, tq, h * dh)
        return a.index_select(0, vid_idx * m + slot)


class SMF(nn.Module):
    def __init__(self, dim: int, text_dim: int | None, heads: int = 8, k: int = 4,
                 k_counts_positive: bool = False, symmetric: bool = True, pool: str = "avg",
                 temperature: float = 0.01, max_tokens: int = 512, normalize: bool = False,
                 fusion_dropout: float = 0.0, self_heads: int | None = None):
        super().__init__()
        self.fusion = TextFusion(dim, text_dim, heads, fusion_dropout) if text_dim else None  # shared by both streams
        self.scorer = PairScorer(dim, heads, max_tokens, pool, self_heads)
        self.num_neg = k - 1 if k_counts_positive else k
        self.symmetric, self.temperature, self.normalize = symmetric, temperature, normalize

    def fuse(self, tokens, text, present):
        if self.normalize:   # official: tokens (and the already unit-norm texts) L2-normalised first
            tokens = F.normalize(tokens, dim=-1)
        return tokens if self.fusion is None or text is None else self.fusion(tokens, text, present)

    def pair_logits(self, state, vid_mask, img_idx, vid_idx):
        """Logits (shaped as the indices) of image img_idx[...] against clip vid_idx[...].

        A pair asked for more than once (the positive of both directions, a pair hard for both
        its image and its clip, a padded candidate slot) is scored once.
        """
        n = vid_mask.shape[0]
        pairs, where = torch.unique(img_idx.flatten() * n + vid_idx.flatten(), return_inverse=True)
        logits = self.scorer(state, pairs // n, pairs % n, vid_mask)
        return logits[where].view(img_idx.shape) / self.temperature

    def forward(self, sim, labels, img_tok, vid_tok, vid_mask, img_text=None, vid_text=None,
                img_present=None, vid_present=None) -> torch.Tensor:
        """sim (N, N) fused video x image similarity; img_tok (N, Ti, D); vid_tok (N, Tv, D),
        vid_mask (N, Tv) True at real frame tokens. Returns the matching loss L_m."""
        img_tok = self.fuse(img_tok, img_text, img_present)
        vid_tok = self.fuse(vid_tok, vid_text, vid_present)
        n = sim.shape[0]
        state = self.scorer.prepare(img_tok, vid_tok)
        # image -> candidate clips (rows of sim.T); symmetric: clip -> candidate images too
        cand, valid = hard_candidates(sim.T, labels, self.num_neg)        # (N, C) clip indices
        rows = torch.arange(n, device=sim.device).unsqueeze(1).expand_as(cand)
        img_idx, vid_idx, valids = [rows], [cand], [valid]
        if self.symmetric:
            cand, valid = hard_candidates(sim, labels, self.num_neg)      # (N, C) image indices
            img_idx, vid_idx, valids = img_idx + [cand], vid_idx + [rows], valids + [valid]
        logits = self.pair_logits(state, vid_mask, torch.stack(img_idx), torch.stack(vid_idx))
        logits = logits.masked_fill(~torch.stack(valids), float("-inf"))  # (directions, N, C)
        # the positive (column 0) in every row; each direction has N rows, so the mean over all
        # rows is the mean of the directions' cross-entropies
        target = torch.zeros(logits.shape[0] * n, dtype=torch.long, device=sim.device)
        return F.cross_entropy(logits.flatten(0, 1), target)
