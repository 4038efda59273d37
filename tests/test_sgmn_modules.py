"""SGMN's modules one by one: shapes and masks, that every switch changes the computation it
names, gradients (to what trains, never to a text tower), the two fidelity modes, and that the
official code's bugs (sgmn.fidelity.BUG_FIXES) are absent.

Everything runs on a random `lpr-tiny-clip` visual tower (64 px, D = 128) with B = 8, L = 4, in
eval mode (no dropout) and with torch seeded before every random step, so each comparison is exact.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sgmn.config import load_schema, validate
from sgmn.fidelity import DIFFERENCES, apply_fidelity
from sgmn.models.gci import GCI, BatchLinear, frame_profile, topk_connections
from sgmn.models.sgmn import SGMN
from sgmn.models.smf import SMF, PairScorer, TextFusion, hard_candidates
from sgmn.models.tmc import TMC, compact_frames
from sgmn.models.losses import (distance_weighted_triplet, kl_rows, masked_vse_triplet, text_infonce,
                               vse_triplet)

torch.set_num_threads(1)

B, L, D, DT = 8, 4, 128, 16
PRODUCTS = torch.tensor([0, 1, 2, 3, 4, 5, 0, 6])          # clips 0 and 6 show the same product
MODULES_OFF = {"te": False, "tmc": False, "gci": False, "smf": False}


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def clip_model():
    from sgmn.models.clip import create_clip
    torch.manual_seed(0)
    return create_clip("lpr-tiny-clip")


@pytest.fixture(scope="module")
def visual(clip_model):
    return clip_model.visual


def sgmn_cfg(fidelity: str = "paper", **sgmn) -> dict:
    return apply_fidelity(validate({"fidelity": fidelity, "sgmn": sgmn}))["sgmn"]


_TEXT_TOWER = {}


def clip_text() -> dict:
    """Layer 0 and positions of a seeded tiny CLIP's text tower (what `init: official` copies)."""
    if not _TEXT_TOWER:
        from sgmn.models.clip import create_clip
        torch.manual_seed(1)
        model = create_clip("lpr-tiny-clip")
        _TEXT_TOWER.update(block=model.transformer.resblocks[0], positions=model.positional_embedding)
    return _TEXT_TOWER


def build(visual, fidelity: str = "paper", seed: int = 0, share_visual: bool = False, **sgmn) -> SGMN:
    torch.manual_seed(seed)
    vis = visual if share_visual else copy.deepcopy(visual)
    return SGMN(vis, sgmn_cfg(fidelity, **sgmn), num_frames=L, batch_size=B, margin=0.2, text_dim=DT,
                clip_text=clip_text())


def frame_mask() -> torch.Tensor:
    m = torch.ones(B, L, dtype=torch.bool)
    m[1, 2:] = False           # 2 real frames
    m[3, 1:] = False           # 1 real frame
    m[4, 0] = False            # a gap at the front (frame masking): compacted by the model
    m[5, 1] = False            # a gap in the middle
    return m


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randn(B, L, 3, 64, 64, generator=g),
        "frame_mask": frame_mask(),
        "image": torch.randn(B, 3, 64, 64, generator=g),
        "product": PRODUCTS.clone(),
        "asr_feat": torch.randn(B, DT, generator=g),
        "title_feat": torch.randn(B, DT, generator=g),
        "asr_present": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
        "title_present": torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
    }


def run(model: SGMN, batch: dict, seed: int = 0) -> dict:
    torch.manual_seed(seed)       # distance-weighted sampling draws negatives
    return model(batch)


def compact_mask(lengths) -> torch.Tensor:
    return torch.arange(L).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# ---------------------------------------------------------------- TMC
def test_compact_frames_moves_real_frames_first_keeping_order():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True],
                         [True, True, True, True], [False, True, False, False]])
    x = torch.arange(4 * L).view(4, L, 1, 1).expand(4, L, 2, 3).float()
    y = torch.arange(4 * L).view(4, L)
    m, xc, yc = compact_frames(mask, x, y)
    assert m.tolist() == [[True, True, False, False], [True, True, False, False],
                          [True, True, True, True], [True, False, False, False]]
    assert yc[:, :2].tolist()[:2] == [[0, 2], [6, 7]]
    assert yc[2].tolist() == [8, 9, 10, 11] and yc[3, 0] == 13
    assert torch.equal(xc[..., 0, 0], yc.float()) and xc.shape == x.shape
    for row in range(4):                    # a permutation of the row: nothing lost or duplicated
        assert sorted(yc[row].tolist()) == y[row].tolist()


def _tmc():
    torch.manual_seed(0)
    return TMC(D, heads=8, layers=2, max_frames=L).eval()


def test_tmc_shape_and_padding_independence():
    tmc = _tmc()
    mask = compact_mask([4, 2, 1, 3, 4, 2])
    x = torch.randn(6, L, D)
    out = tmc(x, mask)
    assert out.shape == (6, L, D) and torch.isfinite(out).all()
    x2 = x.clone()
    x2[~mask] = 10 * torch.randn(int((~mask).sum()), D)    # other content in the padded frames
    out2 = tmc(x2, mask)
    assert torch.allclose(out[mask], out2[mask], atol=1e-5)
    assert not torch.allclose(out, tmc(x + 0.5 * torch.randn_like(x), mask))   # real frames matter
    assert torch.equal(tmc(x[:, :1], mask[:, :1]), x[:, :1])                     # L = 1: identity


def test_tmc_uses_motion_between_frames():
    tmc = _tmc()
    mask = compact_mask([4, 4])
    x = torch.randn(2, L, D)
    shuffled = x[:, [0, 2, 1, 3]]          # same frames, other order: other differences
    out, out_s = tmc(x, mask), tmc(shuffled, mask)
    assert not torch.allclose(out[:, 0], out_s[:, 0], atol=1e-4)


def test_tmc_masks_are_per_sample():
    """Official bug absent: a sample's output is the same batched with other masks as alone
    (the code's head-major repeat gave sample b the mask of sample (b*H + h) mod B)."""
    tmc = _tmc()
    mask = compact_mask([4, 1, 2, 3, 4, 2, 1, 3])
    x = torch.randn(B, L, D)
    batched = tmc(x, mask)
    for b in range(B):
        alone = tmc(x[b:b + 1], mask[b:b + 1])[0]
        assert torch.allclose(batched[b][mask[b]], alone[mask[b]], atol=1e-5), b


