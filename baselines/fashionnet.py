"""FashionNet (Liu et al., "DeepFashion: Powering Robust Clothes Recognition and Retrieval with
Rich Annotations", CVPR 2016). There is no official code; spec/baselines.md section 4.1.

Idea kept (the spec's "Must keep"):
- one image network, shared by video frames and shop images, whose last conv stage splits into
  three branches: a global branch (conv -> fc6_global on the flattened map); a pose branch
  regressing K landmark positions and visibilities (conv -> fc -> fc(3K)); a local branch
  whose conv map is "landmark pooled" at the *predicted* landmarks: the max over the 3x3 cell
  window around each point (a stride-1 3x3 max-pool of the map, read at the point by bilinear
  grid_sample, so the pooling is differentiable and vectorised), times the point's predicted
  visibility probability, concatenated over the K points -> fc6_local. fc7_fusion maps
  [fc6_global, fc6_local] to the D-dim embedding (L2-normalised);
- no temporal model: a clip is the L2-normalised mean of its real frames' embeddings;
- the multi-task loss: a cross-domain triplet (clip anchor, shop-image positive / negatives,
  sgmn.models.losses.vse_triplet, hardest in-batch negative as the trainer switches it),
  landmark L2 and visibility cross-entropy; the landmark terms are weighted first, then the
  recognition / retrieval terms ("landmark_first" of the steps: landmark terms x1 and the
  others x `landmark_weight`; afterwards the other way round).

What differs at small scale:
- VGG-16 -> a VGG-style trunk of 3x3 conv-BN-ReLU stages (widths width/4, width/2, width;
  stride 8, an 8x8 map at 64 px) and three one-conv branches: the local one at stride 8 (the
  landmark pooling needs the resolution), the global (width) and pose (width/2) ones after a
  2x2 max-pool (stride 16), which keeps one training step within 1.5x SGMN's; fc6 widths
  2 x width; random init (weights cannot be downloaded), BN added so it trains from scratch in
  the run's steps. The pipeline's CLIP (`clip` in from_config) is not used.
- Landmarks: there are no clothing landmarks; the K = 4 corners (+ 4 mid-edges with K = 8) of
  the intended product's box stand in for them, as the spec suggests. Frames: the box is the
  emulated detector's `target_box` (sgmn.data.datasets.detector_boxes, clamped to the frame);
  a landmark is visible where `target_present` and it lies inside the frame (a box corner or
  edge point the clamp moved onto the frame border is "truncated": not visible). A frame
  without the product has every visibility target 0 and no position loss. Shop images: the
  product fills the image, so the whole-image box with all K landmarks visible. Positions are
  regressed in [0, 1] (sigmoid); the L2 term averages the squared error over visible points
  (the original weights it by visibility); visibility is one logit per point with a binary
  cross-entropy (= the original's 2-way softmax).
- Category CE and attribute BCE: the batches carry no category or attribute labels. Their place
  is taken by a batch-local ID term (`id_weight`): each clip is classified over the products of
  the batch, a product's class vector being the normalised mean of its shop images there
  (baselines.common.batch_id_loss, cosine logits x 16, as the other baselines' batch-local ID
  terms). It supervises the fused feature with product identity, the finest "category" the
  data has, without a global classifier (the number of training products is not known to
  from_config); clips of one product share a class, never a negative. id_weight 0 removes it.
- The triplet hinge is averaged over anchors (reduction "mean", not SGMN's VSE++ sum), so the
  task weights do not scale with the batch.

Compute matched to SGMN (tiny CLIP ViT, width 128, ~0.9M params): width 128 (~1.6M params),
64-px frames and images, the trainer's steps, batch and optimiser (100 steps x 32 clips x 8
frames in the default run). Frames are cropped by nothing (FashionNet has no detector); padded
frames are never encoded (index_select of the real frames, as SGMN.encode_frames).

Shapes: B clips, L frames, n real frames, S pixels, C = width, K landmarks, D = embed_dim,
N = B x processes after `gather`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import batch_id_loss, conv_bn_relu, vgg_trunk
from sgmn.models.gather import gather
from sgmn.models.losses import vse_triplet
from sgmn.models.method import RetrievalMethod

# landmark template: (a_x, a_y) -> (x1 + a_x (x2 - x1), y1 + a_y (y2 - y1)); corners, then mid-edges
TEMPLATE = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5))
EDGE = 1e-3          # a landmark within EDGE of the frame border was clamped there: truncated


@dataclass(frozen=True)
class FashionNetConfig:
    """The `fashionnet` section of a validated run config (sgmn/schemas/config.schema.yaml)."""
    width: int
    embed_dim: int
    num_landmarks: int
    landmark_first: float
    landmark_weight: float
    id_weight: float


# ---- landmarks ----

def landmark_targets(box: torch.Tensor, present: torch.Tensor, k: int):
    """Landmarks of normalised boxes (n, 4) [x1, y1, x2, y2]: points (n, K, 2) in [0, 1] and
    visibility (n, K) bool = present (n,) and strictly inside the frame (EDGE from its border)."""
    t = box.new_tensor(TEMPLATE[:k])                                        # (K, 2)
    lo, hi = box[:, None, :2], box[:, None, 2:]
    points = lo + t * (hi - lo)                                             # (n, K, 2)
    inside = ((points > EDGE) & (points < 1 - EDGE)).all(-1)
    return points, present[:, None] & inside


def landmark_pool(fmap: torch.Tensor, points: torch.Tensor, vis_prob: torch.Tensor) -> torch.Tensor:
    """FashionNet's landmark pooling: the max over the 3x3 cell window around each predicted
    point, weighted by its visibility probability. fmap (n, C, h, w); points (n, K, 2) (x, y) in
    [0, 1]; vis_prob (n, K) -> (n, K * C). The window max is a stride-1 3x3 max-pool, read at
    the (sub-cell) point by bilinear interpolation: differentiable in the map and the points."""
    window = F.max_pool2d(fmap, 3, stride=1, padding=1)                    # (n, C, h, w)
    grid = (points * 2 - 1).unsqueeze(1)                                    # (n, 1, K, 2) in [-1, 1]
    pooled = F.grid_sample(window, grid.to(window.dtype), mode="bilinear", padding_mode="border",
                           align_corners=False).squeeze(2)                  # (n, C, K)
    pooled = pooled * vis_prob.unsqueeze(1).to(pooled.dtype)
    return pooled.transpose(1, 2).flatten(1)                                # (n, K * C)


def landmark_losses(points: torch.Tensor, vis_logits: torch.Tensor, target: torch.Tensor,
                    visible: torch.Tensor):
    """Landmark L2 (squared error of (x, y), averaged over the visible points) and visibility
    binary cross-entropy (averaged over all points). points/target (n, K, 2), vis_logits (n, K),
    visible (n, K) bool."""
    err = (points.float() - target.float()).pow(2).sum(-1)                 # (n, K)
    vis = visible.float()
    l2 = (err * vis).sum() / vis.sum().clamp(min=1)
    ce = F.binary_cross_entropy_with_logits(vis_logits.float(), vis)
    return l2, ce


# ---- the image network ----

class FashionNetEncoder(nn.Module):
    """Trunk -> {global, pose, local} branches -> fc7_fusion. (n, 3, S, S) -> embedding (n, D)
    (not normalised), landmark points (n, K, 2) in [0, 1], visibility logits (n, K)."""

    def __init__(self, width: int, embed_dim: int, k: int):
        super().__init__()
        if width % 4:
            raise ValueError(f"fashionnet.width={width} must be a multiple of 4 (trunk widths width/4, width/2, width)")
        c, self.k = width, k
        self.trunk = vgg_trunk((c // 4, c // 2, c))                         # (n, C, S/8, S/8)
        self.pool = nn.MaxPool2d(2)                # the global and pose branches run at S/16
        # global branch: conv -> fc6_global on the flattened map
        self.global_branch = nn.Sequential(conv_bn_relu(c, c), nn.AdaptiveMaxPool2d(4), nn.Flatten(),
                                           nn.Linear(16 * c, 2 * c), nn.ReLU(inplace=True))
        # pose branch: conv -> fc -> fc (2K positions, K visibility logits)
        self.pose = nn.Sequential(conv_bn_relu(c, c // 2), nn.AdaptiveMaxPool2d(4), nn.Flatten(),
                                  nn.Linear(8 * c, 2 * c), nn.ReLU(inplace=True), nn.Linear(2 * c, 3 * k))
        # local branch: conv at S/8 -> landmark pooling -> fc6_local
        self.local_conv = conv_bn_relu(c, c)
        self.local_fc = nn.Sequential(nn.Linear(k * c, 2 * c), nn.ReLU(inplace=True))
        self.fusion = nn.Linear(4 * c, embed_dim)                           # fc7_fusion

    def forward(self, x: torch.Tensor):
        # NHWC: CPU convolutions and max-pools run about twice as fast (same values)
        f = self.trunk(x.contiguous(memory_format=torch.channels_last))    # (n, C, h, w)
        coarse = self.pool(f)                                               # (n, C, h/2, w/2)
        pose = self.pose(coarse)                                            # (n, 3K)
        points = torch.sigmoid(pose[:, :2 * self.k]).view(-1, self.k, 2)    # (n, K, 2)
        vis_logits = pose[:, 2 * self.k:]                                   # (n, K)
        g = self.global_branch(coarse)                                      # (n, 2C)
        loc = self.local_fc(landmark_pool(self.local_conv(f), points, torch.sigmoid(vis_logits)))
        return self.fusion(torch.cat([g, loc], -1)), points, vis_logits


# ---- the method ----

class FashionNet(RetrievalMethod):
    """FashionNet (see the module docstring): one shared image network (`visual`), clips as the
    mean of their frames' embeddings, cosine score (the base class's dot product of unit
    vectors)."""

    name = "fashionnet"
    pretrained_visual = False   # its own backbone, from random init

    def __init__(self, cfg: FashionNetConfig, steps: int, margin: float):
        super().__init__()
        self.cfg, self.steps, self.margin = cfg, steps, margin
        self.visual = FashionNetEncoder(cfg.width, cfg.embed_dim, cfg.num_landmarks)

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> FashionNet:
        """FashionNet of a validated run config (section `fashionnet`); `clip` and `text_dim` are
        ignored (own backbone from random init, vision only)."""
        return cls(FashionNetConfig(**config["fashionnet"]), config["train"]["steps"], config["train"]["margin"])

    # ---- encoders ----
    def _encode_frames(self, batch: dict):
        """The real frames only -> per-frame outputs (n, ...) and their flat indices (n,) in B*L."""
        idx = batch["frame_mask"].bool().flatten().nonzero().squeeze(1)
        x = batch["frames"].flatten(0, 1).index_select(0, idx)             # (n, 3, S, S)
        return idx, x

    def _clip_mean(self, emb: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit per-frame embeddings (n, D) at flat indices idx -> the clips' normalised mean (B, D)."""
        b, l = mask.shape
        frames = emb.new_zeros(b * l, emb.shape[-1]).index_copy(0, idx, F.normalize(emb, dim=-1))
        pooled = frames.view(b, l, -1).sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(emb.dtype)
        return F.normalize(pooled, dim=-1)

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, D): the normalised mean of its real frames' normalised embeddings."""
        idx, x = self._encode_frames(batch)
        return self._clip_mean(self.visual(x)[0], idx, batch["frame_mask"].bool())

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, D), unit norm."""
        return F.normalize(self.visual(batch["image"])[0], dim=-1)

    # ---- training ----
    def task_weights(self, step: int | None) -> tuple[float, float]:
        """(landmark weight, retrieval weight) at optimiser step `step`: landmarks first
        (1, landmark_weight) for the first landmark_first of train.steps, then
        (landmark_weight, 1). Without a step (outside the trainer): the second stage."""
        first = step is not None and step < self.cfg.landmark_first * self.steps
        w = self.cfg.landmark_weight
        return (1.0, w) if first else (w, 1.0)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-domain triplet + batch-local ID (retrieval terms, over the global batch) and
        landmark L2 + visibility CE (this process's frames and images), weighted by stage."""
        if "target_box" not in batch or "target_present" not in batch:
            raise ValueError("fashionnet supervises landmarks from the intended product's box: the "
                             "training batch needs target_box and target_present")
        mask = batch["frame_mask"].bool()
        idx, frames = self._encode_frames(batch)
        n, b = len(idx), batch["image"].shape[0]
        emb, points, vis_logits = self.visual(torch.cat([frames, batch["image"]]))  # one pass, shared BN
        clip, image = self._clip_mean(emb[:n], idx, mask), F.normalize(emb[n:], dim=-1)

        # landmark targets: frames from the detector's box, shop images from the whole image
        fbox = batch["target_box"].flatten(0, 1).index_select(0, idx).to(points.dtype)
        fpresent = batch["target_present"].bool().flatten().index_select(0, idx)
        f_pts, f_vis = landmark_targets(fbox, fpresent, self.cfg.num_landmarks)
        whole = points.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(b, 4)
        i_pts, _ = landmark_targets(whole, torch.ones(b, dtype=torch.bool, device=whole.device),
                                    self.cfg.num_landmarks)
        i_vis = torch.ones(b, self.cfg.num_landmarks, dtype=torch.bool, device=whole.device)
        l2, vis_ce = landmark_losses(points, vis_logits, torch.cat([f_pts, i_pts]), torch.cat([f_vis, i_vis]))

        v, i, labels = gather(clip), gather(image), gather(batch["product"])
        sim = v @ i.T                                                       # (N, N) clip x image
        triplet = vse_triplet(sim, labels, self.margin, self.hardest_negatives, reduction="mean")
        ident = batch_id_loss(v.float(), i.float(), labels)               # clips over the products

        w_lm, w_ret = self.task_weights(batch.get("step"))
        return {"triplet_loss": w_ret * triplet, "id_loss": w_ret * self.cfg.id_weight * ident,
                "landmark_loss": w_lm * l2, "visibility_loss": w_lm * vis_ce}
