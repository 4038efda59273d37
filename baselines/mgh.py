"""MGH (Yan, Qin, Zhang, Liu, Zhao, Huang and Shao, "Learning Multi-Granular Hypergraphs for
Video-Based Person Re-Identification", CVPR 2020; official code github.com/daodaofr/hypergraph_reid,
"released code" below: models/ResNet_hypergraphsage_part.py). Spec/baselines.md section 4.7.

Idea kept (the spec's "Must keep"):
- part nodes across frames: the trunk's map of each frame (8 rows at 64 px; stride 8) is
  average-pooled into p horizontal stripes (adaptive pooling: any size works) at each spatial
  granularity p in `parts` (default {1, 2, 4}); every stripe of every real frame is a node
  (N = L p nodes per clip). p = 1 is the global average (released code: f0 =
  BN(L2norm(mean))), the others get hypergraphs;
- kNN hyperedges limited by temporal range (released `BatchedGraphSAGEDynamicRangeMean1`): at
  every layer, for each node its `knn` nearest nodes by cosine (itself included, so knn - 1
  others) among the real nodes within +-w frames; one hyperedge per window w in `windows`
  (default +-1 and +-3 frames: two temporal granularities). The released code uses one window
  (+-3); the paper uses several, and a node gathers its hyperedges with attention;
- propagation (2 layers, hidden `hidden`): each hyperedge's feature is the mean of its other
  members (released code); the node attends over its hyperedges (one per window) with a
  learned score LeakyReLU(a^T [x; e]) and a softmax over them (the released GAT layers'
  scorer; the paper's hyperedge attention); then, as released, concat(W_x x, W_n m) ->
  L2-normalise -> ReLU -> BN;
- attentive node pooling (the paper; the released code averages): a learned score per node,
  softmax over the real nodes, weighted sum;
- readout: the granularities' features concatenated -> BNNeck (BN, frozen bias); loss: one ID
  cross-entropy per granularity on its slice of the BNNeck feature (summed, as released) plus
  a batch-hard triplet (margin `triplet_margin`, 0.3) on the concatenated pre-BN feature
  (Euclidean), here across domains: clip anchors against shop images and image anchors against
  clips (baselines.common.batch_hard_triplet). Retrieval uses the BNNeck feature (released code:
  `return f_bn` at test time), L2-normalised, scored by cosine. No mutual-information term (the
  released code has none; the spec makes it optional).

Image branch: shared, T=1 (hyperedges then link parts of the one image only). At training the
shop images go through the trunk together with the frames and through the hypergraph as
1-real-frame clips, so every BatchNorm sees one set of statistics, as at test time.

Padded frames: only real frames enter the trunk; their nodes come first (sgmn.models.tmc.
compact_frames: the temporal window counts real frames, so a masked frame leaves no gap); padded
nodes are never a neighbour, get no pooling weight, and stay out of the BatchNorm statistics of
the propagation layers (masked_batch_norm). Padding therefore does not change a clip's embedding
(tested, exactly).

ID classifier: batch-local (baselines.common.batch_id_loss): from_config gets no dataset, so the
number of training products is unknown, and `product % K` buckets would merge unrelated
products. Per granularity, each clip is classified over the batch's products with class weights
the normalised mean BNNeck slices of their shop images, and each image over the clips'
(the re-ID recipe classifies tracklets; here both domains are samples). Released: label-smoothed
CE over the training identities.

What differs at small scale: the trunk is a small ResNet of torchvision BasicBlocks (stem conv
stride 2 + max-pool, stages 16 / 32 / 96 channels, one block each, the last stage at stride 1:
64 px -> an 8x8 map of 96 channels, 8 rows as the spec asks) with one per-frame 2-D
embedded-Gaussian non-local block after the last stage (`non_local`; the released ResNet-50 has
them in res3 / res4), random init (no ImageNet weights; the pipeline's CLIP passed to from_config is ignored), granularities
{1, 2, 4} on 8 rows (released {1, 2, 4, 8}), hidden 64 (512), K=3 as released, windows +-1 and
+-3, no text.

Compute (equal to SGMN's): the trainer applies SGMN's steps, batch and optimiser. Convolutions
at 64 px cost far more per frame than SGMN's 16-token ViT, so the trunk is narrow (16 / 32 / 96;
32 / 64 / 128 took about 2.4x SGMN's GRA-only step on one CPU thread) and keeps one training step
within 1.5x of SGMN's; the hypergraph (N <= 32 nodes per clip, dense batched torch) is about a
sixth of the step. Measured (fwd+bwd of `loss` at B=32, L=8, S=64, one CPU thread, CPU time):
about 0.80 s per step against 0.64 s for SGMN's GRA-only step (1.25x).

Shapes: B clips, L frames, N = L p nodes, C trunk channels (96), H hidden, P granularities,
W windows, K knn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from baselines.common import BNNeck, batch_hard_triplet, cross_domain_id_loss
from sgmn.models.gather import gather
from sgmn.models.method import RetrievalMethod
from sgmn.models.tmc import compact_frames

WIDTHS = (16, 32, 96)


@dataclass(frozen=True)
class MGHConfig:
    """The `mgh` section of a validated run config (keys described in
    sgmn/schemas/config.schema.yaml)."""
    parts: tuple[int, ...]
    windows: tuple[int, ...]
    knn: int
    hidden: int
    non_local: bool
    triplet_margin: float
    id_weight: float

    @classmethod
    def from_dict(cls, d: dict) -> MGHConfig:
        return cls(**{**d, "parts": tuple(d["parts"]), "windows": tuple(d["windows"])})


# ---- the trunk ----

class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block over one frame's positions (Wang et al. 2018; the
    released ResNetNonLocal's per-frame 2-D blocks): theta / phi / g 1x1 convs to C/2, softmax
    over the H W positions, W conv + BN with BN's scale at zero (the block starts as identity),
    residual. (n, C, H, W) -> (n, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        inner = channels // 2
        self.theta, self.g = nn.Conv2d(channels, inner, 1), nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)   # a key bias cancels in the softmax
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)                          # (n, HW, C/2)
        k, v = self.phi(x).flatten(2), self.g(x).flatten(2).transpose(1, 2)  # (n, C/2, HW), (n, HW, C/2)
        y = (q @ k).softmax(-1) @ v                                           # (n, HW, C/2)
        return x + self.out(y.transpose(1, 2).reshape(n, -1, h, w))


def resnet_trunk(non_local: bool) -> nn.Sequential:
    """A small ResNet (torchvision BasicBlocks, last stride 1): (n, 3, S, S) -> (n, 96, S/8, S/8)."""
    c1, c2, c3 = WIDTHS

    def block(cin: int, cout: int, stride: int) -> BasicBlock:
        down = None if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        return BasicBlock(cin, cout, stride=stride, downsample=down)

    layers = [nn.Conv2d(3, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, stride=2, padding=1),                             # 64 -> 32 -> 16
              block(c1, c1, 1), block(c1, c2, 2), block(c2, c3, 1)]             # 16 -> 8 -> 8 (last stride 1)
    if non_local:
        layers.append(NonLocal2d(c3))
    return nn.Sequential(*layers)


# ---- the hypergraph ----

def masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the real nodes only (padded nodes neither enter the statistics nor get a
    value: they stay 0). x (B, N, F), real (B, N) bool -> (B, N, F)."""
    flat = x.flatten(0, 1)
    idx = real.flatten().nonzero().squeeze(1)
    y = bn(flat.index_select(0, idx))                       # (n_real, F); fp32 under autocast
    return y.new_zeros(flat.shape).index_copy(0, idx, y).view(x.shape)