def test_tmc_one_frame_clip_has_finite_gradients():
    tmc = _tmc().train()
    x = torch.randn(3, L, D, requires_grad=True)
    tmc(x, compact_mask([1, 4, 2])).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in tmc.parameters() if p.grad is not None)


# ---------------------------------------------------------------- GCI
def test_topk_connections_keeps_k_per_row_with_ties():
    sim = torch.tensor([[3.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    assert topk_connections(sim, 1).tolist() == [[True, False, True, False], [False, False, False, True],
                                                 [True] * 4]
    assert topk_connections(sim, 2).tolist() == [[True, False, True, False], [False, False, True, True],
                                                 [True] * 4]
    assert topk_connections(sim, 99).all()                      # k is clipped to the row
    rand = torch.randn(7, 9)
    for k in (1, 3, 5):
        keep = topk_connections(rand, k)
        assert (keep.sum(1) >= k).all()
        assert (keep.sum(1) == k).all()                         # no ties in random data
        kth = rand.sort(1, descending=True).values[:, k - 1:k]
        assert torch.equal(keep, rand >= kth)


def _globals(n: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = F.normalize(torch.randn(n, L, D, generator=g), dim=-1)
    mask = compact_mask(([4, 2, 1, 3] * n)[:n])
    frames = frames * mask.unsqueeze(-1)
    v = F.normalize((frames.sum(1) / mask.sum(1, keepdim=True)), dim=-1)
    i = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    return v, i, frames, mask


def _gci(seed: int = 0, **kw) -> GCI:
    torch.manual_seed(seed)
    return GCI(D, L, B, heads=8, **kw).eval()


@pytest.mark.parametrize("profile", ["raw", "l2"])
def test_gci_relevance_shapes_and_i2v_not_degenerate(profile):
    v, i, frames, mask = _globals()
    gci = _gci(relevance_profile=profile, batch_linear=True)
    r_v2i, r_i2v, h_mean = gci.relevance(v, i, frames, mask)
    assert r_v2i.shape == (B, B) and r_i2v.shape == (B, B) and h_mean.shape == (B, B)
    # official bug absent: its I->V relevance is one constant; here every row varies over the clips
    assert (r_i2v.std(dim=1) > 1e-4).all()
    assert (r_v2i.std(dim=1) > 1e-4).all()


def test_gci_relevance_is_eq10_of_the_frame_profile():
    """R_V2I[v, i] and R_I2V[i, v] come from the same profile cos(frames of v, image i) over the
    real frames of v: its mean plus an MLP of its values sorted (padding last, as 0)."""
    v, i, frames, mask = _globals()
    gci = _gci(batch_linear=False)
    r_v2i, r_i2v, h_mean = gci.relevance(v, i, frames, mask)
    for vv, ii in [(0, 3), (1, 5), (2, 2), (3, 7)]:              # clips with 4, 2, 1, 3 real frames
        n = int(mask[vv].sum())
        prof = frames[vv, :n] @ i[ii]
        ranked = torch.cat([prof.sort(descending=True).values, torch.zeros(L - n)])
        want_v2i = prof.mean() + gci.v2i_rel.mlp(ranked).squeeze()
        want_i2v = prof.mean() + gci.i2v_rel.mlp(ranked).squeeze()
        assert torch.allclose(r_v2i[vv, ii], want_v2i, atol=1e-5)
        assert torch.allclose(r_i2v[ii, vv], want_i2v, atol=1e-5)
        assert torch.allclose(h_mean[vv, ii], prof.mean(), atol=1e-6)   # Eq. 8's Mean(H)
    # the official l2 profile: leaky-ReLU, L2 over the real frames (shape kept, magnitude not)
    h = frame_profile(frames, mask, i, "l2")
    assert torch.allclose(h.norm(dim=-1), torch.ones(B, B), atol=1e-5)
    assert torch.equal(h[2, :, 1:], torch.zeros(B, L - 1))      # padding stays 0 (clip 2: one frame)


def test_gci_batch_linear_switch():
    v, i, frames, mask = _globals()
    with_bll, without = _gci(batch_linear=True), _gci(batch_linear=False)
    assert any("bll" in n for n, _ in with_bll.named_parameters())
    assert not any("bll" in n for n, _ in without.named_parameters())
    assert without.bll_v2i is None and without.bll_i2v is None
    # zero-initialised residual: at init R = A
    without.load_state_dict(with_bll.state_dict(), strict=False)
    for a, b in zip(with_bll.relevance(v, i, frames, mask)[:2], without.relevance(v, i, frames, mask)[:2]):
        assert torch.allclose(a, b)
    torch.nn.init.normal_(with_bll.bll_v2i.fc2.weight, std=0.1)
    assert not torch.allclose(with_bll.relevance(v, i, frames, mask)[0], without.relevance(v, i, frames, mask)[0])
    with pytest.raises(ValueError, match="batch"):
        BatchLinear(B)(torch.randn(B, B - 1))


def test_gci_without_graphs_is_plain_attention_and_has_no_kl(visual):
    v, i, frames, mask = _globals()
    off = {"i2i": False, "v2v": False, "cross": False}
    gci = _gci(graphs=off)
    assert gci.masks(v, i, gci.connections(v, i), None, None) == {}
    assert not hasattr(gci, "v2i_rel")                          # no relevance is built
    vg, ig, cross = gci(v, i, frames, mask)
    assert cross is None
    vq, iq = v.unsqueeze(0), i.unsqueeze(0)                      # plain, unmasked attention
    vm = gci.norm_v(vq + gci.cross_v(vq, iq, iq, need_weights=False)[0])
    im = gci.norm_i(iq + gci.cross_i(iq, vq, vq, need_weights=False)[0])
    assert torch.allclose(vg, F.normalize(gci.intra_v(vm).squeeze(0), dim=-1), atol=1e-5)
    assert torch.allclose(ig, F.normalize(gci.intra_i(im).squeeze(0), dim=-1), atol=1e-5)
    model = build(visual, gci_graphs=off, smf=False).eval()
    out = run(model, make_batch())
    assert "graph_loss" in out and "kl_loss" not in out


@pytest.mark.parametrize("attention", ["two_stage", "joint"])
def test_gci_each_graph_switch_changes_its_output(attention):
    v, i, frames, mask = _globals()
    full = _gci(attention=attention)
    vg, ig, _ = full(v, i, frames, mask)
    for graph in ("v2v", "i2i", "cross"):
        other = _gci(attention=attention, graphs={graph: False})
        other.load_state_dict(full.state_dict(), strict=False)      # same attention weights
        vg2, ig2, _ = other(v, i, frames, mask)
        if attention == "joint":
            assert not torch.allclose(torch.cat([vg, ig]), torch.cat([vg2, ig2]), atol=1e-5), graph
            continue
        # two-stage (Fig. 4): V2V guides only V's intra attention, I2I only I's, the cross graphs both
        assert torch.allclose(vg, vg2, atol=1e-6) == (graph == "i2i"), graph
        assert torch.allclose(ig, ig2, atol=1e-6) == (graph == "v2v"), graph


def test_gci_intra_connection_selects_other_edges():
    """Crafted: v_j = e_j, i_j = e_{j+1}; with K = 1, V.V^T keeps the diagonal and V.I^T keeps
    image j-1 (the official cross-modal V2V/I2I edges)."""
    n = 4
    eye = torch.eye(n, D)
    v, i = eye, eye[[(j + 1) % n for j in range(n)]]    # v_j = e_j, i_j = e_{j+1}
    masks = {}
    for how in ("intra", "cross"):
        torch.manual_seed(0)
        gci = GCI(D, L, n, 8, {"cross": False}, connect_ratio=0.25, intra_connection=how)
        g = gci.masks(v, i, gci.connections(v, i), None, None)
        masks[how] = {k: torch.isfinite(m) for k, m in g.items()}
    diag = torch.eye(n, dtype=torch.bool)
    assert torch.equal(masks["intra"]["v2v"], diag) and torch.equal(masks["intra"]["i2i"], diag)
    assert torch.equal(masks["cross"]["v2v"], diag.roll(-1, dims=1))     # v_j -> node j-1
    assert torch.equal(masks["cross"]["i2i"], diag.roll(1, dims=1))      # i_m -> node m+1
    # the connected edges carry the intra relevance exp(-||x_a - x_b||)
    torch.manual_seed(0)
    gci = GCI(D, L, n, 8, {"cross": False}, connect_ratio=0.25)
    g = gci.masks(v, i, gci.connections(v, i), None, None)
    assert torch.allclose(g["v2v"][diag], torch.ones(n))


@pytest.mark.parametrize("attention", ["two_stage", "joint"])
def test_gci_attention_modes_give_normalised_outputs(attention):
    v, i, frames, mask = _globals()
    gci = _gci(attention=attention)
    assert hasattr(gci, "joint") == (attention == "joint")
    assert hasattr(gci, "cross_v") == (attention == "two_stage")
    vg, ig, _ = gci(v, i, frames, mask)
    for x in (vg, ig):
        assert x.shape == (B, D) and torch.isfinite(x).all()
        assert torch.allclose(x.norm(dim=-1), torch.ones(B), atol=1e-5)
    with pytest.raises(ValueError, match="attention"):
        GCI(D, L, B, attention="other")


# ---------------------------------------------------------------- SMF
def test_hard_candidates_positive_first_and_other_products_only():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 4, 5])
    sim = torch.randn(B, B)
    sim[labels.unsqueeze(0) == labels.unsqueeze(1)] += 5      # same product scores highest
    idx, valid = hard_candidates(sim, labels, 3)
    assert idx.shape == (B, 4) and valid.all()
    assert torch.equal(idx[:, 0], torch.arange(B))
    for r in range(B):
        negs = idx[r, 1:]
        assert (labels[negs] != labels[r]).all()
        others = [c for c in range(B) if labels[c] != labels[r]]
        best = sorted(others, key=lambda c: -sim[r, c].item())[:3]
        assert negs.tolist() == best
    # fewer negatives than asked: the missing slots are flagged invalid, never a same product
    labels = torch.tensor([0, 0, 0, 1])
    idx, valid = hard_candidates(torch.randn(4, 4), labels, 3)
    assert valid[:, 0].all()
    assert valid[0].tolist() == [True, True, False, False] and valid[3].tolist() == [True] * 4
    assert (labels[idx[:, 1:]][valid[:, 1:]] != labels.unsqueeze(1).expand(4, 3)[valid[:, 1:]]).all()


class FakeScorer(torch.nn.Module):
    """Stands in for the pair scorer: logit of (image a, clip b) = table[a, b]; records the pairs."""

    def __init__(self, table):
        super().__init__()
        self.table, self.calls = table, []

    def prepare(self, img_tok, vid_tok):
        return None

    def forward(self, state, img_idx, vid_idx, vid_mask):
        self.calls.append((img_idx.clone(), vid_idx.clone()))
        return self.table[img_idx, vid_idx]


def _smf(table, **kw) -> SMF:
    torch.manual_seed(0)
    smf = SMF(D, None, 8, max_tokens=17, **kw)
    smf.scorer = FakeScorer(table)
    return smf


def _smf_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    sim = torch.randn(B, B, generator=g)
    return sim, PRODUCTS, torch.randn(B, 3, D, generator=g), torch.randn(B, 6, D, generator=g), \
        torch.ones(B, 6, dtype=torch.bool)


@pytest.mark.parametrize("symmetric", [True, False])
def test_smf_targets_the_positive_in_every_row(symmetric):
    """Official bug absent: torch.diag of the (N, 4) logits used rows 0-3 only, and rows 1-3
    targeted a hard negative. Here a scorer that ranks every positive first has loss ~0, and
    one row ranking a negative first is enough to give a loss, whichever the row."""
    sim, labels, img_tok, vid_tok, vid_mask = _smf_inputs()
    good = torch.eye(B)                                   # positive pair 1, every other pair 0
    loss = _smf(good, symmetric=symmetric)(sim, labels, img_tok, vid_tok, vid_mask)
    assert loss.item() < 1e-6                             # margin 1 / temperature 0.01 = 100
    for row in range(B):
        bad = good.clone()
        bad[row, row] = -1.0                              # image `row` ranks its clip last
        loss = _smf(bad, symmetric=symmetric)(sim, labels, img_tok, vid_tok, vid_mask)
        assert loss.item() > 100 / B / 2 * 0.9, row       # one row of N: >= 100/N (/2 if symmetric)


def _ce_col0(logits):
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


def test_smf_symmetric_and_one_way_match_a_hand_computation():
    sim, labels, img_tok, vid_tok, vid_mask = _smf_inputs()
    table = torch.randn(B, B) * 0.05                      # logit / 0.01: a soft distribution
    rows = torch.arange(B).unsqueeze(1)
    c_i2v, _ = hard_candidates(sim.T, labels, 4)         # image -> its clip + 4 clips
    c_v2i, _ = hard_candidates(sim, labels, 4)           # clip -> its image + 4 images
    l_i2v = _ce_col0(table[rows.expand_as(c_i2v), c_i2v] / 0.01)
    l_v2i = _ce_col0(table[c_v2i, rows.expand_as(c_v2i)] / 0.01)
    one_way = _smf(table, symmetric=False)(sim, labels, img_tok, vid_tok, vid_mask)
    sym = _smf(table, symmetric=True)(sim, labels, img_tok, vid_tok, vid_mask)
    assert torch.allclose(one_way, l_i2v, atol=1e-5)
    assert torch.allclose(sym, (l_i2v + l_v2i) / 2, atol=1e-5)
    assert not torch.allclose(one_way, sym)


@pytest.mark.parametrize("counts_positive, candidates", [(True, 4), (False, 5)])
def test_smf_k_counts_positive(counts_positive, candidates):
    sim, labels, img_tok, vid_tok, vid_mask = _smf_inputs()
    smf = _smf(torch.eye(B), k=4, k_counts_positive=counts_positive, symmetric=False)
    smf(sim, labels, img_tok, vid_tok, vid_mask)
    img_idx, vid_idx = smf.scorer.calls[0]
    assert len(smf.scorer.calls) == 1 and img_idx.numel() == B * candidates
    # one way: every pair is distinct, scored in (image, clip) order, the positive among them
    assert torch.equal(img_idx.view(B, candidates), torch.arange(B).unsqueeze(1).expand(B, candidates))
    assert (vid_idx.view(B, candidates) == torch.arange(B).unsqueeze(1)).any(1).all()


def test_smf_scores_a_pair_both_directions_ask_for_once():
    """Symmetric SMF: the positives (and pairs hard for both their image and their clip) are
    requested by both directions but scored once; the loss is unchanged (checked by hand above)."""
    sim, labels, img_tok, vid_tok, vid_mask = _smf_inputs()
    smf = _smf(torch.randn(B, B), k=4, symmetric=True)
    smf(sim, labels, img_tok, vid_tok, vid_mask)
    (img_idx, vid_idx), = smf.scorer.calls
    c_i2v, _ = hard_candidates(sim.T, labels, 4)
    c_v2i, _ = hard_candidates(sim, labels, 4)
    rows = torch.arange(B).unsqueeze(1).expand_as(c_i2v)
    asked = set(zip(rows.flatten().tolist(), c_i2v.flatten().tolist())) | \
        set(zip(c_v2i.flatten().tolist(), rows.flatten().tolist()))
    scored = list(zip(img_idx.tolist(), vid_idx.tolist()))
    assert len(scored) == len(set(scored)) == len(asked) <= 2 * B * 5 - B
    assert set(scored) == asked


def test_text_fusion_without_text_adds_nothing():
    torch.manual_seed(0)
    fusion = TextFusion(D, DT).eval()
    tokens, text = torch.randn(B, 5, D), torch.randn(B, DT)
    present = torch.tensor([True, False] * (B // 2))
    out = fusion(tokens, text, present)
    out_other = fusion(tokens, torch.randn(B, DT), present)
    x = fusion.norm1(tokens)                                  # what a missing text leaves
    bare = fusion.norm2(x + fusion.ffn(x))
    assert torch.allclose(out[~present], bare[~present], atol=1e-5)
    assert torch.allclose(out[~present], out_other[~present], atol=1e-6)
    assert not torch.allclose(out[present], bare[present], atol=1e-3)     # present text is fused


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_pair_scorer_ignores_padded_frame_tokens(pool):
    torch.manual_seed(0)
    smf = SMF(D, None, 8, pool=pool, max_tokens=17).eval()
    img_tok, vid_tok = torch.randn(B, 17, D), torch.randn(B, 2 * 17, D)
    vid_mask = torch.ones(B, 2 * 17, dtype=torch.bool)
    vid_mask[::2, 17:] = False                                  # clips with one real frame
    idx = torch.arange(B)
    logits = smf.scorer(smf.scorer.prepare(img_tok, vid_tok), idx, idx.roll(1), vid_mask)
    vid_tok2 = vid_tok.clone()
    vid_tok2[~vid_mask] = torch.randn(int((~vid_mask).sum()), D)
    logits2 = smf.scorer(smf.scorer.prepare(img_tok, vid_tok2), idx, idx.roll(1), vid_mask)
    assert logits.shape == (B,) and torch.allclose(logits, logits2, atol=1e-5)
    smf.scorer.pool = "cls" if pool == "avg" else "avg"
    assert not torch.allclose(logits, smf.scorer(smf.scorer.prepare(img_tok, vid_tok), idx, idx.roll(1), vid_mask))


def _per_pair_attention(q, k, v, img_idx, vid_idx, vid_mask):
    """Eq. 20 pair by pair, by hand: softmax over the clip's real tokens of q_i k_j^T / sqrt(d)."""
    out = []
    for i, j in zip(img_idx.tolist(), vid_idx.tolist()):
        logits = q[i] @ k[j].transpose(-1, -2) / q.shape[-1] ** 0.5            # (H, Tq, Tv)
        logits = logits.masked_fill(~vid_mask[j], float("-inf"))
        out.append((logits.softmax(-1) @ v[j]).transpose(0, 1).flatten(1))     # (Tq, H*dh)
    return torch.stack(out)


def test_pair_cross_attention_grouped_by_clip_equals_pair_by_pair():
    """The clip-grouped attention (queries of a clip's images stacked) gives each pair exactly
    its own attention, and the same gradients, with clips of unequal pair counts and padding."""
    torch.manual_seed(0)
    n, h, tq, tv, dh = 5, 4, 3, 6, 8
    q, k, v = (torch.randn(n, h, t, dh, requires_grad=True) for t in (tq, tv, tv))
    vid_mask = torch.ones(n, tv, dtype=torch.bool)
    vid_mask[1, 3:] = False
    vid_mask[4, 1:] = False
    img_idx = torch.tensor([0, 3, 1, 1, 4, 2, 0, 2])
    vid_idx = torch.tensor([2, 2, 0, 2, 1, 4, 1, 2])            # clip 2 has 4 pairs, clip 3 none
    got = PairScorer.cross_attend(q, k, v, img_idx, vid_idx, vid_mask)
    want = _per_pair_attention(q, k, v, img_idx, vid_idx, vid_mask)
    assert got.shape == (8, tq, h * dh) and torch.allclose(got, want, atol=1e-6)
    w = torch.randn_like(want)
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5)
    assert g_got[1][3].abs().sum() == 0                           # an unpaired clip gets no gradient


# ---------------------------------------------------------------- losses
def test_distance_weighted_triplet_is_a_sum_over_anchors():
    """One valid negative per anchor (the others lie beyond the 1.7 cutoff): the draw is
    deterministic and the loss is the hinge summed (not averaged) over both directions."""
    n = 5
    labels = torch.arange(n)
    sim = torch.full((n, n), -0.9)                 # d = sqrt(3.8) > 1.7: never drawn
    sim.fill_diagonal_(0.3)
    neg = [(r + 1) % n for r in range(n)]         # row r's only negative: column r+1
    vals = torch.tensor([0.25, 0.0, 0.2, -0.3, 0.1])
    for r in range(n):
        sim[r, neg[r]] = vals[r]
    # columns: column c's only in-cutoff row is r = c-1, value vals[c-1]
    want = (0.2 + vals - 0.3).clamp(min=0).sum() * 2
    got = distance_weighted_triplet(sim, labels, 0.2, dim=D)
    assert torch.allclose(got, want, atol=1e-6)
    assert got.item() > (0.2 + vals - 0.3).clamp(min=0).mean().item() * 2 + 1e-3   # not a mean


def test_distance_weighted_triplet_never_draws_the_positive_or_its_product():
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    sim = torch.full((6, 6), -0.3)                # other products: hinge 0.2 - 0.3 - 0.5 < 0
    sim[same] = 0.99                              # a same-product draw would give a big hinge
    sim.fill_diagonal_(0.5)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        assert distance_weighted_triplet(sim, labels, 0.2, dim=D, generator=g).item() == 0.0


def test_distance_weighted_triplet_without_negatives_is_zero():
    sim = torch.randn(4, 4, requires_grad=True)
    loss = distance_weighted_triplet(sim, torch.zeros(4, dtype=torch.long), 0.2, dim=D)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(sim.grad).all()
    far = torch.full((4, 4), -0.95)               # every negative beyond the cutoff
    far.fill_diagonal_(0.0)
    assert distance_weighted_triplet(far, torch.arange(4), 0.2, dim=D).item() == 0.0


def test_vse_triplet_hardest_other_product():
    labels = torch.tensor([0, 1, 0])
    sim = torch.tensor([[0.5, 0.4, 0.9], [0.1, 0.65, 0.2], [0.8, 0.3, 0.7]])
    # v0: negatives {1} (clip 2 is the same product): 0.2+0.4-0.5 = 0.1; v1: max(0.1, 0.2) ->
    # 0.2+0.2-0.65 < 0; v2: {1}: 0.2+0.3-0.7 < 0; i0: {1}: 0.2+0.1-0.5 < 0;
    # i1: max(0.4, 0.3): 0.2+0.4-0.65 < 0; i2: {1}: 0.2+0.2-0.7 < 0
    assert torch.allclose(vse_triplet(sim, labels, 0.2), torch.tensor(0.1))           # summed (VSE++)
    assert torch.allclose(vse_triplet(sim, labels, 0.2, reduction="mean"), torch.tensor(0.1 / 3))


@pytest.mark.parametrize("loss_fn", ["infonce", "triplet"])
def test_text_losses_ignore_rows_without_text(loss_fn):
    torch.manual_seed(0)
    sim = torch.randn(B, B)
    present = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    fn = (lambda s, p: text_infonce(s, PRODUCTS, p, 0.01)) if loss_fn == "infonce" else \
        (lambda s, p: masked_vse_triplet(s, PRODUCTS, p, 0.2))
    loss = fn(sim, present)
    other = sim.clone()
    other[~present] = 100.0
    other[:, ~present] = 100.0
    assert torch.allclose(fn(other, present), loss)
    keep = present.nonzero().squeeze(1)
    if loss_fn == "triplet":
        assert torch.allclose(loss, vse_triplet(sim[keep][:, keep], PRODUCTS[keep], 0.2))
    else:   # one-way InfoNCE over the kept rows; the other clip of product 0 is no negative
        s = sim[keep][:, keep] / 0.01
        lab = PRODUCTS[keep]
        same = (lab.unsqueeze(0) == lab.unsqueeze(1)) & ~torch.eye(len(keep), dtype=torch.bool)
        s = s.masked_fill(same, float("-inf"))
        want = -(s.diagonal() - s.logsumexp(1)).mean()
        assert torch.allclose(loss, want, atol=1e-5)


@pytest.mark.parametrize("loss_fn", [lambda s, l, p: text_infonce(s, l, p, 0.01),
                                     lambda s, l, p: masked_vse_triplet(s, l, p, 0.2)])
def test_text_losses_are_finite_on_all_zero_text(loss_fn):
    """Official bug absent: zero text vectors (MovingFashion) gave 0/0 = NaN at step 1."""
    sim = torch.zeros(B, B, requires_grad=True)
    for present in (torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool),
                    torch.tensor([True] + [False] * (B - 1))):
        loss = loss_fn(sim, PRODUCTS, present)
        assert torch.isfinite(loss)
        if not present.any() or present.sum() < 2:
            assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(sim.grad).all()


def test_kl_rows_by_hand():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 7), torch.randn(5, 7)
    p, q = target.softmax(-1), logits.softmax(-1)
    want = (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(kl_rows(logits, target), want, atol=1e-6)
    assert kl_rows(target, target).abs().item() < 1e-6


# ---------------------------------------------------------------- SGMN: switches
def test_all_modules_off_is_gra_only(visual):
    model = build(visual, **MODULES_OFF).eval()
    assert model.tmc is None and model.gci is None and model.smf is None and len(model.filters) == 0
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"visual"}
    out = run(model, make_batch())
    assert set(out) == {"similarity_loss"}
    # GRA: mean of the normalised per-frame CLS over the real frames
    batch = make_batch()
    v = model.encode_video(batch["frames"], batch["frame_mask"])
    for b in (0, 3, 4):
        m = batch["frame_mask"][b]
        cls = F.normalize(model.visual(batch["frames"][b][m]), dim=-1)
        assert torch.allclose(v[b], F.normalize(cls.mean(0), dim=0), atol=1e-5)


@pytest.mark.parametrize("switch, keys", [
    ({"te": True}, {"similarity_loss", "text_loss"}),
    ({"tmc": True}, {"similarity_loss"}),
    ({"gci": True}, {"similarity_loss", "graph_loss", "kl_loss"}),
    ({"gci": True, "gci_graphs": {"cross": False}}, {"similarity_loss", "graph_loss"}),
    ({"smf": True}, {"similarity_loss", "matching_loss"}),
    ({"gci": True, "beta1": 0.0}, {"similarity_loss"}),
    ({"smf": True, "beta2": 0.0}, {"similarity_loss"}),
    ({"te": True, "tmc": True, "gci": True, "smf": True},
     {"similarity_loss", "text_loss", "graph_loss", "kl_loss", "matching_loss"}),
])
def test_each_switch_adds_its_loss(visual, switch, keys):
    model = build(visual, **{**MODULES_OFF, **switch}).eval()
    assert (model.tmc is not None) == switch.get("tmc", False)
    out = run(model, make_batch())
    assert set(out) == keys
    assert all(torch.isfinite(x) and x.dim() == 0 for x in out.values())


def test_tmc_switch_changes_the_video_embedding(visual):
    batch = make_batch()
    with_tmc, without = build(visual, **{**MODULES_OFF, "tmc": True}).eval(), build(visual, **MODULES_OFF).eval()
    assert torch.allclose(with_tmc.encode_image(batch), without.encode_image(batch))
    assert not torch.allclose(with_tmc.encode_video(batch["frames"], batch["frame_mask"]),
                              without.encode_video(batch["frames"], batch["frame_mask"]), atol=1e-4)


@pytest.mark.parametrize("fidelity", ["paper", "official"])
def test_betas_and_kl_weight_scale_exactly_their_terms(visual, fidelity):
    batch = make_batch()
    ref = run(build(visual, fidelity).eval(), batch)
    base = sgmn_cfg(fidelity)
    for key, scaled in (("beta1", {"graph_loss", "kl_loss"}), ("beta2", {"matching_loss"}),
                        ("kl_weight", {"kl_loss"})):
        out = run(build(visual, fidelity, **{key: 2 * base[key]}).eval(), batch)
        assert set(out) == set(ref)
        for name in ref:
            factor = 2.0 if name in scaled else 1.0
            assert torch.allclose(out[name], factor * ref[name], rtol=1e-4, atol=1e-6), (key, name)


def test_loss_switches_pick_their_functions(visual):
    torch.manual_seed(0)
    sim, labels = torch.randn(B, B), PRODUCTS
    present = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool)
    paper = build(visual, "paper", **MODULES_OFF)
    official = build(visual, "official", **MODULES_OFF)
    assert torch.allclose(paper.triplet(sim, labels), vse_triplet(sim, labels, 0.2))
    torch.manual_seed(1)
    got = official.triplet(sim, labels)
    torch.manual_seed(1)
    assert torch.allclose(got, distance_weighted_triplet(sim, labels, 0.2, dim=512))  # official d = 512
    own = build(visual, "official", dw_dim="embedding", **MODULES_OFF)
    torch.manual_seed(1)
    got = own.triplet(sim, labels)
    torch.manual_seed(1)
    assert torch.allclose(got, distance_weighted_triplet(sim, labels, 0.2, dim=D))
    paper.hardest_negatives = False            # the trainer's triplet warmup
    assert torch.allclose(paper.triplet(sim, labels), vse_triplet(sim, labels, 0.2, hardest=False))
    a, t = F.normalize(torch.randn(B, DT), dim=-1), F.normalize(torch.randn(B, DT), dim=-1)
    te_paper, te_official = build(visual, "paper", te=True), build(visual, "official", te=True)
    assert torch.allclose(te_paper.text_loss(a, t, labels, present),
                          0.5 * masked_vse_triplet(a @ t.T, labels, present, 0.2))
    assert torch.allclose(te_official.text_loss(a, t, labels, present),
                          text_infonce(a @ t.T, labels, present, 0.01))
    v, i = F.normalize(torch.randn(B, D), dim=-1), F.normalize(torch.randn(B, D), dim=-1)
    frames = F.normalize(torch.randn(B, L, D), dim=-1) * compact_mask([4, 2, 1, 3] * 2).unsqueeze(-1)
    mask = compact_mask([4, 2, 1, 3] * 2)
    # the paper's H: the frame-level similarity, averaged over each clip's real frames (by hand)
    want = torch.stack([torch.stack([(frames[a, :int(mask[a].sum())] @ i[b]).mean() for b in range(B)])
                        for a in range(B)])
    assert torch.allclose(te_paper._kl_target(v, i, frames, mask), want, atol=1e-6)
    assert torch.allclose(te_official._kl_target(v, i, frames, mask), torch.exp(-torch.cdist(v, i)))
    assert set(te_paper.filters) == {"shared"} and set(te_official.filters) == {"asr", "title"}


