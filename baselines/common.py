"""Small helpers shared by several baselines (VGG-style conv stages, box crops).

Each helper is generic and stateless beyond its modules; a baseline's own idea stays in its
module. Append new helpers; do not change existing ones (several baselines import them).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU: the VGG unit with BN (trains from scratch)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def vgg_trunk(widths: tuple[int, ...]) -> nn.Sequential:
    """A VGG-style trunk of len(widths) stages, one 3x3 conv-BN-ReLU each: the first has
    stride 2, every later one starts with a 2x2 max-pool, so the output stride is
    2 ** len(widths) (64 px, 3 stages -> 8x8). (n, 3, S, S) -> (n, widths[-1], S/2^k, S/2^k)."""
    layers, cin = [], 3
    for i, cout in enumerate(widths):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers.append(conv_bn_relu(cin, cout, stride=2 if i == 0 else 1))
        cin = cout
    return nn.Sequential(*layers)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """RoIAlign crop of each image x (n, C, H, W) to its normalised box (n, 4) [x1, y1, x2, y2]
    (clamped to [0, 1]), resampled to (n, C, size, size) (torchvision.ops.roi_align, aligned)."""
    h, w = x.shape[-2:]
    px = boxes.clamp(0, 1) * boxes.new_tensor([w, h, w, h])
    rois = torch.cat([torch.arange(len(x), device=x.device, dtype=px.dtype).unsqueeze(1), px], 1)
    return roi_align(x, rois.to(x.dtype), output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


# ---- video models without a frame mask; the re-ID losses (TimeSformer, VideoSwin, MGH) ----
# (appended; imports kept here so the helpers above stay untouched)
import torch.nn.functional as F

from sgmn.models.gather import gather
from sgmn.models.losses import vse_triplet

ID_SCALE = 16.0   # logit scale of the batch-local ID classifier (cosine logits, as NormFace / CosFace)
# SGMN's triplet reduction over anchors: the default of sgmn.triplet_reduction, where the paper
# (VSE++) and the official code agree. A run's config holds only its own method's section, so a
# baseline cannot read it from `sgmn`; it is fixed here.
SGMN_TRIPLET_REDUCTION = "sum"


def resample_real_frames(frames: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """A clip's real frames, in order, resampled to `length` frames by repetition (nearest
    neighbour in time, as video loaders fill short videos): output frame j is real frame
    floor(j * n / length) of the n real ones. Padded frames (mask False) are never read, so
    their content and the clip's padding length cannot change the result. For backbones with no
    attention mask over frames (TimesformerModel, SwinTransformer3d).

    frames (B, L, ...), mask (B, L) bool -> (B, length, ...). A clip without any real frame
    gets its frame 0 repeated (its embedding is then meaningless, as for every method).
    """
    b = mask.shape[0]
    order = (~mask).to(torch.uint8).argsort(dim=1, stable=True)            # real frames first
    n = mask.sum(1, keepdim=True).clamp(min=1)                              # (B, 1)
    src = torch.arange(length, device=mask.device).unsqueeze(0) * n // length   # (B, length) < n
    pos = order.gather(1, src)                                              # (B, length) in [0, L)
    return frames[torch.arange(b, device=mask.device).unsqueeze(1), pos]


class BNNeck(nn.Module):
    """BNNeck (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person Re-ID",
    CVPRW 2019): a BatchNorm1d between the metric feature and the ID classifier, its shift
    (bias) frozen at zero. (N, D) -> (N, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


def batch_id_loss(queries: torch.Tensor, members: torch.Tensor, labels: torch.Tensor,
                  scale: float = ID_SCALE) -> torch.Tensor:
    """Batch-local ID cross-entropy: the number of training products is unknown when a method is
    built, so the classes are the products present in the batch and each class's weight vector
    is the normalised mean of that product's `members` (the other domain's BNNeck features).
    Each query is classified over these P classes with cosine logits times `scale`.

    queries (N, D), members (N, D): pair n is one clip and its shop image; labels (N,).
    Several pairs of one product form one class (never a negative of each other)."""
    classes, target = labels.unique(return_inverse=True)                    # (P,), (N,)
    protos = members.new_zeros(len(classes), members.shape[1])
    protos = F.normalize(protos.index_add(0, target, F.normalize(members, dim=-1)), dim=-1)  # (P, D)
    logits = scale * F.normalize(queries, dim=-1) @ protos.T                # (N, P)
    return F.cross_entropy(logits, target)


def cross_domain_id_loss(clip_bn: torch.Tensor, image_bn: torch.Tensor, labels: torch.Tensor,
                         scale: float = ID_SCALE) -> torch.Tensor:
    """batch_id_loss both ways: clips over the image prototypes and images over the clip
    prototypes (averaged), so both domains are samples and class weights."""
    return 0.5 * (batch_id_loss(clip_bn, image_bn, labels, scale)
                  + batch_id_loss(image_bn, clip_bn, labels, scale))


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, D) x (Nb, D) -> (Na, Nb) Euclidean distances; clamped before the root so that equal
    points have a finite gradient (as the re-ID codes' euclidean_dist)."""
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2 * a @ b.T
    return d2.clamp(min=1e-12).sqrt()


def batch_hard_triplet(anchor: torch.Tensor, other: torch.Tensor, a_labels: torch.Tensor,
                       o_labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet (Hermans et al. 2017) across domains: each anchor's farthest
    same-product `other` and nearest other-product `other`, hinge max(0, margin + d_ap - d_an),
    averaged over the anchors that have both. anchor (Na, D), other (No, D)."""
    dist = euclidean(anchor, other)                                         # (Na, No)
    same = a_labels.unsqueeze(1) == o_labels.unsqueeze(0)
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    keep = same.any(1) & (~same).any(1)
    if not keep.any():
        return dist.sum() * 0
    return (margin + hardest_pos - hardest_neg).clamp(min=0)[keep].mean()


def sgmn_style_loss(clip_feat: torch.Tensor, image_feat: torch.Tensor, labels: torch.Tensor,
                    neck: BNNeck, margin: float, hardest: bool, reduction: str,
                    id_weight: float) -> dict[str, torch.Tensor]:
    """The spec's default loss for generic video backbones (spec/baselines.md section 1: "what
    SGMN itself uses"): SGMN's cross-domain VSE++ triplet (Eq. 5; sgmn.models.losses.vse_triplet,
    clip anchors against shop images and back, cosine of the L2-normalised features, margin
    train.margin, hardest negative once the trainer sets `hardest`, reduction SGMN's: "sum", see
    SGMN_TRIPLET_REDUCTION) plus an ID cross-entropy on the BNNeck feature (cross_domain_id_loss,
    batch-local classes), weighted by id_weight.

    clip_feat, image_feat (B, D): the pre-BN features of the pairs; labels (B,). BN statistics
    are those of the clips and images together (one set, as at test time). Both terms run on
    the global batch (`gather`)."""
    b = clip_feat.shape[0]
    bn_v, bn_i = neck(torch.cat([clip_feat, image_feat])).split(b)          # (B, D) each
    v, i = gather(F.normalize(clip_feat, dim=-1)), gather(F.normalize(image_feat, dim=-1))
    bn_v, bn_i, labels = gather(bn_v), gather(bn_i), gather(labels)
    return {"triplet_loss": vse_triplet(v @ i.T, labels, margin, hardest, reduction),
            "id_loss": id_weight * cross_domain_id_loss(bn_v, bn_i, labels)}
