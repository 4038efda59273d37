"""The interface every retrieval method provides (SGMN and each baseline in `baselines/`).

Training, evaluation, the bench and the diagnostics see a method only through this class, so a
new method needs no change outside its own module and one registry line (sgmn.models.registry).

Batches are dicts of tensors (sgmn.data.datasets builds them):
- a clip batch: `frames` (B, L, 3, S, S), `frame_mask` (B, L) bool; with text, `asr_feat`
  (B, Dt) and `asr_present` (B,); the intended product's box per frame as an emulated detector
  finds it, `target_box` (B, L, 4) normalised [x1, y1, x2, y2] with `target_present` (B, L)
  bool (sgmn.data.datasets.detector_boxes), and every annotated box, `boxes`
  (B, L, MAX_BOXES, 4) with `box_counts` (B, L) and the intended product's position among them,
  `target_index` (B, L) (-1 where it is not in view; the others are distractors);
- an image batch: `image` (B, 3, S, S); with text, `title_feat` and `title_present`;
- a training batch: both, plus `product` (B,) labels (several clips of one product share one)
  and `step`, the optimiser step (for methods that train in phases).
"""
from __future__ import annotations

import torch
from torch import nn


class RetrievalMethod(nn.Module):
    """Base class: encoders, a pairwise score and the named training losses.

    Subclasses set `name`, override `encode_clip`, `encode_image` and `loss`, and build
    themselves from the validated run config in `from_config`. `uses_text` says whether the
    encoders read the ASR / title features (the pipeline then passes them in the batches).
    """

    name = "method"
    uses_text = False
    # submodules that only shape training (left out of the inference parameter count)
    training_only: tuple[str, ...] = ()
    # whether `visual` is the pipeline's pretrained CLIP tower (SGMN, RICE): the trainer's
    # train.clip_lr_scale and train.freeze_stem apply to it; False for backbones from scratch
    pretrained_visual = True

    def __init__(self):
        super().__init__()
        # the trainer switches VSE++'s hardest negative on after train.triplet_warmup_steps;
        # methods without a hardest-negative triplet ignore it
        self.hardest_negatives = True

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> "RetrievalMethod":
        """The method of a resolved run config, its visual tower from `clip` (open_clip CLIP)."""
        raise NotImplementedError

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, D) query embeddings."""
        raise NotImplementedError

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, D) gallery embeddings."""
        raise NotImplementedError

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """A training batch -> named terms; the trainer sums the keys ending in `_loss`."""
        raise NotImplementedError

    def score(self, clip_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """(Q, D) x (G, D) -> (Q, G) scores. Cosine by default: both encoders return unit-norm
        embeddings (or concatenations that make the dot product the method's score). Methods
        that learn a pairwise score override this; evaluation calls it per gallery."""
        return clip_emb @ image_emb.T

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        # DistributedDataParallel calls forward: training goes through it
        return self.loss(batch)