@pytest.mark.parametrize("fidelity", ["paper", "official"])
def test_eq23_score_is_cos_v_i_plus_lambda_cos_a_t(visual, fidelity):
    model = build(visual, fidelity, lambda_text=0.7).eval()
    batch = make_batch()
    with torch.no_grad():
        video = model.encode_clip(batch)
        image = model.encode_image(batch)
        score = model.score(video, image)
        assert score.shape == (B, B)
        # by hand from the model's parts: TMC over the compacted real frames, mean, cosine
        vids = []
        for b in range(B):
            m = batch["frame_mask"][b]
            n = int(m.sum())
            cls = torch.zeros(1, L, D)
            cls[0, :n] = model._visual(batch["frames"][b][m])[0]     # the projected CLS
            x = model.tmc(cls, compact_mask([n]))[0, :n]
            vids.append(F.normalize(x, dim=-1).mean(0))
        v = torch.stack(vids)
        img = model._visual(batch["image"])[0]
        asr_layer = model.filters["shared" if fidelity == "paper" else "asr"]
        title_layer = model.filters["shared" if fidelity == "paper" else "title"]
        a, t = asr_layer(batch["asr_feat"]), title_layer(batch["title_feat"])
        cos_vi = F.cosine_similarity(v.unsqueeze(1), img.unsqueeze(0), dim=-1)
        cos_at = F.cosine_similarity(a.unsqueeze(1), t.unsqueeze(0), dim=-1)
        cos_at = cos_at * batch["asr_present"].unsqueeze(1) * batch["title_present"].unsqueeze(0)
        assert torch.allclose(score, cos_vi + 0.7 * cos_at, atol=1e-5)
        # without text (a model trained without TE) the score is the visual cosine alone
        plain = build(visual, fidelity, te=False).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        s = plain.score(plain.encode_clip(batch), plain.encode_image(batch))
        assert torch.allclose(s, cos_vi, atol=1e-5)


