"""SEAM Match R-CNN (Godi et al., "MovingFashion: a Benchmark for the Video-to-Shop Challenge",
WACV 2022; official code github.com/HumaticsLAB/SEAM-Match-RCNN, "official" below), on top of
Match R-CNN (Ge et al., DeepFashion2, CVPR 2019).

Idea kept (spec/baselines.md section 4.3, "Must keep"):
- box-level descriptors: a conv trunk, RoIAlign of each box, and Match R-CNN's matching head
  (convs -> average pool -> FC -> BN) give one D-d descriptor per box;
- the shared head: the same head embeds every frame box and the shop image (its box is the whole
  image: the product fills it);
- the squared-difference classifier p(match | v, s) = softmax(FC(D -> 2)((v - s)^2))[1]
  (Match R-CNN's matching network), trained with cross-entropy, class weights 1.0 (non-match)
  and 0.3 (match) as the official aggregation loss;
- weak best-box selection: in each frame, the candidate box scoring highest against the clip's
  shop image is taken as the product (no box label is used by this term);
- temporal aggregation: a 1-D non-local block over the frame sequence in the concatenation form
  f_ij = ReLU(w_f^T [theta(x_i); phi(x_j)]), y_i = 1/N sum_j f_ij g(x_j), z = x + W y with W
  zero-initialised (Wang et al. 2018, Eq. 1 and section 3.2), then attention pooling
  (Linear(D -> 1), softmax over the real frames, weighted sum) -> the video vector;
- loss (a), per-frame weak match: the weakly selected box of each frame is a match for every shop
  image of its product in the batch and a non-match for the others; the frame's other candidate
  boxes are non-matches for its own shop image. Loss (b), aggregation: the video vector against
  every shop image in the batch, positives by product label. (b) is off in the first phase
  (official: off in epoch 0).

Detector and tracker emulation (two-stage method; spec section 5): per frame the candidate boxes
are the emulated detector's box of the intended product (`target_box`, jittered to IoU ~0.73-0.90
by sgmn.data.datasets.detector_boxes, where `target_present`) plus up to `seam.max_distractors`
(default 4) distractor products' annotated boxes (`boxes` entries other than `target_index`,
first ones first, up to `box_counts`); the weak selection chooses among them. At test time
(`encode_clip`) the tracklet is the ground-truth track, as the official evaluation keeps the
tracklet overlapping the ground truth most: the target box in every frame that has one; frames
without it are left out; a clip with no target box at all falls back to its whole frames (the
same fallback applies in training to a clip with no candidate box at all). Detection and
tracking cost is not part of the model's latency (the T4 numbers of Table 3 include it).

What differs at small scale:
- the Mask R-CNN R50-FPN detector is replaced by a small random-init ResNet-like trunk (stem
  conv/2 + BasicBlocks, widths 16/32/C, one stride-8 map of C = `seam.width` channels) and
  torchvision's roi_align at `seam.roi_size` x `roi_size` (default 5, one sample per bin;
  Match R-CNN uses 14 on FPN levels - at 64 px the whole frame is an 8 x 8 map and a box 2-6
  cells wide, so 5 x 5 bins already sample below the cell size; 7 x 7 costs ~1.5x the step);
- the match head is 3 x (conv3x3 C -> C, BN, ReLU), conv1x1 C -> 4C + ReLU, average pool,
  FC(4C -> D) and BN (Match R-CNN: 4 convs 256 on 14 x 14, pool, FC, BN; BN in the convs and
  the 1x1 expansion keep the random-init head trainable within the run's steps and its compute);
- training phases: the first `seam.aggregation_start` (default 0.2) of train.steps is the
  Match R-CNN stage folded into the run (the official "(b) off in epoch 0" is a small share of
  its schedule; here one epoch of LPR-Synth's 4000 clips is 125 steps, more than the default run's 100, so the
  boundary is a fraction of the steps): the head is trained on frame-box <-> shop pairs with the box labels
  (`match_loss`: each frame's target box is a match for its product's shop images in the batch,
  a non-match for the others; the same classifier and class weights), together with (a); after
  it, (a) and (b). The official detector is then frozen; here the trunk and the head keep
  training with (a) and (b) (a short random-init pretraining could not be frozen usefully), so
  the trunk, the head, the non-local block, the attention scorer and the classifier are all
  one network (the official aggregator is a copy of the match head);
- a batch without a `step` (the bench, tests) trains with (a) and (b); `selected_target`
  (logged, not a loss) is the share of frames whose weakly selected box is the target's;
- the optimiser is the suite's (as SGMN, same steps and batch), not SGD lr 0.04; batches hold
  B clips of B products, not 16 shops x 10 frames.

`score` is the classifier's match logit z_1 - z_0 = u . (v - s)^2 + c (u = w_1 - w_0,
c = b_1 - b_0), a monotone function of p(match) = sigmoid(z_1 - z_0), for every (query,
gallery) pair, computed without a (Q, G, D) tensor by expanding the square:
u . (v - s)^2 = (v^2) . u - 2 (v * u) . s + (s^2) . u.

Compute matching (the issue's "fair compute"): C = 64, D = 128 (0.34M parameters), 64-px
frames, L frames, train.steps and train.batch_size as SGMN. The box head runs on every candidate
box (on LPR-Synth ~2.8 per frame: the target in 75% of frames plus ~2 distractors under the cap),
which dominates the step; with RoI 5 x 5 a training step at B=32, L=8 costs ~1.4-1.5x SGMN's
GRA-only step on one CPU thread (RoI 7 x 7: ~2x; torchvision's CPU roi_align backward alone is
a large share).

Shapes: B clips, L frames, K = 1 + max_distractors candidate boxes per frame, n frames encoded,
m boxes described, C trunk width, D descriptor width, N = B x processes after `gather`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import roi_align

from sgmn.models.gather import gather, world
from sgmn.models.method import RetrievalMethod

WHOLE = (0.0, 0.0, 1.0, 1.0)          # the whole frame / image as a normalised box


@dataclass(frozen=True)
class SEAMConfig:
    """The `seam` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    width: int
    dim: int
    roi_size: int
    max_distractors: int
    aggregation_start: float
    match_class_weight: float


