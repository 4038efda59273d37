"""AsymNet (Cheng et al., "Video2Shop: Exact Matching Clothes in Videos to Online Shopping
Images", CVPR 2017). No official code; the unofficial port kyusbok/Video2ShopExactMatching
("the port" below, models.py / train.py), which the first author's repository points to, is
followed where the paper leaves details open. spec/baselines.md section 4.2.

Idea kept (the spec's "Must keep"):
- asymmetric two-stream matching of *detected* garment crops: the Video Feature Network (VFN)
  embeds each frame's crop with a CNN and runs a 2-layer LSTM over the track; its per-step
  hidden states h_1..h_L (no pooling) are the clip's representation, so encode_clip returns
  them flattened, (B, L*d). The Image Feature Network (IFN) is a separate CNN (separate
  weights, as the port's two VGG-16s) embedding the shop image, m (B, d);
- the Similarity Network scores every hidden state against m with a leaf net,
  concat(h_t, m) -> FC(d) -> ReLU -> BN -> FC -> sigmoid, and fuses the L leaf scores through a
  tree of gating fusion nodes (a hierarchical mixture of experts): at each of log2(L) + 1
  levels a linear layer scores every node's pair feature (the leaves' post-BN features, averaged
  pairwise going up), siblings' gates are a softmax of their scores, and the root's gate is a
  sigmoid (the port: softmax over 2 logits at a single node). The score is
  sum_t (product of the gates on leaf t's path) x leaf score t. `score` runs this network on
  every (query, gallery) pair, O(gallery) per query as in the paper;
- the loss: BCE on the fused score of all N x N in-batch (clip, image) pairs, positives (same
  product label) weighted N/2 as the port's n_shops/2, plus the same BCE on every leaf score;
- phased training (the port's `training_phase` 0/1/2, here by step): phase 1 trains the
  features and the leaf nets on the leaf BCE; phase 2 trains only the gates on the fused BCE
  (features and leaf nets frozen: computed without gradient, with BN on running statistics,
  as the port's lock_first eval(); the optimiser is untouched, a frozen parameter simply gets
  no gradient); phase 3 trains everything on both. The phase ends are fractions of train.steps
  (`phase1_end`, `phase2_end`), read from batch["step"]; without a step (outside the trainer)
  the joint phase 3 applies. The loss always returns both terms; the frozen phase's term is
  detached (logged, no gradient).

Detection and tracking (two-stage; spec section 5): the emulated detector's box of the
intended product (`target_box`, jittered to IoU ~0.73-0.90, sgmn.data.datasets.detector_boxes)
is cropped from each frame with torchvision.ops.roi_align to S x S; the oracle tracker links
the frames where that product is present (`target_present`) into one track. Frames without the
product are left out (masked steps: the tracker has no box there), and the track's crops are
packed in frame order, so the LSTM runs over the track (real steps first, the rest zero). A
clip where the product is never present keeps all its real frames, uncropped. The shop image
is the whole-image box (the product fills it), so it is not cropped.

Masked leaves: hidden states of masked steps are zero in the embedding; the Similarity Network
finds real leaves as the nonzero ones and ignores the others (they leave the BN statistics,
the sibling softmax and the pairwise means, so the gates renormalise over the real leaves).

What differs at small scale: VGG-16 + fc6/fc7 + FC(1024) + BN -> a VGG-style CNN of 3x3
conv-BN-ReLU stages (width/4, width/2, width, width; stride 16 at 64 px) -> FC(2d) -> ReLU ->
FC(d) -> BN, with d = `hidden` = 128 (the port 1024) for the CNN features, the LSTM and the
leaf nets; random init (no downloads; the pipeline's CLIP, `clip` in from_config, is not used).
The leaf net ends in one logit (sigmoid) instead of the port's 2 (it reads only column 1 of a
2-way sigmoid; one logit is the same model without the unused output). Gates are the paper's
softmax over siblings' linear scores (the port softmaxes the sigmoid of each node's 2-way
score, which bounds a gate to (0.27, 0.73)). The first FC of a leaf on concat(h_t, m) is
computed as W_h h_t + W_m m + b (the same layer), so all Q*L*G pairs cost one broadcast add.
`score` uses the leaf BN's running statistics (eval behaviour) in any mode, so a pair's score
never depends on the other pairs; it runs in chunks of the gallery (and queries) to bound
memory. Optimiser: the trainer's (the port: SGD lr 1e-3).

Compute matched to SGMN (tiny CLIP ViT, width 128): CNN width 128, d = 128 (~1.9M parameters
in all), 64-px crops and images, the trainer's steps and batch (100 x 32 clips x 8 frames in
the default run). The fusion tree has 2^k leaves: an L = model.num_frames that is not a power of two (the paper's
10) gets masked leaves up to the next one, ignored like padded frames.

Shapes: B clips, L frames (= leaves), S pixels, d = hidden, Q query clips, G gallery images,
N = B x processes after `gather`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import conv_bn_relu, crop_boxes, vgg_trunk
from sgmn.models.gather import gather
from sgmn.models.method import RetrievalMethod

SCORE_CHUNK = 1 << 22    # elements of one (Q, G, L, d) pair-feature block in `score`
FILL = -1e4              # logit of a masked sibling (finite: a fully masked pair gives no NaN)


@dataclass(frozen=True)
class AsymNetConfig:
    """The `asymnet` section of a validated run config (sgmn/schemas/config.schema.yaml)."""
    width: int
    hidden: int
    phase1_end: float
    phase2_end: float


@contextmanager
def frozen(*modules: nn.Module):
    """No gradient and eval-mode BN inside (the port's lock_first); modes restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


# ---- feature networks ----

class FeatureCNN(nn.Module):
    """VGG-style CNN -> FC -> ReLU -> FC -> BN (the port's VGG features -> classifier -> FC(d)
    -> BN). (n, 3, S, S) -> (n, d)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        if width % 4:
            raise ValueError(f"asymnet.width={width} must be a multiple of 4 (stages width/4, width/2, width)")
        c = width
        self.features = nn.Sequential(vgg_trunk((c // 4, c // 2, c)), nn.MaxPool2d(2), conv_bn_relu(c, c),
                                      nn.AdaptiveMaxPool2d(4), nn.Flatten())          # (n, 16C)
        self.head = nn.Sequential(nn.Linear(16 * c, 2 * hidden), nn.ReLU(inplace=True),
                                  nn.Linear(2 * hidden, hidden), nn.BatchNorm1d(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NHWC: CPU convolutions and max-pools run about twice as fast (same values)
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


# ---- the similarity network ----

def masked_batch_norm(x: torch.Tensor, mask: torch.Tensor, bn: nn.BatchNorm1d, training: bool) -> torch.Tensor:
    """BatchNorm over the last dim of x (..., d) with batch statistics of the rows where mask
    (...) is True only (training), or the running statistics everywhere (not training). Masked
    rows are 0 in training."""
    if not training:
        return F.batch_norm(x.reshape(-1, x.shape[-1]), bn.running_mean, bn.running_var, bn.weight,
                            bn.bias, False, 0.0, bn.eps).view_as(x)
    rows = F.batch_norm(x[mask], bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                        bn.momentum, bn.eps)                                 # (n, d)
    return x.new_zeros(x.shape, dtype=rows.dtype).index_put((mask,), rows)


class SimilarityNetwork(nn.Module):
    """Leaf nets + the gated fusion tree over L = 2^k leaves (log2(L) + 1 gate levels)."""

    def __init__(self, hidden: int, num_leaves: int):
        super().__init__()
        self.num_leaves = num_leaves
        self.fc_h = nn.Linear(hidden, hidden)               # FC(2d -> d) on concat(h, m), split
        self.fc_m = nn.Linear(hidden, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, 1)                     # leaf logit
        levels = int(math.log2(num_leaves)) + 1
        self.gates = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(levels))

    def leaves(self, h: torch.Tensor, m: torch.Tensor, mask: torch.Tensor, bn_batch_stats: bool):
        """h (Q, L, d) hidden states, m (G, d) image features, mask (Q, L) real leaves ->
        pair features x (Q, G, L, d) (post-BN) and leaf logits (Q, G, L)."""
        u = torch.relu(self.fc_h(h).unsqueeze(1) + self.fc_m(m)[None, :, None])      # (Q, G, L, d)
        pair_mask = mask.unsqueeze(1).expand(-1, m.shape[0], -1)                    # (Q, G, L)
        x = masked_batch_norm(u, pair_mask, self.bn, bn_batch_stats)
        return x, self.out(x).squeeze(-1)

    def fuse(self, x: torch.Tensor, leaf_score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The gated tree: x (Q, G, L, d), leaf_score (Q, G, L) in [0, 1], mask (Q, L) ->
        sum_t prod(gates on t's path) * leaf_score_t, (Q, G). Masked nodes get gate 0 and leave
        their siblings' softmax and their parents' means."""
        pad = self.num_leaves - x.shape[2]                                          # L up to 2^k leaves
        if pad:
            x, leaf_score, mask = F.pad(x, (0, 0, 0, pad)), F.pad(leaf_score, (0, pad)), F.pad(mask, (0, pad))
        q, g, l, d = x.shape
        node = mask.unsqueeze(1).to(x.dtype)                                        # (Q, 1, n)
        path = leaf_score.new_ones(q, g, l)
        for gate in self.gates:
            n = x.shape[2]
            e = gate(x).squeeze(-1)                                                 # (Q, G, n)
            if n > 1:                                                               # siblings (2i, 2i+1)
                e = e.masked_fill(node == 0, FILL)
                w = e.view(q, g, n // 2, 2).softmax(-1).view(q, g, n)
            else:                                                                   # the root
                w = torch.sigmoid(e)
            path = path * (w * node).repeat_interleave(l // n, dim=2)
            if n > 1:                                                               # parents: mean of real children
                count = node.view(q, 1, n // 2, 2).sum(-1)                          # (Q, 1, n/2)
                x = (x * node.unsqueeze(-1)).view(q, g, n // 2, 2, d).sum(3) / count.clamp(min=1).unsqueeze(-1)
                node = (count > 0).to(x.dtype)
        return (path * leaf_score).sum(-1)

    def forward(self, h, m, mask, bn_batch_stats: bool):
        """-> fused score (Q, G), leaf logits (Q, G, L)."""
        x, logits = self.leaves(h, m, mask, bn_batch_stats)
        return self.fuse(x, torch.sigmoid(logits), mask), logits


def weighted_bce(p: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, logits: bool) -> torch.Tensor:
    """Elementwise BCE (fp32; autocast-safe) of probabilities or logits p against target, times weight."""
    p, target = p.float(), target.float()
    if logits:
        return F.binary_cross_entropy_with_logits(p, target, reduction="none") * weight
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(target * p.log() + (1 - target) * (1 - p).log()) * weight


# ---- the method ----

class AsymNet(RetrievalMethod):
    """AsymNet (see the module docstring). `visual` holds the two CNNs (frame: VFN, image: IFN)."""

    name = "asymnet"
    pretrained_visual = False   # its own backbone, from random init

    def __init__(self, cfg: AsymNetConfig, num_frames: int, image_size: int, steps: int):
        super().__init__()
        if cfg.phase1_end > cfg.phase2_end:
            raise ValueError(f"asymnet.phase1_end ({cfg.phase1_end}) must not exceed asymnet.phase2_end "
                             f"({cfg.phase2_end})")
        self.cfg, self.num_frames, self.image_size, self.steps = cfg, num_frames, image_size, steps
        d = cfg.hidden
        self.visual = nn.ModuleDict({"frame": FeatureCNN(cfg.width, d), "image": FeatureCNN(cfg.width, d)})
        self.lstm = nn.LSTM(d, d, num_layers=2, batch_first=True)
        # the tree has 2^k leaves; an L that is not a power of two (e.g. the paper's 10) gets
        # masked leaves up to the next one, which the tree ignores like padded frames
        self.sn = SimilarityNetwork(d, 1 << max(0, (num_frames - 1).bit_length()))

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> AsymNet:
        """AsymNet of a validated run config (section `asymnet`); `clip` and `text_dim` are
        ignored (own CNNs from random init, vision only)."""
        m = config["model"]
        return cls(AsymNetConfig(**config["asymnet"]), m["num_frames"], m["image_size"], config["train"]["steps"])

    # ---- encoders ----
    def _track(self, batch: dict):
        """The oracle detector + tracker: (B, L) frames in the track and (B, L) frames cropped."""
        if "target_box" not in batch or "target_present" not in batch:
            raise ValueError("asymnet crops each frame to the intended product's box (two-stage): the "
                             "clip batch needs target_box and target_present")
        real = batch["frame_mask"].bool()
        boxed = real & batch["target_present"].bool()
        has_box = boxed.any(1, keepdim=True)
        return torch.where(has_box, boxed, real), boxed

    def _hidden_states(self, batch: dict):
        """-> per-step LSTM hidden states (B, L, d), zero past each track's length, and the
        (B, L) mask of real steps (a prefix: the track's crops packed in frame order)."""
        used, boxed = self._track(batch)
        b, l = used.shape
        idx = used.flatten().nonzero().squeeze(1)                                   # (n,) in B*L
        x = batch["frames"].flatten(0, 1).index_select(0, idx)                      # (n, 3, S, S)
        crop = boxed.flatten().index_select(0, idx)
        if crop.any():
            box = batch["target_box"].flatten(0, 1).index_select(0, idx).to(x.dtype)
            x = torch.where(crop[:, None, None, None], crop_boxes(x, box, self.image_size), x)
        f = self.visual["frame"](x)                                                 # (n, d)
        slot = (idx // l) * l + (used.cumsum(1) - 1).flatten().index_select(0, idx)  # packed position
        seq = f.new_zeros(b * l, f.shape[-1]).index_copy(0, slot, f).view(b, l, -1)
        steps = torch.arange(l, device=used.device) < used.sum(1, keepdim=True)     # (B, L)
        h, _ = self.lstm(seq)                                                       # (B, L, d)
        return h * steps.unsqueeze(-1).to(h.dtype), steps

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """A clip batch -> (B, L*d): the flattened per-step hidden states (masked steps 0)."""
        return self._hidden_states(batch)[0].flatten(1)

    def encode_image(self, batch: dict) -> torch.Tensor:
        """An image batch -> (B, d): the IFN feature m."""
        return self.visual["image"](batch["image"])

    def _unflatten(self, clip_emb: torch.Tensor):
        """(Q, L*d) -> hidden states (Q, L, d) and the real-leaf mask (Q, L) (nonzero states)."""
        h = clip_emb.view(clip_emb.shape[0], self.num_frames, -1)
        return h, h.abs().amax(-1) > 0

    # ---- scoring ----
    @torch.no_grad()
    def score(self, clip_emb: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        """(Q, L*d) x (G, d) -> (Q, G) fused Similarity Network scores in [0, 1]: every pair
        scored by the leaf nets and the tree (leaf BN on running statistics), in chunks.
        Inference only (no gradient; the loss scores its pairs itself). The embeddings may live
        elsewhere than the model (the evaluation keeps them on the CPU): the scores are computed
        on the model's device and returned on the embeddings' device."""
        device = self.sn.out.weight.device
        h, mask = self._unflatten(clip_emb.to(device, self.sn.out.weight.dtype))
        m = image_emb.to(device, h.dtype)
        q, l, d = h.shape
        gc = max(1, min(len(m), SCORE_CHUNK // (l * d)))
        qc = max(1, SCORE_CHUNK // (gc * l * d))
        rows = []
        for q0 in range(0, q, qc):
            cols = [self.sn(h[q0:q0 + qc], m[g0:g0 + gc], mask[q0:q0 + qc], False)[0]
                    for g0 in range(0, len(m), gc)]
            rows.append(torch.cat(cols, 1) if cols else h.new_zeros(min(qc, q - q0), 0))
        out = torch.cat(rows, 0) if rows else h.new_zeros(0, len(m))
        return out.to(clip_emb.device)

    # ---- training ----
    def phase(self, step: int | None) -> int:
        """1 (features + leaves), 2 (gates only) or 3 (joint) at optimiser step `step`."""
        if step is None:
            return 3
        if step < self.cfg.phase1_end * self.steps:
            return 1
        return 2 if step < self.cfg.phase2_end * self.steps else 3

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Weighted BCE of the fused score (`match_loss`) and of every leaf (`leaf_loss`) over
        all N x N in-batch pairs; the phase decides which one carries gradient."""
        phase = self.phase(batch.get("step"))
        features = (self.visual, self.lstm, self.sn.fc_h, self.sn.fc_m, self.sn.bn, self.sn.out)
        if phase == 2:
            with frozen(*features):
                h, steps = self._hidden_states(batch)
                m = self.visual["image"](batch["image"])
        else:
            h, steps = self._hidden_states(batch)
            m = self.visual["image"](batch["image"])
        h, steps, m, labels = gather(h), gather(steps), gather(m), gather(batch["product"])

        n = len(labels)
        target = (labels.unsqueeze(1) == labels.unsqueeze(0)).float()                # (N, N)
        weight = 1 + target * (n / 2 - 1)                                           # positives n/2
        if phase == 2:
            with frozen(*features):
                x, logits = self.sn.leaves(h, m, steps, bn_batch_stats=False)
        else:
            x, logits = self.sn.leaves(h, m, steps, bn_batch_stats=self.training)
        leaf_mask = steps.unsqueeze(1).expand_as(logits)                            # (N, N, L)
        leaf = weighted_bce(logits, target.unsqueeze(-1).expand_as(logits), weight.unsqueeze(-1), True)
        leaf = leaf[leaf_mask].mean()

        if phase == 1:                       # the tree is only logged: no graph through the gates
            with torch.no_grad():
                fused = self.sn.fuse(x, torch.sigmoid(logits), steps)
        else:
            fused = self.sn.fuse(x, torch.sigmoid(logits), steps)
        rows = steps.any(1)                                                        # clips with a real step
        match = weighted_bce(fused, target, weight, False)[rows]
        match = match.mean() if rows.any() else match.sum()
        return {"match_loss": match if phase > 1 else match.detach(),
                "leaf_loss": leaf if phase != 2 else leaf.detach()}
