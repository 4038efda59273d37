"""NVAN (Liu et al., "Spatially and Temporally Efficient Non-local Attention Network for
Video-based Person Re-Identification", BMVC 2019; official code github.com/jackie840129/STE-NVAN,
"official" below), a video re-ID network used as a video -> shop baseline.

Idea kept (spec/baselines.md section 4.5, "Must keep"):
- a ResNet trunk with its last stride 1, and *joint space-time* non-local blocks at several
  middle-stage positions: every position of every real frame of a clip attends to every position
  of all its real frames (embedded Gaussian: theta / phi / g 1x1x1 convs to C/2, softmax over
  the T*H*W keys, W conv + BN initialised to zero, residual; Wang et al. CVPR 2018, Eq. 1-2);
- a 3-D average pool over the real frames and space gives the clip feature f;
- BNNeck (Luo et al. 2019): f -> BN with a frozen zero bias -> f_bn; the ID cross-entropy reads
  f_bn, the batch-hard soft-margin triplet reads f (Hermans et al. 2017:
  softplus(max_pos d - min_neg d), Euclidean d);
- the image branch is the same network with T = 1 (the non-local then acts over space only).

What differs at small scale:
- trunk: 4 stages x 2 torchvision BasicBlocks at widths `nvan.widths` (default 16/32/64/128)
  instead of ResNet-50's bottlenecks (64..2048); stem conv7x7/2 + maxpool/2 as ResNet, strides
  1/2/2/1 (the last stride 1), so a 64-px frame gives 16/8/4/4-px stage maps (ResNet-50's
  geometry at 1/16 output stride). Non-local blocks sit after the last block of stage 2 and after
  both blocks of stage 3 (3 blocks; the paper puts 2 in res3 and 3 in res4 of 4 and 6 blocks).
  The 1x1x1 convs are applied per frame as 1x1 conv2d (the same operation) and the attention is
  torch's scaled_dot_product_attention with scale 1 (the embedded Gaussian has no 1/sqrt(d));
  keys of padded frames are masked out, so padding never changes an embedding;
- random init (the paper starts from ImageNet ResNet-50); the pipeline's CLIP is ignored;
- ID loss: the number of training products is unknown when the model is built and a product
  appears in few batches, so instead of a global bias-free Linear over all ids the classifier is
  batch-local: its weights are the batch's shop-image BNNeck features. Each clip and each shop
  image is classified over the batch's shop images by `id_scale` x cosine (a normalised
  classifier, as NormFace / CosFace), the target being every column of its own product
  (multi-positive: -log of the summed softmax over them). Shop images thus act as the class
  prototypes; the term is cross-domain for clips and spreads the prototypes apart for images;
- triplet: cross-domain batch-hard in both directions - clip anchors against shop images and
  shop-image anchors against clips, positives and negatives by product label (no same-domain
  terms: two clips of one product rarely share a batch); the mean over anchors. P x K sampling
  (8 ids x 4 tracklets) is not used: the suite's batches hold one clip per pair;
- inference: cosine on the L2-normalised BNNeck feature f_bn (the base class's dot product on
  unit vectors), as BoT's recommended test feature;
- optimiser and schedule: the suite's (Adam(W) at train.lr, the same steps and batch as SGMN),
  not Adam 1e-4 with step decay.

Compute matching (the issue's "fair compute"): the tiny CLIP ViT of SGMN has width 128 and
~0.9M parameters; NVAN's trunk ends at width 128 with 0.72M parameters (widths 16/32/64/128, the
ResNet 1:2:4:8 ratio), 64-px frames, L frames, train.steps and train.batch_size as SGMN. On one
CPU thread a training step at B=32, L=8, S=64 costs ~1.1-1.2x SGMN's GRA-only step (wider
stages cost more: 32/64/128/192 was ~2.7x, the 16x16 stage-1 convolutions dominate). No
detection: whole frames, as the spec says.

Shapes: B clips, L frames, n = real frames (sum of frame_mask), C channels, h x w a stage's map,
N = B x processes after `gather`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from sgmn.models.gather import gather
from sgmn.models.method import RetrievalMethod


@dataclass(frozen=True)
class NVANConfig:
    """The `nvan` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    widths: tuple[int, int, int, int]
    non_local: bool
    id_scale: float
    id_weight: float
    triplet_weight: float


# ---- packing real frames into clips ----