# ---- detector emulation ----

def distractor_boxes(batch: dict, k: int):
    """The first k distractor boxes of each frame: `boxes` entries below `box_counts` other than
    `target_index`. -> boxes (B, L, k', 4) and valid (B, L, k') with k' = min(k, MAX_BOXES);
    k' = 0 without `boxes` in the batch."""
    b, l = batch["frame_mask"].shape
    if k == 0 or "boxes" not in batch:
        dev = batch["frame_mask"].device
        return torch.zeros(b, l, 0, 4, device=dev), torch.zeros(b, l, 0, dtype=torch.bool, device=dev)
    boxes, counts = batch["boxes"], batch["box_counts"]
    target = batch.get("target_index", torch.full_like(counts, -1))
    pos = torch.arange(boxes.shape[2], device=boxes.device)
    is_dis = (pos < counts.unsqueeze(-1)) & (pos != target.unsqueeze(-1))            # (B, L, M)
    order = torch.argsort((~is_dis).to(torch.uint8), dim=-1, stable=True)[..., :k]  # distractors first
    picked = boxes.gather(2, order.unsqueeze(-1).expand(*order.shape, 4))
    return picked, is_dis.gather(2, order)


def candidate_boxes(batch: dict, max_distractors: int):
    """Candidate boxes per frame: column 0 the emulated detector's target box (where present),
    then up to max_distractors distractors; padded frames have none. A clip without any
    candidate falls back to its whole frames (column 0). -> boxes (B, L, K, 4), valid (B, L, K)."""
    mask = batch["frame_mask"].bool()
    b, l = mask.shape
    if "target_box" in batch and "target_present" in batch:
        target, present = batch["target_box"].float(), batch["target_present"].bool() & mask
    else:
        target, present = torch.zeros(b, l, 4, device=mask.device), torch.zeros_like(mask)
    dis, dis_valid = distractor_boxes(batch, max_distractors)
    boxes = torch.cat([target.unsqueeze(2), dis.float()], 2)                       # (B, L, K, 4)
    valid = torch.cat([present.unsqueeze(2), dis_valid & mask.unsqueeze(-1)], 2)    # (B, L, K)
    none = ~valid.flatten(1).any(1)                                                 # (B,)
    whole = boxes.new_tensor(WHOLE)
    boxes[:, :, 0] = torch.where(none[:, None, None], whole, boxes[:, :, 0])
    valid[:, :, 0] |= none.unsqueeze(1) & mask
    return boxes.clamp(0, 1), valid