def window_masks(frame_of: torch.Tensor, windows: tuple[int, ...]) -> torch.Tensor:
    """(N,) frame index of each node -> (W, N, N) bool: |t_i - t_j| <= w for each window w."""
    gap = (frame_of.unsqueeze(0) - frame_of.unsqueeze(1)).abs()                   # (N, N)
    return gap.unsqueeze(0) <= torch.tensor(windows, device=gap.device).view(-1, 1, 1)


def hyperedges(x: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor, knn: int) -> torch.Tensor:
    """The kNN hyperedge of every node in every window, as the mean of its other members.

    x (B, N, F) node features, real (B, N) bool, allowed (W, N, N) the windows. In each window a
    node's hyperedge is itself and its knn - 1 most cosine-similar real nodes in the window
    (topk of the masked cosine matrix, -inf outside; the node itself is put first). Its feature
    is the mean of the members other than the node (released code); a node with no other member
    (a single real node) takes its own feature. -> (B, W, N, F)."""
    b, n, f = x.shape
    unit = F.normalize(x, dim=-1)
    cos = (unit @ unit.transpose(1, 2)).unsqueeze(1)                              # (B, 1, N, N)
    keep = allowed.unsqueeze(0) & real[:, None, None, :]                          # (B, W, N, N)
    cos = cos.masked_fill(~keep, float("-inf"))
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    cos = cos.masked_fill(eye, float("inf"))                                      # self first
    k = min(knn, n)
    val, idx = cos.topk(k, dim=-1)                                                # (B, W, N, k)
    val, idx = val[..., 1:], idx[..., 1:]                                         # the other members
    valid = torch.isfinite(val).to(x.dtype)                                       # (B, W, N, k-1)
    w = idx.shape[1]
    members = x.unsqueeze(1).expand(b, w, n, f).gather(
        2, idx.reshape(b, w, -1, 1).expand(-1, -1, -1, f)).view(b, w, n, k - 1, f)  # (B, W, N, k-1, F)
    count = valid.sum(-1, keepdim=True)                                           # (B, W, N, 1)
    mean = (members * valid.unsqueeze(-1)).sum(3) / count.clamp(min=1)
    return torch.where(count > 0, mean, x.unsqueeze(1))