def real_frames(frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (n,) flat indices (into B*L) of the real frames, in clip order."""
    return frame_mask.flatten().nonzero().squeeze(1)


def scatter_frames(x: torch.Tensor, idx: torch.Tensor, slots: int) -> torch.Tensor:
    """(n, ...) per-real-frame values -> (slots, ...) with zeros at the padded slots."""
    return x.new_zeros(slots, *x.shape[1:]).index_copy(0, idx, x)


# ---- the space-time non-local block ----

class SpaceTimeNonLocal(nn.Module):
    """Embedded-Gaussian non-local block over all T*H*W positions of a clip (Wang et al. 2018,
    Eq. 1-2; NVAN section 3.1): z = x + BN(W y), y_i = sum_j softmax_j(theta_i . phi_j) g_j,
    with theta / phi / g 1x1x1 convs C -> C/2, and BN's weight and bias zero at init (the block
    starts as the identity). Keys of padded frames are excluded from the softmax."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.w = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """x (n, C, h, w) real frames; idx (n,) their slots in B*L; frame_mask (B, L) -> (n, C, h, w)."""
        n, _, h, w = x.shape
        b, l = frame_mask.shape

        def tokens(conv: nn.Module) -> torch.Tensor:                    # -> (B, 1, L*h*w, C/2)
            t = conv(x).flatten(2).transpose(1, 2)                       # (n, h*w, C/2)
            return scatter_frames(t, idx, b * l).view(b, 1, l * h * w, -1)

        keys = frame_mask.repeat_interleave(h * w, dim=1)                # (B, L*h*w)
        keys = keys | ~keys.any(1, keepdim=True)                         # a clip without frames: no NaN
        y = F.scaled_dot_product_attention(tokens(self.theta), tokens(self.phi), tokens(self.g),
                                           attn_mask=keys[:, None, None, :], scale=1.0)
        y = y.view(b * l, h * w, -1).index_select(0, idx)               # (n, h*w, C/2)
        y = y.transpose(1, 2).reshape(n, -1, h, w)
        return x + self.bn(self.w(y))


# ---- the trunk ----

def resnet_stage(in_ch: int, out_ch: int, stride: int, blocks: int = 2) -> list[nn.Module]:
    """`blocks` torchvision BasicBlocks; the first one changes width / stride (1x1 conv + BN
    shortcut, as ResNet)."""
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    return [BasicBlock(in_ch, out_ch, stride, down)] + [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]


class NonLocalResNet(nn.Module):
    """Stem (conv7x7/2, BN, ReLU, maxpool/2) and 4 stages x 2 BasicBlocks (strides 1, 2, 2, 1),
    with space-time non-local blocks after stage 2's last block and after both stage-3 blocks.
    `layers` runs in order; an entry of `non_local` marks a SpaceTimeNonLocal."""

    STRIDES = (1, 2, 2, 1)
    NON_LOCAL_AFTER = frozenset({(1, 1), (2, 0), (2, 1)})        # (stage, block), 0-based

    def __init__(self, widths: tuple[int, ...], non_local: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        layers, is_nl, in_ch = [], [], widths[0]
        for s, (width, stride) in enumerate(zip(widths, self.STRIDES)):
            for k, block in enumerate(resnet_stage(in_ch, width, stride)):
                layers.append(block)
                is_nl.append(False)
                if non_local and (s, k) in self.NON_LOCAL_AFTER:
                    layers.append(SpaceTimeNonLocal(width))
                    is_nl.append(True)
            in_ch = width
        self.layers = nn.ModuleList(layers)
        self.is_nl = tuple(is_nl)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """x (n, 3, S, S) the real frames of clips whose (B, L) mask is frame_mask -> the
        3-D average pool (B, C) over each clip's real frames and space."""
        idx = real_frames(frame_mask)
        h = self.stem(x)
        for layer, nl in zip(self.layers, self.is_nl):                 # a fixed, small number
            h = layer(h, idx, frame_mask) if nl else layer(h)
        per_frame = h.mean((2, 3))                                       # (n, C)
        b, l = frame_mask.shape
        summed = scatter_frames(per_frame, idx, b * l).view(b, l, -1).sum(1)
        return summed / frame_mask.sum(1, keepdim=True).clamp(min=1).to(summed.dtype)


# ---- losses ----

