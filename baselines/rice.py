"""RICE (Yang et al., "Cross-view Semantic Alignment for Livestreaming Product Recognition",
ICCV 2023; official code github.com/deepalchemist/crossview-semantic-alignment, "official" below).

Idea kept (spec/baselines.md section 4.8):
- one shared visual encoder for frames and shop images; a clip is the L2-normalised masked mean
  of its L2-normalised frame CLS embeddings; cosine retrieval on these embeddings (inference);
- ICL: symmetric InfoNCE between clip and image embeddings, scaled by a learnable factor
  (official mmf/models/rice/base_task.py:15 `logit_scale` = 4.0, :43-60 `_forward_vic`);
- PMD, at training only: one cross-attention layer where the shop image's patch tokens attend to
  every patch token of the clip's real frames; the pooled output's cosine with a learned vector,
  times `pmd_scale` (official 10), is the match logit; each image scores its own clip and
  `hard_negatives` (official 3) hardest other-product clips by ICL similarity in a 4-way
  cross-entropy (official pretraining.py `_forward_vim`, NUM_SAMPLE = 4);
- PFR, at training only: PMD's per-head attention maps of the positive pairs -> 1x1 conv
  (heads -> 1) -> softmax over keys rebuild each image patch from the detached clip patches, MSE
  against the detached image patches (official pretraining.py `_forward_rec`).

What differs at small scale: the pipeline's CLIP config (e.g. `lpr-tiny-clip`, random init)
replaces ViT-B/32, and RICE trains for the same steps, batch and optimiser as SGMN (equal
compute; the suite's trainer applies them), not the official AdamW 1e-6 recipe. The decoder is
one pre-LN cross-attention block at the encoder's projected width D with a residual on the
queries and a mean over queries (the official decoder adds a CLS token, self-attention and an
MLP, initialised from CLIP's visual layers, at width 768); PFR's head is a single 1x1 conv (the
official one is conv-ReLU-conv-ReLU). The clip embedding averages L2-normalised frame
embeddings (the official `get_feature` averages unnormalised ones, base_task.py:28-41).

RICE_box (`rice.box`, Table 4): RICE crops each frame to the intended product's box found by a
DAB-DETR / TransVOD Lite detector (supplementary section 2). Here the detector is emulated: the
annotated intended-product box of each frame, moved and resized as a detector would
(`target_box`, `target_present`; sgmn.data.datasets.detector_boxes: IoU 0.73-0.90 with the
annotation), stands in for its detections.

RICE_text (`rice.te`): SGMN's text branch (filtered ASR / title features joined with weight
lambda_text) for a text-fair comparison; RICE itself is vision-only.

Shapes: B clips per process, N = B x processes after `gather`, L frames, P patches per frame,
D the encoder's output width, H the PMD heads, C = 1 + hard_negatives candidates per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from sgmn.models.clip import encode_tokens
from sgmn.models.gather import gather
from sgmn.models.method import RetrievalMethod


@dataclass(frozen=True)
class RICEConfig:
    """The `rice` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    box: bool
    te: bool
    lambda_text: float
    icl_scale_init: float
    hard_negatives: int
    pmd_heads: int
    pmd_scale: float
    pmd_weight: float
    pfr_weight: float


# ---- losses ----

def icl_loss(video: torch.Tensor, image: torch.Tensor, labels: torch.Tensor,
             scale: torch.Tensor) -> torch.Tensor:
    """ICL (official base_task.py:43-60 with ContrastiveLoss): symmetric InfoNCE over the (N, N)
    logits (scale * v) . (scale * i), row n's positive being pair n (temperature 1/scale^2).

    Other rows of the same product are masked out of both softmax denominators rather than
    made extra positives: the official loss is plain instance-level InfoNCE (one positive per
    row; its batches hold one clip per product), so masking keeps that loss and only stops it
    from pushing apart two views of one product (as sgmn.models.losses.text_infonce does).
    """
    logits = (scale * video) @ (scale * image).T
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def mine_hard_negatives(sim: torch.Tensor, labels: torch.Tensor, k: int):
    """The k hardest negative clips of each image (official pretraining.py `_forward_vim`: the
    clips ranked highest by ICL similarity, the image's own clip excluded).

    sim (N, N): image x clip similarity (detached); labels (N,) products of the pairs. Clips of
    the image's own product are never picked. Returns index (N, k) long and valid (N, k) bool:
    when fewer than k other-product clips exist, the missing slots are invalid (they hold the
    image's own index, and the PMD loss masks them out).
    """
    n = sim.shape[0]
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    masked = sim.float().masked_fill(same, float("-inf"))
    kk = min(k, n)
    values, index = masked.topk(kk, dim=1)
    if kk < k:
        pad = k - kk
        values = torch.cat([values, values.new_full((n, pad), float("-inf"))], 1)
        index = torch.cat([index, index.new_zeros(n, pad)], 1)
    valid = torch.isfinite(values)
    own = torch.arange(n, device=sim.device).unsqueeze(1).expand(n, k)
    return torch.where(valid, index, own), valid


