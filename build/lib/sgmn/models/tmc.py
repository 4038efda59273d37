"""Temporal Motion Compensation (SGMN Eq. 3): frame-difference tokens between frame tokens.

The official code is CLIP2Video's temporal difference block: differences of adjacent frame
embeddings, refined by one attention block and squashed to (-1, 1), are interleaved with the
frames as [v0, d1, v1, ..., d_{L-1}, v_{L-1}]; a small transformer runs over that sequence and
the frame positions, plus a residual to the input, are the motion-compensated frame embeddings.

Frames arrive compacted (real frames first, `mask` a prefix; see `compact_frames`), so d_t is the
difference of two adjacent real frames, and the padding mask is each sample's own (the official
code repeats it head-major, which gives sample b the mask of another sample in training).
"""
from __future__ import annotations

import torch
from torch import nn


def compact_frames(mask: torch.Tensor, *tensors: torch.Tensor):
    """Move each clip's real frames to the front, keeping their order (frame masking can leave gaps).

    mask (B, L) bool; each tensor (B, L, ...). Returns (mask, *tensors) reordered.
    """
    order = (~mask).to(torch.uint8).argsort(dim=1, stable=True)           # real frames first
    out = [mask.gather(1, order)]
    for t in tensors:
        idx = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
        out.append(t.gather(1, idx))
    return tuple(out)


def _encoder_layer(dim: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True)


class TMC(nn.Module):
    def __init__(self, dim: int, heads: int = 8, layers: int = 2, max_frames: int = 64):
        super().__init__()
        self.pos = nn.Embedding(2 * max_frames, dim)       # positions of the interleaved sequence
        self.kind = nn.Embedding(2, dim)                   # 0: difference token, 1: frame token
        self.diff_attn = _encoder_layer(dim, heads)
        self.diff_norm = nn.LayerNorm(dim)
        self.encoder = nn.TransformerEncoder(_encoder_layer(dim, heads), layers, enable_nested_tensor=False)
        for emb in (self.pos, self.kind):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) frame embeddings with compacted `mask` (B, L) -> (B, L, D)."""
        b, l, d = x.shape
        if l == 1:
            return x
        diff = x[:, 1:] - x[:, :-1]                                        # (B, L-1, D)
        diff_mask = mask[:, 1:]                                            # both frames real
        # key 0 always attendable: a one-frame clip has no real difference, and a fully masked
        # row would give NaN (that survives masking in the backward pass)
        keys = diff_mask.clone()
        keys[:, 0] = True
        diff = self.diff_attn(diff + self.pos.weight[1:2 * l - 1:2], src_key_padding_mask=~keys)
        diff = 2 * torch.sigmoid(self.diff_norm(diff)) - 1                 # (B, L-1, D) in (-1, 1)
        diff = diff * diff_mask.unsqueeze(-1)
        # interleave [v0, d1, v1, ..., d_{L-1}, v_{L-1}]: (B, 2L-1, D)
        seq = torch.cat([x[:, :1], torch.stack([diff, x[:, 1:]], 2).flatten(1, 2)], 1)
        kinds = torch.ones(2 * l - 1, dtype=torch.long, device=x.device)
        kinds[1::2] = 0
        seq_mask = torch.cat([mask[:, :1], torch.stack([diff_mask, mask[:, 1:]], 2).flatten(1, 2)], 1)
        seq = seq + self.pos.weight[: 2 * l - 1] + self.kind(kinds)
        out = self.encoder(seq, src_key_padding_mask=~seq_mask)
        return out[:, 0::2] + x                                           # frame positions (B, L, D)