def test_text_model_needs_text(visual):
    model = build(visual).eval()
    batch = make_batch()
    with pytest.raises(ValueError, match="text"):
        model.encode_clip({"frames": batch["frames"], "frame_mask": batch["frame_mask"]})
    with pytest.raises(ValueError, match="text"):
        model.encode_image({"image": batch["image"]})
    with pytest.raises(ValueError, match="text"):
        SGMN(copy.deepcopy(visual), sgmn_cfg(), num_frames=L, batch_size=B, text_dim=None)


def test_missing_text_is_finite_and_constant(visual):
    """All-zero text features with no text present (MovingFashion): finite losses and gradients,
    and the text features change nothing."""
    model = build(visual, "official").eval()
    for layer in model.filters.values():      # the official init (bias 0): fc(0) = 0, and 0/0 would be NaN
        torch.nn.init.zeros_(layer.bias)
    batch = make_batch()
    batch.update(asr_feat=torch.zeros(B, DT), title_feat=torch.zeros(B, DT),
                 asr_present=torch.zeros(B, dtype=torch.bool), title_present=torch.zeros(B, dtype=torch.bool))
    out = run(model, batch)
    assert all(torch.isfinite(x) for x in out.values())
    assert out["text_loss"].item() == 0.0
    sum(out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    batch2 = dict(batch, asr_feat=torch.randn(B, DT), title_feat=torch.randn(B, DT))
    out2 = run(model, batch2)
    for k in out:
        assert torch.allclose(out[k], out2[k], atol=1e-6), k


def test_sample_loss_does_not_depend_on_padded_frames(visual):
    model = build(visual).eval()
    batch = make_batch()
    ref = run(model, batch)
    other = dict(batch, frames=batch["frames"].clone())
    other["frames"][~batch["frame_mask"]] = torch.randn(int((~batch["frame_mask"]).sum()), 3, 64, 64)
    out = run(model, other)
    for k in ref:
        assert torch.allclose(ref[k], out[k], atol=1e-5), k


# ---------------------------------------------------------------- gradients
TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection",
              "logit_scale", "attn_mask")