def batch_hard_soft_margin(anchor: torch.Tensor, other: torch.Tensor, a_labels: torch.Tensor,
                           o_labels: torch.Tensor) -> torch.Tensor:
    """Batch-hard soft-margin triplet (Hermans et al. 2017, Eq. 5 with softplus): for each anchor
    (Na, D), softplus(farthest positive - nearest negative) among `other` (No, D) by Euclidean
    distance, positives by label. Anchors without a positive or a negative are left out."""
    with torch.autocast(anchor.device.type, enabled=False):
        d = torch.cdist(anchor.float(), other.float())                   # (Na, No), fp32
    same = a_labels.unsqueeze(1) == o_labels.unsqueeze(0)
    hardest_pos = d.masked_fill(~same, float("-inf")).max(1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(1).values
    ok = same.any(1) & (~same).any(1)
    if not ok.any():
        return d.sum() * 0
    return F.softplus(hardest_pos[ok] - hardest_neg[ok]).mean()


def batch_local_id_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                        proto_labels: torch.Tensor, scale: float) -> torch.Tensor:
    """ID cross-entropy with a batch-local normalised classifier: logits = scale x cos(f, p)
    (Nf, Np) against the prototypes (the batch's shop-image BNNeck features); the target is every
    prototype of the sample's own product: -log sum_{p in own product} softmax(logits)_p."""
    with torch.autocast(features.device.type, enabled=False):
        logits = scale * F.normalize(features.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T
    own = labels.unsqueeze(1) == proto_labels.unsqueeze(0)
    pos = torch.logsumexp(logits.masked_fill(~own, float("-inf")), 1)
    ok = own.any(1)
    return (torch.logsumexp(logits, 1) - pos)[ok].mean() if ok.any() else logits.sum() * 0


# ---- the method ----

class NVAN(RetrievalMethod):
    """NVAN (see the module docstring). Embeddings are the L2-normalised BNNeck features, so the
    base class's dot-product `score` is the cosine."""

    name = "nvan"
    pretrained_visual = False          # trained from scratch: train.clip_lr_scale / freeze_stem do not apply

    def __init__(self, cfg: NVANConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = NonLocalResNet(cfg.widths, cfg.non_local)        # shared by clips and images
        self.bnneck = nn.BatchNorm1d(self.visual.out_dim)
        self.bnneck.bias.requires_grad_(False)                           # BNNeck: frozen zero bias

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> NVAN:
        """NVAN of a validated run config (section `nvan`). `clip` and `text_dim` are ignored:
        NVAN builds its own randomly initialised trunk and reads no text."""
        c = dict(config["nvan"])
        c["widths"] = tuple(c["widths"])
        return cls(NVANConfig(**c))

    # ---- encoders ----
    def _features(self, frames: torch.Tensor, frame_mask: torch.Tensor):
        """frames (B, L, 3, S, S), mask (B, L) -> pooled f (B, C) and BNNeck f_bn (B, C)."""
        mask = frame_mask.bool()
        x = frames.flatten(0, 1).index_select(0, real_frames(mask))     # (n, 3, S, S)
        f = self.visual(x, mask)
        return f, self.bnneck(f)

    def _clip_features(self, batch: dict):
        return self._features(batch["frames"], batch["frame_mask"])

    def _image_features(self, batch: dict):
        image = batch["image"]                                           # a clip of T = 1
        return self._features(image.unsqueeze(1), image.new_ones(len(image), 1, dtype=torch.bool))

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, C) unit-norm BNNeck features."""
        return F.normalize(self._clip_features(batch)[1], dim=-1)

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, C) unit-norm BNNeck features."""
        return F.normalize(self._image_features(batch)[1], dim=-1)

    # ---- training ----
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-domain batch-hard soft-margin triplet on f (both directions) and the batch-local
        ID cross-entropy on f_bn (clips and images), over the global batch; each term weighted."""
        vf, vb = self._clip_features(batch)
        if_, ib = self._image_features(batch)
        vf, vb, if_, ib = gather(vf), gather(vb), gather(if_), gather(ib)
        labels = gather(batch["product"])
        triplet = 0.5 * (batch_hard_soft_margin(vf, if_, labels, labels)
                         + batch_hard_soft_margin(if_, vf, labels, labels))
        both, both_labels = torch.cat([vb, ib]), torch.cat([labels, labels])
        ident = batch_local_id_loss(both, both_labels, ib, labels, self.cfg.id_scale)
        return {"triplet_loss": self.cfg.triplet_weight * triplet, "id_loss": self.cfg.id_weight * ident}
