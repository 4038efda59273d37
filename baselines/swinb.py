"""Video Swin Transformer (Liu, Ning, Cao, Wei, Zhang, Lin and Hu, "Video Swin Transformer",
CVPR 2022; Swin-B in the SGMN comparison), run through torchvision's
`torchvision.models.video.swin_transformer.SwinTransformer3d` (spec/baselines.md section 4.6).
The table row is `swinb`.

Idea kept (the spec's "Must keep"):
- tubelet patch embedding of 2x4x4 (PatchEmbed3d);
- hierarchical stages with spatial-only patch merging (channels C, 2C, 4C, 8C);
- self-attention inside non-overlapping 3-D windows, every second block on windows shifted by
  half a window along T, H and W, with a 3-D relative position bias (ShiftedWindowAttention3d);
- the clip vector is the global average pool of the last stage (the library's avgpool, with
  `head = nn.Identity()`), then Linear(8C -> D).

Windows: Swin-B uses 8x7x7 windows on 16x56x56 tokens (32 frames at 224 px). Here 8 frames at
64 px give 4x16x16 tokens after the tubelet embedding, and the default window 2x4x4 keeps a
window at half the clip's temporal extent, so windows shift along T as well (a 4-frame-token
window would cover the whole clip, and the library then does not shift along T).

Image branch: shared, the shop image repeated as 2 frames, i.e. exactly one tubelet. (T=1 also
runs in torchvision, which pads T to the tubelet with a zero frame; repeating the image avoids
feeding the tubelet embedding a black frame that no clip contains.)

Padded frames: SwinTransformer3d has no attention mask over frames. A clip is encoded as its
real frames, in order, resampled to `model.num_frames` by repetition (nearest neighbour in time,
baselines.common.resample_real_frames), the way video loaders fill short videos: padded frames
are never read, so neither their content nor the amount of padding changes the embedding
(tested, exactly).

Loss: the spec's common loss (section 1, "what SGMN itself uses"; baselines.common.
sgmn_style_loss): SGMN's cross-domain VSE++ triplet (margin `train.margin`, its hardest negative
switched on by the trainer through `self.hardest_negatives`, summed over anchors as SGMN's)
plus an ID cross-entropy on a BNNeck feature. The ID classifier is batch-local
(baselines.common.batch_id_loss): from_config gets no dataset, so the number of training
products is unknown, and `product % K` buckets would merge unrelated products; each clip is
classified over the batch's products, whose class weights are the normalised mean BNNeck
features of their shop images (and each image over the clips' prototypes). Retrieval uses the
L2-normalised pre-BN feature, which the cosine triplet optimises (as SGMN scores its
triplet's embeddings).

What differs at small scale: random init (Swin-B is inflated from ImageNet-21k Swin; no weights
can be downloaded, and the pipeline's CLIP passed to from_config is ignored), 8 frames at 64 px,
C=20 (Swin-B 128), depths 2/2/2/2 (2/2/18/2), heads 1/2/4/8 (4/8/16/32; head width 20 against
32), window 2x4x4 (8x7x7), no stochastic depth (Swin-B 0.3; 100 steps are too few for it), no
text. About 0.9M parameters against 88M.

Compute (equal to SGMN's): the trainer applies SGMN's steps, batch and optimiser; C=20 (stages
20 / 40 / 80 / 160 channels, within SGMN's 64-192 widths at the end) keeps one training step
within 1.5x SGMN's GRA-only step on one CPU thread (C=24 takes about 1.6x, C=32 about 2x, C=48
about 3.5x). Measured (fwd+bwd of `loss` at B=32, L=8, S=64, one CPU thread, CPU time): about
0.90 s per step against 0.64 s for SGMN's GRA-only step (1.4x).

Shapes: B clips, L frames in the batch, T = model.num_frames, S image size, C embed_dim,
D the embedding width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video.swin_transformer import SwinTransformer3d

from baselines.common import (
    SGMN_TRIPLET_REDUCTION,
    BNNeck,
    resample_real_frames,
    sgmn_style_loss,
)
from sgmn.models.method import RetrievalMethod

TUBELET = (2, 4, 4)   # the tubelet patch embedding (T, H, W) of Video Swin


@dataclass(frozen=True)
class SwinBConfig:
    """The `swinb` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    embed_dim: int
    depths: tuple[int, ...]
    heads: int
    window_size: tuple[int, int, int]
    dim: int
    id_weight: float

    @classmethod
    def from_dict(cls, d: dict) -> SwinBConfig:
        return cls(**{**d, "depths": tuple(d["depths"]), "window_size": tuple(d["window_size"])})


class VideoSwin(RetrievalMethod):
    """Video Swin (see the module docstring). `score` is the base class's dot product of
    unit-norm embeddings (cosine)."""

    name = "swinb"
    pretrained_visual = False   # its own backbone, from random init
    training_only = ("neck",)   # the ID loss's BNNeck

    def __init__(self, cfg: SwinBConfig, num_frames: int, margin: float, triplet_reduction: str):
        super().__init__()
        self.cfg, self.margin, self.reduction = cfg, margin, triplet_reduction
        self.num_frames = num_frames
        stages = len(cfg.depths)
        heads = [cfg.heads * 2 ** k for k in range(stages)]          # doubling with the width
        if cfg.embed_dim % cfg.heads:
            raise ValueError(f"swinb.heads={cfg.heads} does not divide swinb.embed_dim={cfg.embed_dim}")
        self.visual = SwinTransformer3d(patch_size=list(TUBELET), embed_dim=cfg.embed_dim,
                                        depths=list(cfg.depths), num_heads=heads,
                                        window_size=list(cfg.window_size), stochastic_depth_prob=0.0)
        self.visual.head = nn.Identity()                              # -> pooled last stage (B, 8C)
        width = cfg.embed_dim * 2 ** (stages - 1)
        self.proj = nn.Linear(width, cfg.dim)
        self.neck = BNNeck(cfg.dim)

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> VideoSwin:
        """Video Swin of a validated run config (section `swinb`); `clip` and `text_dim` are
        ignored (random init, no text)."""
        return cls(SwinBConfig.from_dict(config["swinb"]), config["model"]["num_frames"],
                   config["train"]["margin"], SGMN_TRIPLET_REDUCTION)

    # ---- encoders ----
    def _features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> the library's [B, 3, T, S, S] -> pooled 8C -> (B, D)."""
        return self.proj(self.visual(video.transpose(1, 2)))

    def clip_features(self, batch: dict) -> torch.Tensor:
        """Pre-BN clip features (B, D): the real frames resampled to T, then Swin."""
        video = resample_real_frames(batch["frames"], batch["frame_mask"].bool(), self.num_frames)
        return self._features(video)

    def image_features(self, batch: dict) -> torch.Tensor:
        """Pre-BN image features (B, D): the shop image repeated as one 2-frame tubelet."""
        image = batch["image"].unsqueeze(1)                                   # (B, 1, 3, S, S)
        return self._features(image.expand(-1, TUBELET[0], -1, -1, -1))

    def encode_clip(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.clip_features(batch), dim=-1)

    def encode_image(self, batch: dict) -> torch.Tensor:
        return F.normalize(self.image_features(batch), dim=-1)

    # ---- training ----
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """triplet_loss (SGMN's VSE++ triplet) and id_loss (batch-local BNNeck ID CE)."""
        return sgmn_style_loss(self.clip_features(batch), self.image_features(batch), batch["product"],
                               self.neck, self.margin, self.hardest_negatives, self.reduction,
                               self.cfg.id_weight)
