"""TimeSformer (Bertasius, Wang and Torresani, "Is Space-Time Attention All You Need for Video
Understanding?", ICML 2021; official code github.com/facebookresearch/TimeSformer), run through
Hugging Face transformers' `TimesformerModel` (spec/baselines.md section 4.4).

Idea kept (the spec's "Must keep"):
- a ViT over frame patches with a CLS token, learned spatial positions and a separate learned
  time embedding (TimesformerEmbeddings);
- "divided space-time" attention in every block (`attention_type="divided_space_time"`): temporal
  attention of each patch over the same location in the other frames, projected by a temporal FC
  and added residually, then spatial attention within each frame (the CLS token copied per frame
  and averaged back), then the MLP. As in the official code the temporal FC of every block after
  the first starts at zero (the library does not do this; `_zero_temporal_fc`);
- the clip vector is the final CLS token (`last_hidden_state[:, 0]`) -> Linear(D).

Image branch (the original has none): the same network with T=1. TimesformerModel accepts a
frame count other than its config's only in its embeddings (the time embedding is resampled
by nearest-neighbour interpolation: T=1 takes time step 0); its layers read
`config.num_frames` on every call, and with another T they split the tokens into the wrong
frames (T=4 on an 8-frame config runs silently wrong, T=1 fails). So a shop image is encoded
with `config.num_frames` set to 1 for that call (`_frames`), which makes every temporal attention
a no-op over a single token: the image is encoded by the spatial path of the same weights.

Padded frames: TimesformerModel has no attention mask over frames. A clip is therefore encoded
as its real frames, in order, resampled to `model.num_frames` by repetition (nearest neighbour
in time, baselines.common.resample_real_frames: 2 real frames of 8 -> f0 f0 f0 f0 f1 f1 f1 f1),
the way video loaders fill short videos. Padded frames are never read, so neither their content
nor the amount of padding changes the embedding (tested, exactly). A clip with fewer real
frames does see repeated frames in its temporal attention: that is the model's own behaviour
on a short video, not padding leaking in.

Loss: the spec's common loss (section 1, "what SGMN itself uses"): SGMN's cross-domain VSE++
triplet (clip anchors vs shop images and back, margin `train.margin`, its hardest negative
switched on by the trainer through `self.hardest_negatives`, summed over anchors as SGMN's)
plus ID cross-entropy on a BNNeck feature (baselines.common.sgmn_style_loss). The ID classifier
is batch-local (baselines.common.batch_id_loss): the number of training products is unknown when
the method is built (from_config gets no dataset), and a `product % K` bucket classifier would
merge unrelated products into one class; so each clip is classified over the products of the
batch, whose class weights are the normalised mean BNNeck features of their shop images (and
each image over the clips' prototypes). Retrieval uses the L2-normalised pre-BN feature, the
one the cosine triplet optimises (as SGMN scores its triplet's embeddings).

What differs at small scale: random init (no weights can be downloaded; the pipeline's CLIP,
passed to from_config, is ignored), 64 px frames, `model.num_frames` (8) frames, patch 16,
width 128, 4 layers, 4 heads, MLP 4x (about 1.2M parameters against TimeSformer-B's 121M, 16x16
patches, 768-d, 12 layers, 8x224^2), no dropout or drop path, no text.

Compute (equal to SGMN's, the issue's "fair compute"): the trainer applies SGMN's steps, batch
and optimiser. Patch 16 at 64 px gives SGMN's encoder's tokenisation (16 patches per frame) and
width 128 its width; the temporal attention and temporal FC add about 40% per token over a ViT
layer. Patch 8 would quadruple the tokens (about 5x the step time), so it is not used. Measured
(fwd+bwd of `loss` at B=32, L=8, S=64, one CPU thread, CPU time): about 0.91 s per step against
0.64 s for SGMN's GRA-only step (1.4x).

Shapes: B clips, L frames in the batch, T = model.num_frames, S image size, P = (S/patch)^2
patches per frame, C the TimeSformer width, D the embedding width.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TimesformerConfig, TimesformerModel

from baselines.common import (
    SGMN_TRIPLET_REDUCTION,
    BNNeck,
    resample_real_frames,
    sgmn_style_loss,
)
from sgmn.models.method import RetrievalMethod


@dataclass(frozen=True)
class TimeSformerSection:
    """The `timesformer` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    patch_size: int
    width: int
    layers: int
    heads: int
    dim: int
    id_weight: float