class HypergraphLayer(nn.Module):
    """One propagation layer: hyperedges per window -> attention over the node's hyperedges ->
    concat(W_x x, W_n m) -> L2-normalise -> ReLU -> BN (released BatchedGraphSAGE...Mean1).
    (B, N, F_in) -> (B, N, 2H)."""

    def __init__(self, cin: int, hidden: int, knn: int):
        super().__init__()
        self.knn = knn
        self.w_x, self.w_n = nn.Linear(cin, hidden), nn.Linear(cin, hidden)
        self.score = nn.Linear(2 * cin, 1, bias=False)     # hyperedge attention
        self.bn = nn.BatchNorm1d(2 * hidden)

    def forward(self, x: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        edges = hyperedges(x, real, allowed, self.knn).transpose(1, 2)            # (B, N, W, F)
        pair = torch.cat([x.unsqueeze(2).expand_as(edges), edges], -1)            # (B, N, W, 2F)
        alpha = F.leaky_relu(self.score(pair), 0.2).softmax(2)                    # (B, N, W, 1)
        m = (alpha * edges).sum(2)                                                # (B, N, F)
        h = F.relu(F.normalize(torch.cat([self.w_x(x), self.w_n(m)], -1), dim=-1))
        return masked_batch_norm(self.bn, h, real)


class Granularity(nn.Module):
    """One spatial granularity p > 1: 2 hypergraph layers over the (B, L p) stripe nodes, then
    attentive node pooling over the real nodes. -> (B, 2H)."""

    def __init__(self, cin: int, hidden: int, knn: int, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(HypergraphLayer(cin if i == 0 else 2 * hidden, hidden, knn)
                                    for i in range(layers))
        self.attend = nn.Linear(2 * hidden, 1, bias=False)   # a bias cancels in the softmax

    def forward(self, nodes: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = nodes
        for layer in self.layers:
            x = layer(x, real, allowed)                                           # (B, N, 2H)
        score = self.attend(x).squeeze(-1).masked_fill(~real, torch.finfo(x.dtype).min)
        return (score.softmax(1).unsqueeze(-1) * x).sum(1)                        # (B, 2H)


# ---- the method ----

class MGH(RetrievalMethod):
    """MGH (see the module docstring). `score` is the base class's dot product of unit-norm
    embeddings (cosine of the BNNeck features)."""

    name = "mgh"
    pretrained_visual = False   # its own backbone, from random init

    def __init__(self, cfg: MGHConfig):
        super().__init__()
        if len(set(cfg.parts)) != len(cfg.parts) or len(set(cfg.windows)) != len(cfg.windows):
            raise ValueError("mgh.parts and mgh.windows must not repeat a value")
        self.cfg = cfg
        c = WIDTHS[-1]
        self.visual = resnet_trunk(cfg.non_local)
        self.global_bn = nn.BatchNorm1d(c)                   # p = 1: BN(L2norm(mean)) as released
        self.graphs = nn.ModuleDict({str(p): Granularity(c, cfg.hidden, cfg.knn) for p in cfg.parts if p > 1})
        self.sizes = [c if p == 1 else 2 * cfg.hidden for p in cfg.parts]
        self.neck = BNNeck(sum(self.sizes))

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> MGH:
        """MGH of a validated run config (section `mgh`); `clip` and `text_dim` are ignored
        (random init, no text)."""
        return cls(MGHConfig.from_dict(config["mgh"]))

    # ---- encoders ----
    def _maps(self, frames: torch.Tensor, mask: torch.Tensor, images: torch.Tensor | None = None):
        """Trunk maps of the real frames (and of `images`, appended as 1-frame clips, in the same
        trunk call). frames (B, L, 3, S, S), mask (B, L) -> maps (B', L, C, S/8, S/8), padding 0,
        mask (B', L); B' = B (+ B images)."""
        b, l = mask.shape
        mask, frames = compact_frames(mask, frames)                   # real frames first, in order
        idx = mask.flatten().nonzero().squeeze(1)
        x = frames.flatten(0, 1).index_select(0, idx)                 # (n_real, 3, S, S)
        if images is not None:
            slots = torch.arange(len(images), device=idx.device) * l + b * l   # frame 0 of clip B + j
            idx, x = torch.cat([idx, slots]), torch.cat([x, images])
            image_mask = torch.zeros(len(images), l, dtype=torch.bool, device=mask.device)
            image_mask[:, 0] = True
            mask = torch.cat([mask, image_mask])
        y = self.visual(x)                                            # (n, C, S/8, S/8)
        maps = y.new_zeros(mask.numel(), *y.shape[1:]).index_copy(0, idx, y)
        return maps.view(*mask.shape, *y.shape[1:]), mask

    def _features(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """maps (B, L, C, R, R), mask (B, L) -> pre-BN concatenated feature (B, sum sizes)."""
        b, l = mask.shape
        rows = maps.mean(-1)                                          # (B, L, C, R): R = S/8 rows
        w = mask.unsqueeze(-1).to(rows.dtype)
        feats = []
        for p in self.cfg.parts:                                      # a fixed few granularities
            if p == 1:                                                # global: masked mean of frames
                mean = (rows.mean(-1) * w).sum(1) / w.sum(1).clamp(min=1)          # (B, C)
                feats.append(self.global_bn(F.normalize(mean, dim=-1)))
                continue
            nodes = F.adaptive_avg_pool1d(rows.flatten(0, 1), p).view(b, l, -1, p)   # (B, L, C, p) stripes
            nodes = nodes.transpose(2, 3).reshape(b, l * p, -1)       # (B, N, C), node = t p + s
            real = mask.repeat_interleave(p, dim=1)                   # (B, N)
            frame_of = torch.arange(l * p, device=mask.device) // p
            allowed = window_masks(frame_of, self.cfg.windows)        # (W, N, N)
            feats.append(self.graphs[str(p)](nodes, real, allowed))   # (B, 2H)
        return torch.cat(feats, -1)

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """(B, L, 3, S, S) -> L2-normalised BNNeck feature (B, sum sizes)."""
        maps, mask = self._maps(batch["frames"], batch["frame_mask"].bool())
        return F.normalize(self.neck(self._features(maps, mask)), dim=-1)

    def encode_image(self, batch: dict) -> torch.Tensor:
        """(B, 3, S, S) as 1-frame clips -> L2-normalised BNNeck feature."""
        images = batch["image"].unsqueeze(1)
        maps, mask = self._maps(images, torch.ones(images.shape[:2], dtype=torch.bool, device=images.device))
        return F.normalize(self.neck(self._features(maps, mask)), dim=-1)

    # ---- training ----
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """id_loss (per-granularity batch-local ID CE on the BNNeck slices, summed) and
        triplet_loss (cross-domain batch-hard triplet on the concatenated pre-BN feature);
        id_p<p> logs each granularity's CE."""
        b = batch["frames"].shape[0]
        maps, mask = self._maps(batch["frames"], batch["frame_mask"].bool(), batch["image"])
        f = self._features(maps, mask)                                # (2B, F): clips, then images
        f_bn = self.neck(f)                                           # one set of BN statistics
        f_v, f_i = gather(f[:b]), gather(f[b:])
        bn_v, bn_i = gather(f_bn[:b]), gather(f_bn[b:])
        labels = gather(batch["product"])
        out = {}
        for p, a, z in zip(self.cfg.parts, bn_v.split(self.sizes, -1), bn_i.split(self.sizes, -1)):
            out[f"id_p{p}"] = cross_domain_id_loss(a, z, labels)
        out["id_loss"] = self.cfg.id_weight * sum(out.values())
        m = self.cfg.triplet_margin
        out["triplet_loss"] = 0.5 * (batch_hard_triplet(f_v, f_i, labels, labels, m)
                                     + batch_hard_triplet(f_i, f_v, labels, labels, m))
        return out
