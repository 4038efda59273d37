"""SGMN (ACM MM 2024): GRA + text branch + TMC for inference, GCI and SMF as training losses.

Every module is a switch (config `sgmn`): all off is GRA only (Table 7 row A), all on is the full
model. Inference uses GRA alone (Eq. 23): S = cos(V, I) + lambda cos(A, T), computed as one dot
product of the concatenated embeddings [V, sqrt(lambda) A] . [I, sqrt(lambda) T], so the
evaluation code scores every model with a plain matrix product.

Shapes: B clips per process, N = B x processes after `gather` (the paper's global batch), L
frames, D the CLIP embedding, Dt the text-feature dimension, T tokens per frame (CLS + patches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from sgmn.models.clip import encode_tokens
from sgmn.models.gci import GCI
from sgmn.models.smf import SMF
from sgmn.models.tmc import TMC, compact_frames
from sgmn.models.gather import gather
from sgmn.models.method import RetrievalMethod
from sgmn.models.losses import (distance_weighted_triplet, kl_rows, masked_vse_triplet, text_infonce,
                                vse_triplet)


@dataclass(frozen=True)
class SGMNConfig:
    """SGMN's switches and recipe: the `sgmn` section of a resolved config (its keys, values and
    the paper/official choices are described in sgmn/schemas/config.schema.yaml)."""
    te: bool
    tmc: bool
    gci: bool
    smf: bool
    lambda_text: float
    beta1: float
    beta2: float
    heads: int
    gci_heads: int
    init: str
    tmc_layers: int
    triplet: str
    dw_dim: str | int
    triplet_reduction: str
    text_filter: str
    text_loss: str
    text_temperature: float
    gci_graphs: dict
    connect_ratio: float
    connect_count: str
    cross_connection: str
    intra_connection: str
    relevance_profile: str
    batch_linear: bool
    gci_attention: str
    kl_target: str
    kl_graph: str
    kl_reference: str
    kl_weight: float
    smf_k: int
    smf_k_counts_positive: bool
    smf_symmetric: bool
    smf_pool: str
    smf_temperature: float
    smf_normalize: bool
    smf_fusion_dropout: float

    @classmethod
    def from_dict(cls, section: dict) -> "SGMNConfig":
        """From a resolved `sgmn` section; a key left null (fidelity not applied) is an error."""
        unresolved = sorted(k for k, v in section.items() if v is None)
        if unresolved:
            raise ValueError(f"sgmn keys {unresolved} are unresolved (null): resolve the config "
                             f"(sgmn.config.resolve_run_config) before building the model")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"unknown sgmn keys {unknown}")
        return cls(**section)


def official_init_(module: nn.Module) -> None:
    """The official code's init_weights (until_module.py:71-86), applied to every submodule:
    Linear and Embedding weights N(0, 0.02), Linear biases 0, LayerNorm 1 and 0. Attention
    in-projections (bare parameters of nn.MultiheadAttention) keep PyTorch's init, as there."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SGMN(RetrievalMethod):
    name = "sgmn"
    training_only = ("gci", "smf")   # GCI and SMF only shape training (Sec. 3.5)

    def __init__(self, visual: nn.Module, cfg: SGMNConfig | dict, num_frames: int, batch_size: int,
                 margin: float = 0.2, text_dim: int | None = None, clip_text: dict | None = None):
        """cfg: the `sgmn` section (an SGMNConfig, or the resolved dict it is built from).
        clip_text: CLIP's text tower as {"block": its layer 0, "positions": its positional
        embedding}, which `init: official` copies into SMF's cross-encoder."""
        super().__init__()
        cfg = cfg if isinstance(cfg, SGMNConfig) else SGMNConfig.from_dict(cfg)
        self.visual = visual  # open_clip VisionTransformer, shared by frames and images (Eqs. 1-2)
        self.cfg, self.margin = cfg, margin
        dim = visual.output_dim
        self.lam = cfg.lambda_text
        self.te = self.uses_text = bool(cfg.te)
        if self.te and not text_dim:
            raise ValueError("sgmn.te needs text features (the text_features step): text_dim is unset")
        self.filters = nn.ModuleDict()
        if self.te:  # Eq. 4's filter layer; the official code has one per text
            names = ["shared"] if cfg.text_filter == "shared" else ["asr", "title"]
            self.filters.update({k: nn.Linear(text_dim, text_dim) for k in names})
        # GCI and SMF only shape training (their losses, weighted by beta1 and beta2 in Eq. 22):
        # at weight 0 they are not built, which is the same model at less cost
        self.tmc = TMC(dim, cfg.heads, cfg.tmc_layers, num_frames) if cfg.tmc else None
        self.gci = GCI(dim, num_frames, batch_size, cfg.gci_heads, cfg.gci_graphs, cfg.connect_ratio,
                       cfg.intra_connection, cfg.relevance_profile, cfg.batch_linear,
                       cfg.gci_attention, cfg.connect_count,
                       cfg.cross_connection) if cfg.gci and cfg.beta1 > 0 else None
        tokens = 1 + (visual.grid_size[0] * visual.grid_size[1])
        official = cfg.init == "official"
        if official and cfg.smf and cfg.beta2 > 0 and clip_text is None:
            raise ValueError("sgmn.init official copies CLIP's text layer 0 into SMF: pass clip_text")
        self.smf = SMF(dim, text_dim if self.te else None, cfg.heads, cfg.smf_k,
                       cfg.smf_k_counts_positive, cfg.smf_symmetric, cfg.smf_pool,
                       cfg.smf_temperature, max_tokens=tokens, normalize=cfg.smf_normalize,
                       fusion_dropout=cfg.smf_fusion_dropout,
                       self_heads=clip_text["block"].attn.num_heads if official and clip_text else None,
                       ) if cfg.smf and cfg.beta2 > 0 else None
        visual.output_tokens = self.smf is not None
        if official:
            self._official_init(clip_text)

    @classmethod
    def from_config(cls, config: dict, clip: nn.Module, text_dim: int | None = None) -> "SGMN":
        """SGMN of a resolved run config, sharing `clip`'s visual tower (and, for `init: official`,
        copying its text layer 0 into SMF)."""
        m, t = config["model"], config["train"]
        clip_text = {"block": clip.transformer.resblocks[0], "positions": clip.positional_embedding} \
            if hasattr(clip, "transformer") else None
        return cls(clip.visual, config["sgmn"], m["num_frames"], t["batch_size"], t["margin"],
                   text_dim=text_dim if config["sgmn"]["te"] else None, clip_text=clip_text)

    def _official_init(self, clip_text: dict | None) -> None:
        """N(0, 0.02) for every layer SGMN adds (not CLIP's), then CLIP's text layer 0 and
        positions into SMF's cross-encoder, as the official code loads them after init_weights."""
        for name, child in self.named_children():
            if name != "visual":
                official_init_(child)
        if self.gci is not None:   # the batch linear layer starts at R = A whatever the init
            for bll in (self.gci.bll_v2i, self.gci.bll_i2v) if self.gci.graphs["cross"] else ():
                if bll is not None:
                    nn.init.zeros_(bll.fc2.weight)
                    nn.init.zeros_(bll.fc2.bias)
        if self.smf is not None:
            self.smf.scorer.copy_clip_text_layer(clip_text["block"], clip_text["positions"])

    # ---- encoders (GRA, Eqs. 1-4) ----
    def _visual(self, x: torch.Tensor):
        """(n, 3, H, W) -> projected CLS (n, D) and, for SMF, all projected tokens (n, T, D)."""
        return encode_tokens(self.visual, x)

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor):
        """Only real frames are encoded; padding is zeros. -> (B, L, D), (B, L, T, D) or None."""
        b, l = mask.shape
        real = mask.flatten().nonzero().squeeze(1)          # index_select / index_copy: fast backward
        cls, tok = self._visual(frames.flatten(0, 1).index_select(0, real))
        out = cls.new_zeros(b * l, cls.shape[-1]).index_copy(0, real, cls)
        tokens = None
        if tok is not None:
            tokens = tok.new_zeros(b * l, *tok.shape[1:]).index_copy(0, real, tok)
            tokens = tokens.view(b, l, *tok.shape[1:])
        return out.view(b, l, -1), tokens

    def video_global(self, cls: torch.Tensor, mask: torch.Tensor):
        """TMC (Eq. 3), then per-frame normalised (B, L, D) and the pooled clip embedding (B, D)."""
        return self.pool_frames(self.tmc(cls, mask) if self.tmc is not None else cls, mask)

    @staticmethod
    def pool_frames(x: torch.Tensor, mask: torch.Tensor):
        """Per-frame normalised embeddings (padding zeroed) and their normalised masked mean."""
        w = mask.unsqueeze(-1).to(x.dtype)
        frames = F.normalize(x, dim=-1) * w
        pooled = frames.sum(1) / w.sum(1).clamp(min=1)
        return frames, F.normalize(pooled, dim=-1)

    def encode_text(self, feats: torch.Tensor, present: torch.Tensor, kind: str) -> torch.Tensor:
        """Filtered, normalised text (Eq. 4); a missing text is a zero vector (no 0/0)."""
        layer = self.filters["shared"] if "shared" in self.filters else self.filters[kind]
        return F.normalize(layer(feats), dim=-1) * present.unsqueeze(-1).to(feats.dtype)

    def _with_text(self, visual: torch.Tensor, text) -> torch.Tensor:
        if not self.te:
            return visual
        if text is None:
            raise ValueError("this model uses text (sgmn.te): pass the text features")
        return torch.cat([visual, math.sqrt(self.lam) * text], -1)

    def encode_video(self, frames, mask, text=None, present=None) -> torch.Tensor:
        mask, frames = compact_frames(mask, frames)
        _, v = self.video_global(self.encode_frames(frames, mask)[0], mask)
        a = self.encode_text(text, present, "asr") if self.te and text is not None else None
        return self._with_text(v, a)

    def embed_image(self, images, text=None, present=None) -> torch.Tensor:
        i = F.normalize(self._visual(images)[0], dim=-1)
        t = self.encode_text(text, present, "title") if self.te and text is not None else None
        return self._with_text(i, t)

    def encode_clip(self, batch: dict) -> torch.Tensor:
        """[V, sqrt(lambda) A] of a clip batch: with the dot product of encode_image's output this
        is Eq. 23's S = cos(V, I) + lambda cos(A, T), the base class's score."""
        return self.encode_video(batch["frames"], batch["frame_mask"], batch.get("asr_feat"),
                                 batch.get("asr_present"))

    def encode_image(self, batch: dict) -> torch.Tensor:
        """[I, sqrt(lambda) T] of an image batch (Eq. 23)."""
        return self.embed_image(batch["image"], batch.get("title_feat"), batch.get("title_present"))

    # ---- training (Eqs. 5, 15-22) ----
    def triplet(self, sim: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.triplet == "distance_weighted":
            dim = self.visual.output_dim if self.cfg.dw_dim == "embedding" else int(self.cfg.dw_dim)
            return distance_weighted_triplet(sim, labels, self.margin, dim=dim,
                                             reduction=self.cfg.triplet_reduction)
        return vse_triplet(sim, labels, self.margin, self.hardest_negatives, self.cfg.triplet_reduction)

    def text_loss(self, a, t, labels, present) -> torch.Tensor:
        sim = a @ t.T
        if self.cfg.text_loss == "infonce":
            return text_infonce(sim, labels, present, self.cfg.text_temperature)
        return self.lam * masked_vse_triplet(sim, labels, present, self.margin, self.hardest_negatives,
                                             self.cfg.triplet_reduction)

    def loss(self, batch: dict) -> dict:
        """Eq. 22's terms on a training batch: similarity (Eq. 5), text, graph and KL (Eqs. 15-16),
        matching (Eq. 21)."""
        mask, frames = compact_frames(batch["frame_mask"], batch["frames"])
        cls_f, tok_f = self.encode_frames(frames, mask)
        cls_i, tok_i = self._visual(batch["image"])
        vf, v = self.video_global(cls_f, mask)
        i = F.normalize(cls_i, dim=-1)
        vf, v, i, mask = gather(vf), gather(v), gather(i), gather(mask)
        labels = gather(batch["product"])
        out = {"similarity_loss": self.triplet(v @ i.T, labels)}

        fused = (v @ i.T).detach()
        a = t = a_present = t_present = None
        if self.te:
            a_present, t_present = gather(batch["asr_present"]), gather(batch["title_present"])
            a = gather(self.encode_text(batch["asr_feat"], batch["asr_present"], "asr"))
            t = gather(self.encode_text(batch["title_feat"], batch["title_present"], "title"))
            out["text_loss"] = self.text_loss(a, t, labels, a_present & t_present)
            fused = fused + self.lam * (a @ t.T).detach()                 # Eq. 17's M_sim

        if self.gci is not None:
            vg, ig, cross = self.gci(v, i, vf, mask)
            beta1 = self.cfg.beta1
            graph = self.triplet(vg @ ig.T, labels) + self.triplet(v @ ig.T, labels) \
                + self.triplet(vg @ i.T, labels)                            # Eq. 15
            out["graph_loss"] = beta1 * graph
            if cross is not None:                                         # Eq. 16
                target = self._kl_target(v.detach(), i.detach(), vf.detach(), mask)
                kl = self._kl(*cross["v2i"], target) + self._kl(*cross["i2v"], target.T)
                out["kl_loss"] = beta1 * self.cfg.kl_weight * kl

        if self.smf is not None:
            b, l, tk, d = tok_f.shape
            vid_tok = gather(tok_f.reshape(b, l * tk, d))
            vid_mask = mask.repeat_interleave(tk, dim=1)                   # (N, L*T)
            out["matching_loss"] = self.cfg.beta2 * self.smf(
                fused, labels, gather(tok_i), vid_tok, vid_mask, t, a, t_present, a_present)
        return out

    def _kl_target(self, v: torch.Tensor, i: torch.Tensor, frames: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
        """H of Eq. 16 (Nv, Ni): frame_similarity is the frame-level S_V S_I^T averaged over
        each clip's real frames (frames are unit-norm and zero at padding)."""
        if self.cfg.kl_target == "exp_neg_distance":
            return torch.exp(-torch.cdist(v, i))
        if self.cfg.kl_target == "frame_similarity":
            return torch.einsum("vld,id->vi", frames, i) / mask.sum(1, keepdim=True).clamp(min=1)
        return v @ i.T

    def _kl(self, relevance: torch.Tensor, edges: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One direction of Eq. 16: the graph's distribution (on its edges, or the relation over
        every pair) against H's, in the configured direction."""
        on_graph = edges if self.cfg.kl_graph == "graph" else None
        return kl_rows(relevance, target, self.cfg.kl_reference, on_graph)


def gra_only(visual: nn.Module, margin: float = 0.2, num_frames: int = 8, batch_size: int = 32) -> SGMN:
    """Table 7 row A: SGMN with every module switched off (shared encoder, mean pooling, triplet)."""
    from sgmn.config import validate
    from sgmn.fidelity import apply_fidelity
    off = {"te": False, "tmc": False, "gci": False, "smf": False}
    cfg = apply_fidelity(validate({"sgmn": off}))["sgmn"]
    return SGMN(visual, cfg, num_frames, batch_size, margin)
