"""Global Representation Alignment (GRA), SGMN Section 3.1, without the text branch and TMC.

One visual encoder (CLIP's image tower) is shared by frames and shop images (Eqs. 1-2). A clip
is the mean of its L2-normalised per-frame CLS embeddings over the real (unmasked) frames,
re-normalised; an image is its normalised CLS embedding. The score is their cosine (Eq. 23
without the text term). Trained with the VSE++ triplet loss (paper ref [7]) this is row A of
Table 7.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgmn.train.distributed import gather
from sgmn.train.losses import vse_triplet


class GRA(nn.Module):
    def __init__(self, visual: nn.Module, margin: float = 0.2):
        super().__init__()
        self.visual = visual  # open_clip VisionTransformer: (n, 3, H, W) -> (n, D) projected CLS
        self.margin = margin
        self.hardest_negatives = True  # the trainer may warm up with all negatives first

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)                    # (B, D)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame normalised embeddings (B, L, D); masked frames are not encoded (zeros)."""
        b, l = mask.shape
        flat = frames.flatten(0, 1)[mask.flatten()]                        # (n_real, 3, H, W)
        emb = F.normalize(self.visual(flat), dim=-1)                       # (n_real, D)
        out = emb.new_zeros(b * l, emb.shape[-1])
        out[mask.flatten()] = emb
        return out.view(b, l, -1)                                          # (B, L, D)

    def pool(self, frame_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1).to(frame_emb.dtype)                         # (B, L, 1)
        mean = (frame_emb * w).sum(1) / w.sum(1).clamp(min=1)              # (B, D)
        return F.normalize(mean, dim=-1)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode_frames(frames, mask), mask)           # (B, D)

    @staticmethod
    def score(video: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return video @ images.T                                            # (Bv, Bi)

    def forward(self, batch: dict) -> dict:
        # under torchrun each process encodes its slice; the loss is over the gathered global batch
        v = gather(self.encode_video(batch["frames"], batch["frame_mask"]))  # (B, D)
        i = gather(self.encode_image(batch["image"]))                        # (B, D)
        loss = vse_triplet(v @ i.T, gather(batch["product"]), self.margin, self.hardest_negatives)
        return {"similarity_loss": loss}