# ---- networks ----

def trunk(width: int) -> nn.Sequential:
    """Stride-8 conv trunk: conv3x3/2 (16) + BN + ReLU, BasicBlock 16 -> 32 /2, BasicBlock
    32 -> width /2, BasicBlock width -> width (torchvision's blocks)."""
    def block(i: int, o: int, s: int) -> BasicBlock:
        down = nn.Sequential(nn.Conv2d(i, o, 1, stride=s, bias=False), nn.BatchNorm2d(o)) if s != 1 or i != o else None
        return BasicBlock(i, o, s, down)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU(inplace=True), block(16, 32, 2), block(32, width, 2), block(width, width, 1))


def match_head(width: int, dim: int) -> nn.Sequential:
    """Match R-CNN's matching head on RoI features (m, C, r, r) -> (m, D): 3 x conv3x3 C -> C,
    conv1x1 C -> 4C, average pool, FC -> D, BN."""
    convs = []
    for _ in range(3):
        convs += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*convs, nn.Conv2d(width, 4 * width, 1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, dim), nn.BatchNorm1d(dim))


class NonLocal1D(nn.Module):
    """SEAM's non-local block over the frame sequence (concatenation form, Wang et al. 2018):
    f_ij = ReLU(w_f^T [theta(x_i); phi(x_j)] + b), y_i = 1/N sum_j f_ij g(x_j) over the N real
    frames j, z = x + W y, W zero-initialised (the block starts as the identity). w_f^T [a; c] =
    w_a . a + w_c . c, so f is computed from two (B, L) projections without a (B, L, L, 2h)
    tensor."""

    def __init__(self, dim: int):
        super().__init__()
        inner = max(dim // 2, 1)
        self.theta, self.phi, self.g = (nn.Linear(dim, inner) for _ in range(3))
        self.f = nn.Linear(2 * inner, 1)
        self.w = nn.Linear(inner, dim)
        nn.init.zeros_(self.w.weight)
        nn.init.zeros_(self.w.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mask (B, L) bool -> (B, L, D)."""
        w_theta, w_phi = self.f.weight.squeeze(0).chunk(2)
        a = self.theta(x) @ w_theta                                          # (B, L)
        c = self.phi(x) @ w_phi                                              # (B, L)
        f = F.relu(a.unsqueeze(2) + c.unsqueeze(1) + self.f.bias)            # (B, L_i, L_j)
        f = f * mask.unsqueeze(1).to(f.dtype)
        n = mask.sum(1).clamp(min=1).to(f.dtype)[:, None, None]
        return x + self.w(f @ self.g(x) / n)


class AttentionPool(nn.Module):
    """Linear(D -> 1) scores, softmax over the real frames, weighted sum: (B, L, D) -> (B, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.score(x).squeeze(-1).float()
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)                   # no NaN for an empty clip
        w = s.softmax(1) * mask.to(s.dtype)
        return (w.unsqueeze(-1).to(x.dtype) * x).sum(1)


# ---- the classifier and its loss ----

def match_logits(classifier: nn.Linear, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Match logit z_1 - z_0 of FC(D -> 2)((v - s)^2) for every pair: (Q, D) x (G, D) -> (Q, G).
    Expanded: u . (v - s)^2 = (v^2) . u - 2 (v * u) . s + (s^2) . u, u = w_1 - w_0 (in fp32,
    autocast off: the terms cancel)."""
    with torch.autocast(v.device.type, enabled=False):                    # the expansion cancels: fp32
        u = (classifier.weight[1] - classifier.weight[0]).float()
        c = (classifier.bias[1] - classifier.bias[0]).float()
        v, s = v.float(), s.float()
        return ((v * v) @ u).unsqueeze(1) - 2 * (v * u) @ s.T + ((s * s) @ u).unsqueeze(0) + c


def match_ce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, match_weight: float) -> torch.Tensor:
    """2-class cross-entropy of match logits (z_1 - z_0) against bool targets over the pairs
    `keep`, class weights 1.0 (non-match) and match_weight (match), the weighted mean of
    F.cross_entropy(weight=...): sum w_y CE / sum w_y. -log p(y) = softplus(-+(z_1 - z_0))."""
    ce = F.softplus(torch.where(target, -logits, logits))
    w = torch.where(target, match_weight, 1.0) * keep.to(ce.dtype)
    return (w * ce).sum() / w.sum().clamp(min=1e-6)


def own_columns(b: int, device) -> torch.Tensor:
    """(B,) column of each of this process's clips' own shop image among the gathered ones
    (gather concatenates the processes' slices in rank order)."""
    return world()[0] * b + torch.arange(b, device=device)


# ---- the method ----

class SEAM(RetrievalMethod):
    """SEAM Match R-CNN (see the module docstring); `score` is the classifier's match logit."""

    name = "seam"
    pretrained_visual = False          # trained from scratch: train.clip_lr_scale / freeze_stem do not apply

    def __init__(self, cfg: SEAMConfig, steps: int):
        super().__init__()
        self.cfg = cfg
        self.aggregation_step = round(cfg.aggregation_start * steps)
        self.visual = trunk(cfg.width)                   # the detector's backbone, shared
        self.head = match_head(cfg.width, cfg.dim)       # shared by frame boxes and shop images
        self.non_local = NonLocal1D(cfg.dim)
        self.pool = AttentionPool(cfg.dim)
        self.classifier = nn.Linear(cfg.dim, 2)          # FC(D -> 2) on (v - s)^2

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> SEAM:
        """SEAM of a validated run config (section `seam`; train.steps sets the phase boundary).
        `clip` and `text_dim` are ignored: SEAM builds its own random-init trunk, reads no text."""
        return cls(SEAMConfig(**config["seam"]), config["train"]["steps"])

    # ---- box descriptors ----
    def describe(self, images: torch.Tensor, boxes: torch.Tensor, image_of_box: torch.Tensor) -> torch.Tensor:
        """images (n, 3, S, S); boxes (m, 4) normalised x1 y1 x2 y2 on image image_of_box (m,)
        -> (m, D) descriptors: trunk -> roi_align (roi_size^2) -> match head."""
        fmap = self.visual(images)                                           # (n, C, S/8, S/8)
        size = images.new_tensor([images.shape[-1], images.shape[-2]] * 2)
        rois = torch.cat([image_of_box.to(fmap.dtype).unsqueeze(1), (boxes * size).to(fmap.dtype)], 1)
        r = self.cfg.roi_size
        feats = roi_align(fmap, rois, output_size=(r, r), spatial_scale=fmap.shape[-1] / images.shape[-1],
                          sampling_ratio=1, aligned=True)                    # (m, C, r, r)
        return self.head(feats)

    def _describe_clips(self, batch: dict, boxes: torch.Tensor, valid: torch.Tensor,
                        shops: torch.Tensor | None = None):
        """Descriptors (B, L, K, D) of the valid candidates (zeros elsewhere), encoding only the
        frames that hold one; with `shops` (N, 3, S, S), in the same pass (one set of BN batch
        statistics), also the whole-image descriptors (N, D)."""
        b, l, k = valid.shape
        used = valid.any(-1).flatten()                                       # (B*L,) frames to encode
        frame_idx = used.nonzero().squeeze(1)
        x = batch["frames"].flatten(0, 1).index_select(0, frame_idx)         # (n, 3, S, S)
        box_idx = valid.flatten().nonzero().squeeze(1)                       # (m,) into B*L*K
        rank = used.long().cumsum(0) - 1                                     # frame slot -> row of x
        image_of_box = rank[box_idx // k]
        box = boxes.flatten(0, 2).index_select(0, box_idx)
        if shops is not None:
            n = len(x)
            x = torch.cat([x, shops.to(x.dtype)])
            image_of_box = torch.cat([image_of_box, n + torch.arange(len(shops), device=x.device)])
            box = torch.cat([box, box.new_tensor(WHOLE).expand(len(shops), 4)])
        desc = self.describe(x, box, image_of_box)
        m = len(box_idx)
        per_box = desc.new_zeros(b * l * k, desc.shape[-1]).index_copy(0, box_idx, desc[:m])
        return per_box.view(b, l, k, -1), (desc[m:] if shops is not None else None)

    def aggregate(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame box descriptors (B, L, D) of the frames `mask` -> video vector (B, D)."""
        return self.pool(self.non_local(frames, mask), mask)

    # ---- encoders ----
    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, D): the ground-truth track (target box where present; whole frames
        for a clip without any), described and aggregated."""
        boxes, valid = candidate_boxes(batch, 0)
        desc, _ = self._describe_clips(batch, boxes, valid)
        return self.aggregate(desc[:, :, 0], valid[:, :, 0])

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, D): the whole-image box's descriptor."""
        image = batch["image"]
        whole = image.new_tensor(WHOLE).expand(len(image), 4)
        return self.describe(image, whole, torch.arange(len(image), device=image.device))

    def score(self, clip_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """(Q, D) x (G, D) -> (Q, G) match logits z_1 - z_0 (monotone in p(match))."""
        return match_logits(self.classifier, clip_emb, image_emb)

    # ---- training ----
    def _phase_weights(self, batch: dict) -> tuple[float, float]:
        """(weight of the Match R-CNN pretraining term, weight of the aggregation term (b))."""
        step = batch.get("step")
        aggregating = step is None or int(step) >= self.aggregation_step
        return (0.0, 1.0) if aggregating else (1.0, 0.0)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """(a) `weak_loss` always; `match_loss` (box-labelled pretraining) in the first phase and
        (b) `aggregation_loss` after it. Every term is computed in every step (an off term has
        weight 0), so all parameters take part in each backward (DistributedDataParallel)."""
        pre_w, agg_w = self._phase_weights(batch)
        w1 = self.cfg.match_class_weight
        boxes, valid = candidate_boxes(batch, self.cfg.max_distractors)
        desc, shop = self._describe_clips(batch, boxes, valid, batch["image"])   # (B, L, K, D), (B, D)
        b, l, k, _ = desc.shape
        labels = batch["product"]
        shops, shop_labels = gather(shop), gather(labels)
        same = labels.unsqueeze(1) == shop_labels.unsqueeze(0)                      # (B, N)

        # every candidate against every shop image: (B*L*K, N) logits
        logits = match_logits(self.classifier, desc.flatten(0, 2), shops).view(b, l, k, -1)
        own_col = own_columns(len(labels), labels.device)                          # (B,)
        own = logits.gather(3, own_col.view(b, 1, 1, 1).expand(b, l, k, 1)).squeeze(-1)  # (B, L, K)
        best = own.detach().masked_fill(~valid, float("-inf")).argmax(-1)           # (B, L) weak selection
        has = valid.any(-1)                                                         # (B, L)
        chosen = F.one_hot(best, k).bool() & has.unsqueeze(-1)                      # (B, L, K)

        # (a) the chosen box vs every shop (positives by product) + other candidates vs own shop
        same_f = same[:, None, None, :].expand(b, l, k, -1)
        is_own = torch.arange(len(shop_labels), device=labels.device) == own_col.unsqueeze(1)  # (B, N)
        is_own = is_own[:, None, None, :].expand(b, l, k, -1)
        keep_a = (chosen.unsqueeze(-1) | ((valid & ~chosen).unsqueeze(-1) & is_own))
        weak = match_ce(logits, same_f & chosen.unsqueeze(-1), keep_a, w1)

        # Match R-CNN stage: the (jittered) target box, where present, vs every shop
        target = valid[:, :, 0] & batch.get("target_present", torch.zeros_like(has)).bool()
        keep_p = target[:, :, None, None].expand(b, l, 1, shops.shape[0])
        pre = match_ce(logits[:, :, :1], same_f[:, :, :1], keep_p, w1)

        # (b) aggregation of the chosen boxes vs every shop image in the batch
        picked = (desc * chosen.unsqueeze(-1).to(desc.dtype)).sum(2)               # (B, L, D)
        video = gather(self.aggregate(picked, has))
        vid_labels = gather(labels)
        agg = match_ce(match_logits(self.classifier, video, shops),
                       vid_labels.unsqueeze(1) == shop_labels.unsqueeze(0),
                       torch.ones(len(video), len(shops), dtype=torch.bool, device=video.device), w1)
        return {"weak_loss": weak, "match_loss": pre_w * pre, "aggregation_loss": agg_w * agg,
                "selected_target": (chosen[:, :, 0].sum() / has.sum().clamp(min=1)).detach()}