@pytest.mark.parametrize("fidelity", ["paper", "official"])
def test_gradients_reach_every_trained_module_and_no_text_tower(fidelity):
    from sgmn.models.clip import create_clip
    torch.manual_seed(0)
    clip_model = create_clip("lpr-tiny-clip")       # its own: the model trains this visual tower
    text_names = [n for n, _ in clip_model.named_parameters() if not n.startswith("visual.")]
    assert text_names and all(n.startswith(TEXT_TOWER) for n in text_names)   # what a text tower is called
    model = build(clip_model.visual, fidelity, share_visual=True)
    if model.gci.bll_v2i is not None:     # zero-initialised residual: fc1 only learns once fc2 moves
        for bll in (model.gci.bll_v2i, model.gci.bll_i2v):
            torch.nn.init.normal_(bll.fc2.weight, std=0.02)
    model.train()
    batch = make_batch()
    out = run(model, batch)
    sum(out.values()).backward()
    names = dict(model.named_parameters())
    assert {n.split(".")[0] for n in names} == {"visual", "filters", "tmc", "gci", "smf"}
    assert not any(n.startswith(TEXT_TOWER) for n in names)
    text_params = {id(p) for n, p in clip_model.named_parameters() if not n.startswith("visual.")}
    assert not text_params & {id(p) for p in model.parameters()}
    for n, p in names.items():
        assert p.requires_grad, n
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    # text features are inputs (the frozen text tower ran offline): no gradient flows to them
    for key in ("asr_feat", "title_feat"):
        assert not batch[key].requires_grad and batch[key].grad is None
    for _, p in clip_model.named_parameters():
        if id(p) in text_params:
            assert p.grad is None