def pmd_loss(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """PMD's (1 + k)-way cross-entropy with the positive clip at column 0 (official
    HardNegativeCrossEntropyLoss in `_forward_vim`). Invalid negative slots are left out of the
    softmax; an image with no valid negative at all contributes nothing."""
    keep = torch.cat([valid.new_ones(valid.shape[0], 1), valid], 1)
    logits = logits.float().masked_fill(~keep, float("-inf"))
    rows = valid.any(1)
    if not rows.any():
        return logits[:, 0].sum() * 0
    ce = F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long), reduction="none")
    return ce[rows].mean()


def pfr_loss(attn: torch.Tensor, head: nn.Module, video_tokens: torch.Tensor,
             image_tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """PFR (official pretraining.py `_forward_rec`): the positive pairs' per-head attention
    maps attn (N, H, P, K) -> `head` (1x1 conv, H -> 1) -> softmax over the K keys (padding
    masked by key_mask (N, K), True = real) -> times the DETACHED clip patches (N, K, D) rebuild
    each image patch; MSE against the DETACHED image patches (N, P, D). The gradient reaches the
    model only through the attention maps (the decoder's queries and keys)."""
    weights = head(attn).squeeze(1).float()                               # (N, P, K)
    weights = weights.masked_fill(~key_mask.unsqueeze(1), torch.finfo(weights.dtype).min)
    weights = weights.softmax(-1)
    rebuilt = weights @ video_tokens.detach().float()                      # (N, P, D)
    return F.mse_loss(rebuilt, image_tokens.detach().float())


# ---- the pairwise matching decoder ----

class CrossAttentionDecoder(nn.Module):
    """PMD's single cross-attention block: pre-LN, H-head attention of image patches (queries)
    over clip patches (keys/values), output projection, residual on the queries, final LN,
    mean over the queries. Written by hand so the per-head maps come out without
    nn.MultiheadAttention's fast path; padding keys get the dtype's minimum (no -inf, so a clip
    without any real frame gives a uniform row, never NaN)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"rice.pmd_heads={heads} does not divide the encoder width {dim}")
        self.heads, self.head_dim = heads, dim // heads
        self.norm_q, self.norm_kv, self.norm_out = (nn.LayerNorm(dim) for _ in range(3))
        # no key bias: q . b is the same for every key, so softmax cancels it (its gradient is 0)
        self.q, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, D) -> (..., H, T, dh)"""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def forward(self, image_tokens: torch.Tensor, video_tokens: torch.Tensor, key_mask: torch.Tensor,
                candidates: torch.Tensor):
        """image_tokens (N, P, D); video_tokens (N, K, D) with key_mask (N, K); candidates (N, C)
        clip indices per image. -> pooled (N, C, D) and attention maps (N, C, H, P, K)."""
        q = self._split(self.q(self.norm_q(image_tokens))) * self.head_dim ** -0.5   # (N, H, P, dh)
        kv = self.norm_kv(video_tokens)
        k, v = self._split(self.k(kv)), self._split(self.v(kv))                      # (N, H, K, dh)
        k, v, mask = k[candidates], v[candidates], key_mask[candidates]              # (N, C, H, K, dh)
        scores = q.unsqueeze(1) @ k.transpose(-1, -2)                                # (N, C, H, P, K)
        scores = scores.masked_fill(~mask[:, :, None, None, :], torch.finfo(scores.dtype).min)
        attn = scores.softmax(-1)
        ctx = (attn @ v).transpose(-3, -2).flatten(-2)                               # (N, C, P, D)
        x = image_tokens.unsqueeze(1) + self.out(ctx)
        return self.norm_out(x).mean(2), attn


# ---- the method ----

class RICE(RetrievalMethod):
    """RICE (see the module docstring). `score` is the base class's dot product: both encoders
    return unit-norm embeddings, or [e, sqrt(lambda) text] with `te`."""

    name = "rice"
    training_only = ("decoder", "match_vector", "pfr_head")   # PMD and PFR: training only

    def __init__(self, visual: nn.Module, cfg: RICEConfig, num_frames: int, image_size: int,
                 text_dim: int | None = None):
        super().__init__()
        if cfg.te and text_dim is None:
            raise ValueError("rice.te joins the ASR / title features to the embeddings, but text_dim "
                             "is None: run the text_features step and pass its dimension")
        self.cfg = cfg
        self.visual = visual              # open_clip VisionTransformer, shared by frames and images
        self.num_frames, self.image_size = num_frames, image_size
        self.uses_text = cfg.te
        dim = visual.output_dim
        self.icl_scale = nn.Parameter(torch.tensor(float(cfg.icl_scale_init)))
        self.filters = nn.ModuleDict()
        if cfg.te:                        # one filter per text, as SGMN's (Eq. 4)
            self.filters.update({k: nn.Linear(text_dim, text_dim) for k in ("asr", "title")})
        # PMD / PFR only shape training; with both weights 0 they are not built (the same model).
        # When built, both terms are always computed (a 0 weight gives zero gradients), so every
        # parameter takes part in every step (DistributedDataParallel without unused parameters).
        self.decoder = self.match_vector = self.pfr_head = None
        if cfg.pmd_weight > 0 or cfg.pfr_weight > 0:
            self.decoder = CrossAttentionDecoder(dim, cfg.pmd_heads)
            self.match_vector = nn.Parameter(torch.randn(dim) * dim ** -0.5)
            # no bias: the softmax over keys that follows cancels it. Official init: weights 1
            # (pretraining.py `initialize_head_weights`), i.e. the heads' maps summed
            self.pfr_head = nn.Conv2d(cfg.pmd_heads, 1, kernel_size=1, bias=False)
            nn.init.ones_(self.pfr_head.weight)
        visual.output_tokens = self.decoder is not None

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> RICE:
        """RICE of a validated run config (section `rice`), on `clip.visual`."""
        cfg = RICEConfig(**config["rice"])
        if cfg.te and text_dim is None:
            raise ValueError("rice.te needs text features (the text_features step): text_dim is None")
        m = config["model"]
        return cls(clip.visual, cfg, m["num_frames"], m["image_size"], text_dim if cfg.te else None)

    # ---- encoders ----
    def _frames_used(self, batch: dict):
        """(B, L) frames entering the mean, and (B, L) frames to crop (None without `box`)."""
        mask = batch["frame_mask"].bool()
        if not self.cfg.box:
            return mask, None
        if "target_box" not in batch or "target_present" not in batch:
            raise ValueError("rice.box crops frames to the intended product: the clip batch needs "
                             "target_box and target_present")
        boxed = mask & batch["target_present"].bool()
        has_box = boxed.any(1, keepdim=True)
        return torch.where(has_box, boxed, mask), boxed

    def _crop(self, x: torch.Tensor, boxes: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """RoIAlign of each frame (n, 3, H, W) to its normalised box (n, 4) at S x S; frames with
        crop False are returned unchanged."""
        h, w = x.shape[-2:]
        scale = boxes.new_tensor([w, h, w, h])
        px = boxes.clamp(0, 1) * scale
        rois = torch.cat([torch.arange(len(x), device=x.device, dtype=px.dtype).unsqueeze(1), px], 1)
        size = self.image_size
        out = roi_align(x, rois.to(x.dtype), output_size=(size, size), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        if out.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"frames are {h}x{w} but model.image_size is {size}")
        return torch.where(crop[:, None, None, None], out, x)

    def _encode_video(self, batch: dict):
        """-> clip embedding (B, D), patch tokens (B, L*P, D) or None, key mask (B, L*P) or None.

        Only the frames used are encoded (index_select, as SGMN.encode_frames). With `box`, each
        clip's frames with a target box are cropped to it and the others are left out of the
        mean; a clip with no boxed frame at all keeps all its real frames, uncropped."""
        used, crop = self._frames_used(batch)
        b, l = used.shape
        idx = used.flatten().nonzero().squeeze(1)
        x = batch["frames"].flatten(0, 1).index_select(0, idx)
        if crop is not None:
            x = self._crop(x, batch["target_box"].flatten(0, 1).index_select(0, idx).to(x.dtype),
                           crop.flatten().index_select(0, idx))
        cls, tok = encode_tokens(self.visual, x)
        cls = F.normalize(cls, dim=-1)
        frames = cls.new_zeros(b * l, cls.shape[-1]).index_copy(0, idx, cls).view(b, l, -1)
        pooled = frames.sum(1) / used.sum(1, keepdim=True).clamp(min=1).to(frames.dtype)
        tokens = key_mask = None
        if tok is not None:
            patches = tok[:, 1:]                                               # drop CLS
            p = patches.shape[1]
            tokens = patches.new_zeros(b * l, p, patches.shape[-1]).index_copy(0, idx, patches)
            tokens = tokens.view(b, l * p, -1)
            key_mask = used.repeat_interleave(p, dim=1)
        return F.normalize(pooled, dim=-1), tokens, key_mask

    def _encode_image(self, images: torch.Tensor):
        cls, tok = encode_tokens(self.visual, images)
        return F.normalize(cls, dim=-1), (tok[:, 1:] if tok is not None else None)

    def encode_text(self, feats: torch.Tensor, present: torch.Tensor, kind: str) -> torch.Tensor:
        """Filtered, normalised text; a missing text is a zero vector (as SGMN.encode_text)."""
        return F.normalize(self.filters[kind](feats), dim=-1) * present.unsqueeze(-1).to(feats.dtype)

    def _with_text(self, visual: torch.Tensor, batch: dict, kind: str) -> torch.Tensor:
        """[e, sqrt(lambda) text] with `te` (as SGMN._with_text), e alone without."""
        if not self.cfg.te:
            return visual
        feat, present = f"{kind}_feat", f"{kind}_present"
        if feat not in batch or present not in batch:
            raise ValueError(f"this model uses text (rice.te): pass {feat} and {present}")
        text = self.encode_text(batch[feat], batch[present], kind)
        return torch.cat([visual, math.sqrt(self.cfg.lambda_text) * text.to(visual.dtype)], -1)

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, D) (or (B, D + Dt) with te)."""
        return self._with_text(self._encode_video(batch)[0], batch, "asr")

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, D) (or (B, D + Dt) with te); shop images are never cropped."""
        return self._with_text(self._encode_image(batch["image"])[0], batch, "title")

    # ---- training ----
    def match_logits(self, image_tokens: torch.Tensor, video_tokens: torch.Tensor,
                     key_mask: torch.Tensor, sim: torch.Tensor, labels: torch.Tensor):
        """PMD: each image against its own clip (column 0) and its hard negatives, mined from the
        detached image x clip similarity `sim` (N, N). -> logits (N, 1 + hard_negatives),
        valid (N, hard_negatives), attention maps (N, C, H, P, K)."""
        neg, valid = mine_hard_negatives(sim, labels, self.cfg.hard_negatives)
        own = torch.arange(len(labels), device=neg.device).unsqueeze(1)
        pooled, attn = self.decoder(image_tokens, video_tokens, key_mask, torch.cat([own, neg], 1))
        direction = F.normalize(self.match_vector, dim=0)
        logits = self.cfg.pmd_scale * F.normalize(pooled, dim=-1) @ direction
        return logits, valid, attn

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """ICL on the global batch, plus PMD and PFR when built; each term already weighted."""
        v, vid_tok, vid_mask = self._encode_video(batch)
        i, img_tok = self._encode_image(batch["image"])
        v = gather(self._with_text(v, batch, "asr"))
        i = gather(self._with_text(i, batch, "title"))
        labels = gather(batch["product"])
        out = {"icl_loss": icl_loss(v, i, labels, self.icl_scale)}
        if self.decoder is None:                       # both weights 0: the terms are constant 0
            zero = out["icl_loss"].new_zeros(())
            return {**out, "pmd_loss": zero, "pfr_loss": zero}

        vid_tok, vid_mask, img_tok = gather(vid_tok), gather(vid_mask), gather(img_tok)
        logits, valid, attn = self.match_logits(img_tok, vid_tok, vid_mask, (i @ v.T).detach(), labels)
        out["pmd_loss"] = self.cfg.pmd_weight * pmd_loss(logits, valid)
        pfr = pfr_loss(attn[:, 0], self.pfr_head, vid_tok, img_tok, vid_mask)    # positive pairs
        out["pfr_loss"] = self.cfg.pfr_weight * pfr
        return out