@contextmanager
def _frames(config: TimesformerConfig, t: int):
    """Run TimesformerModel on T=t frames: its layers read config.num_frames on every call."""
    before = config.num_frames
    config.num_frames = t
    try:
        yield
    finally:
        config.num_frames = before


def _zero_temporal_fc(model: TimesformerModel) -> None:
    """Official init: the temporal FC of every block after the first starts at zero, so those
    blocks start as spatial-only ViT blocks."""
    for layer in model.encoder.layer[1:]:
        nn.init.zeros_(layer.temporal_dense.weight)
        nn.init.zeros_(layer.temporal_dense.bias)


class TimeSformer(RetrievalMethod):
    """TimeSformer (see the module docstring). `score` is the base class's dot product of
    unit-norm embeddings (cosine)."""

    name = "timesformer"
    pretrained_visual = False   # its own backbone, from random init
    training_only = ("neck",)   # the ID loss's BNNeck

    def __init__(self, cfg: TimeSformerSection, num_frames: int, image_size: int, margin: float,
                 triplet_reduction: str):
        super().__init__()
        if image_size % cfg.patch_size:
            raise ValueError(f"timesformer.patch_size={cfg.patch_size} does not divide model.image_size={image_size}")
        if cfg.width % cfg.heads:
            raise ValueError(f"timesformer.heads={cfg.heads} does not divide timesformer.width={cfg.width}")
        self.cfg, self.margin, self.reduction = cfg, margin, triplet_reduction
        self.num_frames = num_frames
        hf = TimesformerConfig(image_size=image_size, patch_size=cfg.patch_size, num_channels=3,
                               num_frames=num_frames, hidden_size=cfg.width,
                               num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                               intermediate_size=4 * cfg.width, attention_type="divided_space_time",
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                               drop_path_rate=0)   # the library types it int
        self.visual = TimesformerModel(hf)          # shared by clips (T frames) and images (T=1)
        _zero_temporal_fc(self.visual)
        self.proj = nn.Linear(cfg.width, cfg.dim)   # CLS -> D
        self.neck = BNNeck(cfg.dim)                 # the ID loss's BNNeck

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> TimeSformer:
        """TimeSformer of a validated run config (section `timesformer`); `clip` and `text_dim`
        are ignored (random init, no text)."""
        m = config["model"]
        return cls(TimeSformerSection(**config["timesformer"]), m["num_frames"], m["image_size"],
                   config["train"]["margin"], SGMN_TRIPLET_REDUCTION)

    # ---- encoders ----
    def _cls(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) -> CLS (B, C) -> (B, D), with T=video.shape[1] in the layers too."""
        with _frames(self.visual.config, video.shape[1]):
            out = self.visual(pixel_values=video).last_hidden_state      # (B, 1 + T*P, C)
        return self.proj(out[:, 0])

    def clip_features(self, batch: dict) -> torch.Tensor:
        """Pre-BN clip features (B, D): the real frames resampled to T, then TimeSformer."""
        video = resample_real_frames(batch["frames"], batch["frame_mask"].bool(), self.num_frames)
        return self._cls(video)                                             # (B, D)

    def image_features(self, batch: dict) -> torch.Tensor:
        """Pre-BN image features (B, D): the shop image as a 1-frame video."""
        return self._cls(batch["image"].unsqueeze(1))                       # (B, 1, 3, S, S) -> (B, D)

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