def test_graph_and_matching_losses_train_their_modules_only(visual):
    """GCI and SMF are training losses: each gets gradient from its own term; the KL term (Eq. 16)
    reaches only the relevance (its target and the frames are detached)."""
    model = build(visual).train()
    out = run(model, make_batch())
    out["kl_loss"].backward(retain_graph=True)
    for n, p in model.named_parameters():
        has = p.grad is not None and p.grad.abs().sum() > 0
        assert has == (n.startswith(("gci.v2i_rel", "gci.i2v_rel", "gci.bll_v2i.fc2", "gci.bll_i2v.fc2"))), n
    model.zero_grad(set_to_none=True)
    out["similarity_loss"].backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters()
               if n.startswith(("gci", "smf", "filters")))
    model.zero_grad(set_to_none=True)
    out["matching_loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters()
               if n.startswith("gci"))                      # the fused similarity is detached
    for prefix in ("smf", "filters", "visual"):              # the text fused into the tokens trains the filters
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
                   if n.startswith(prefix)), prefix


# ---------------------------------------------------------------- fidelity
def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_fidelity_modes_differ_exactly_at_the_documented_keys():
    paper = _flat(apply_fidelity(validate({"fidelity": "paper"})))
    official = _flat(apply_fidelity(validate({"fidelity": "official"})))
    assert set(paper) == set(official)
    differ = {k for k in paper if paper[k] != official[k]} - {"fidelity"}
    documented = {".".join(d.key) for d in DIFFERENCES}
    assert differ == documented
    for d in DIFFERENCES:
        key = ".".join(d.key)
        assert d.paper != d.official, key
        assert paper[key] == d.paper and official[key] == d.official, key
    assert len(documented) == len(DIFFERENCES)                  # no key listed twice
    assert apply_fidelity(validate({}))["fidelity"] == "paper"   # the default


def test_explicit_keys_win_over_fidelity():
    for d in DIFFERENCES:
        section, key = d.key
        for mode, other in (("paper", d.official), ("official", d.paper)):
            cfg = apply_fidelity(validate({"fidelity": mode, section: {key: other}}))
            assert cfg[section][key] == other, (d.key, mode)
            # and only that key leaves its mode
            ref = _flat(apply_fidelity(validate({"fidelity": mode})))
            diff = {k for k, v in _flat(cfg).items() if ref[k] != v}
            assert diff == {".".join(d.key)}, (d.key, mode)


def test_every_difference_is_a_null_default_schema_key_accepting_both_values():
    schema = load_schema()
    for d in DIFFERENCES:
        section, key = d.key
        prop = schema["properties"][section]["properties"].get(key)
        assert prop is not None, d.key
        assert "default" in prop and prop["default"] is None, d.key
        for value in (d.paper, d.official):
            validate({section: {key: value}})          # both values are valid settings


def test_variant_sgmn_official_sets_fidelity():
    from sgmn.config import load_variants, resolve_variant
    variants = load_variants()
    assert variants["sgmn_official"]["overrides"] == {"fidelity": "official"}
    cfg = resolve_variant({}, "sgmn_official", variants)
    for d in DIFFERENCES:
        section, key = d.key
        assert cfg[section][key] == d.official, d.key


def test_official_model_builds_the_official_modules(visual):
    paper, official = build(visual, "paper"), build(visual, "official")
    assert official.gci.attention == "joint" and paper.gci.attention == "two_stage"
    assert official.gci.bll_v2i is None and paper.gci.bll_v2i is not None
    assert official.gci.intra_connection == "cross" and paper.gci.intra_connection == "intra"
    assert official.gci.relevance_profile == "l2" and paper.gci.relevance_profile == "raw"
    assert official.smf.num_neg == 3 and paper.smf.num_neg == 4
    assert official.smf.symmetric is False and paper.smf.symmetric is True
    assert official.smf.scorer.pool == "cls" and paper.smf.scorer.pool == "avg"
    assert math.isclose(official.cfg.kl_weight, 10.0) and math.isclose(paper.cfg.kl_weight, 1.0)


# ---------------------------------------------------------------- bf16 autocast (train.precision)
@pytest.mark.parametrize("fidelity", ["paper", "official"])
def test_full_model_under_bf16_autocast_is_finite_and_close_to_fp32(visual, fidelity):
    """train.precision bf16 is torch.autocast: the same code path on CPU as on CUDA (the masks
    with -inf, SDPA, the top-k selections), finite losses and gradients near the fp32 ones."""
    from sgmn.models.device import autocast
    model = build(visual, fidelity).eval()
    batch = make_batch()
    ref = run(model, batch)
    with autocast("bf16", torch.device("cpu")):    # the suite's: SDPA's math kernel on the CPU
        low = run(model, batch)
    assert set(low) == set(ref)
    total = sum(v for k, v in low.items() if k.endswith("_loss"))
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for key, value in ref.items():
        if key.endswith("_loss"):
            assert torch.isfinite(low[key]), key
            assert abs(low[key].float().item() - value.item()) <= 0.1 * abs(value.item()) + 0.05, key


def test_patch_embedding_is_the_convolution_and_a_matmul_under_cpu_bf16():
    """create_clip's patch convolution: bit-identical to Conv2d outside CPU autocast (fp32
    results unchanged), and under the suite's reusable bf16 context a matmul whose output and
    weight gradient match the bf16 convolution's."""
    from sgmn.models.clip import PatchEmbedding, create_clip
    from sgmn.models.device import autocast
    conv = create_clip("lpr-tiny-clip").visual.conv1
    assert isinstance(conv, PatchEmbedding) and "weight" in conv.state_dict()
    x = torch.randn(2, 3, 70, 66, generator=torch.Generator().manual_seed(0))   # a remainder dropped
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, conv.stride))
    grads = {}
    amp = autocast("bf16", torch.device("cpu"))
    for name, fn in (("matmul", conv), ("conv", lambda t: F.conv2d(t, conv.weight, conv.bias, conv.stride))):
        with amp:                                   # entered twice: a training loop reuses it
            y = fn(x)
        assert y.dtype == torch.bfloat16 and y.shape == (2, conv.out_channels, 4, 4)
        (y.float() ** 2).sum().backward()
        grads[name] = (y.float().detach(), conv.weight.grad.clone())
        conv.weight.grad = None
    torch.testing.assert_close(grads["matmul"][0], grads["conv"][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grads["matmul"][1], grads["conv"][1], rtol=5e-2, atol=5e-2)
