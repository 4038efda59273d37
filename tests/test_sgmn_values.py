"""SGMN's equations checked against values computed another way: written-out attention with
Python loops over heads and nodes, KL divergences from math.log, schedules by hand. And for every
fidelity key added with the official code's recipe, that switching it changes what it says.

Everything is tiny (D = 8 or the tiny CLIP's 128) and seeded, in eval mode, so comparisons are
exact up to float error.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sgmn.config import validate
from sgmn.fidelity import apply_fidelity
from sgmn.models.gci import GCI
from sgmn.models.sgmn import SGMN
from sgmn.models.smf import SMF, TextFusion
from sgmn.models.tmc import TMC
from sgmn.models.losses import kl_rows, vse_triplet
from sgmn.train.loop import lr_multiplier, warmup_cosine_progress

torch.set_num_threads(1)


# ---------------------------------------------------------------- written-out attention
def _attention(layer_attn: torch.nn.MultiheadAttention, q_in, kv_in, additive=None, key_ok=None):
    """Scaled dot-product attention of one sequence, one query and one head at a time.
    q_in (Tq, D), kv_in (Tk, D); additive (Tq, Tk) added to the logits; key_ok (Tk,) bool."""
    d = q_in.shape[-1]
    h = layer_attn.num_heads
    dh = d // h
    w, b = layer_attn.in_proj_weight, layer_attn.in_proj_bias
    q = q_in @ w[:d].T + b[:d]
    k = kv_in @ w[d:2 * d].T + b[d:2 * d]
    v = kv_in @ w[2 * d:].T + b[2 * d:]
    out = torch.zeros(q_in.shape[0], d)
    for t in range(q_in.shape[0]):
        for head in range(h):
            sl = slice(head * dh, (head + 1) * dh)
            logits = []
            for s in range(kv_in.shape[0]):
                value = float(q[t, sl] @ k[s, sl]) / math.sqrt(dh)
                if additive is not None:
                    value += float(additive[t, s])
                if key_ok is not None and not key_ok[s]:
                    value = -math.inf
                logits.append(value)
            top = max(logits)
            weights = [math.exp(x - top) if x > -math.inf else 0.0 for x in logits]
            total = sum(weights)
            for s, wgt in enumerate(weights):
                out[t, sl] += wgt / total * v[s, sl]
    return out @ layer_attn.out_proj.weight.T + layer_attn.out_proj.bias


def _pre_ln_layer(layer, x, key_ok=None):
    """nn.TransformerEncoderLayer(norm_first=True, gelu) written out: x + SA(LN1 x), + FFN(LN2 x)."""
    x = x + _attention(layer.self_attn, layer.norm1(x), layer.norm1(x), key_ok=key_ok)
    return x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))


def _post_ln_layer(layer, x, additive):
    """nn.TransformerEncoderLayer(norm_first=False, relu) written out: LN1(x + SA x), LN2(x + FFN x)."""
    x = layer.norm1(x + _attention(layer.self_attn, x, x, additive=additive))
    return layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))


def test_tmc_eq3_against_a_written_out_reference():
    """Eq. 3 on a three-frame clip and a two-frame clip (one padded frame): differences of
    adjacent frames through one attention block, squashed by 2 sigmoid - 1, interleaved with
    the frames, positions and kinds added, the encoder, and the frame slots plus the input."""
    torch.manual_seed(0)
    d, heads = 8, 2
    tmc = TMC(d, heads, layers=1, max_frames=4).eval()
    x = torch.randn(2, 3, d)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        got = tmc(x, mask)
        for b in range(2):
            n = int(mask[b].sum())
            diffs = torch.stack([x[b, t + 1] - x[b, t] for t in range(2)])           # d1, d2
            diff_ok = mask[b, 1:].clone()
            keys = diff_ok.clone()
            keys[0] = True
            pos = tmc.pos.weight
            d_tok = _pre_ln_layer(tmc.diff_attn, diffs + pos[[1, 3]], key_ok=keys)
            d_tok = (2 * torch.sigmoid(tmc.diff_norm(d_tok)) - 1) * diff_ok.unsqueeze(-1)
            seq = torch.stack([x[b, 0], d_tok[0], x[b, 1], d_tok[1], x[b, 2]])     # v0 d1 v1 d2 v2
            kinds = torch.tensor([1, 0, 1, 0, 1])
            seq = seq + pos[:5] + tmc.kind.weight[kinds]
            seq_ok = torch.tensor([True, diff_ok[0], True, diff_ok[1], mask[b, 2]])
            out = _pre_ln_layer(tmc.encoder.layers[0], seq, key_ok=seq_ok)
            want = out[[0, 2, 4]] + x[b]
            assert torch.allclose(got[b, :n], want[:n], atol=1e-5), b


def test_gci_joint_attention_against_a_loop_over_nodes():
    """The official joint GCI layer: one post-LN encoder layer over the 2N nodes [V; I], each
    node attending to the nodes its graph connects with the relevance added to the logit."""
    torch.manual_seed(0)
    n, frames_n, d = 4, 3, 8
    gci = GCI(d, frames_n, n, heads=2, attention="joint", batch_linear=False, connect_count="batch").eval()
    frames = F.normalize(torch.randn(n, frames_n, d), dim=-1)
    mask = torch.ones(n, frames_n, dtype=torch.bool)
    v = F.normalize(frames.mean(1), dim=-1)
    i = F.normalize(torch.randn(n, d), dim=-1)
    with torch.no_grad():
        vg, ig, cross = gci(v, i, frames, mask)
        r_v2i, c_v2i = cross["v2i"]
        r_i2v, c_i2v = cross["i2v"]
        k = 2                                                     # ratio 0.5 x batch 4
        s_vv, s_ii = v @ v.T, i @ i.T
        additive = torch.full((2 * n, 2 * n), -math.inf)
        for a in range(n):
            for b in range(n):
                if c_v2i[a, b]:
                    additive[a, n + b] = r_v2i[a, b]
                if c_i2v[a, b]:
                    additive[n + a, b] = r_i2v[a, b]
                # intra graphs: the top-k of each node's own-domain similarities, exp(-distance)
                if s_vv[a, b] >= s_vv[a].topk(k).values[-1]:
                    additive[a, b] = math.exp(-float((v[a] - v[b]).norm()))
                if s_ii[a, b] >= s_ii[a].topk(k).values[-1]:
                    additive[n + a, n + b] = math.exp(-float((i[a] - i[b]).norm()))
        out = _post_ln_layer(gci.joint, torch.cat([v, i]), additive)
    assert c_v2i.sum(1).tolist() == [k] * n                      # no ties in random data
    assert torch.allclose(vg, F.normalize(out[:n], dim=-1), atol=1e-5)
    assert torch.allclose(ig, F.normalize(out[n:], dim=-1), atol=1e-5)


# ---------------------------------------------------------------- Eq. 16
def _kl_by_hand(p_logits, q_logits, keep=None):
    """sum_j p_j (log p_j - log q_j) per row over the kept entries, averaged over rows."""
    total = 0.0
    for row in range(len(p_logits)):
        cols = [j for j in range(len(p_logits[row])) if keep is None or keep[row][j]]
        zp = sum(math.exp(p_logits[row][j]) for j in cols)
        zq = sum(math.exp(q_logits[row][j]) for j in cols)
        for j in cols:
            p, q = math.exp(p_logits[row][j]) / zp, math.exp(q_logits[row][j]) / zq
            total += p * (math.log(p) - math.log(q))
    return total / len(p_logits)


def test_kl_direction_and_graph_restriction_by_hand():
    graph = [[0.3, -0.2, 0.9], [1.1, 0.0, -0.5]]
    target = [[0.1, 0.4, 0.2], [-0.3, 0.8, 0.5]]
    g, h = torch.tensor(graph), torch.tensor(target)
    # the paper's reading: KL(P_H || P_G); the official call: KL(P_G || P_H)
    assert kl_rows(g, h, "target").item() == pytest.approx(_kl_by_hand(target, graph), abs=1e-6)
    assert kl_rows(g, h, "graph").item() == pytest.approx(_kl_by_hand(graph, target), abs=1e-6)
    assert kl_rows(g, h, "target").item() != pytest.approx(kl_rows(g, h, "graph").item(), abs=1e-4)
    # the official code's exact expression: F.kl_div(log_softmax(H), softmax(R), batchmean)
    official = F.kl_div(h.log_softmax(-1), g.softmax(-1), reduction="batchmean")
    assert torch.allclose(kl_rows(g, h, "graph"), official, atol=1e-6)
    # on the graph's edges only (Eq. 12): both distributions renormalised over the kept entries
    keep = [[True, False, True], [True, True, False]]
    got = kl_rows(g, h, "target", torch.tensor(keep)).item()
    assert got == pytest.approx(_kl_by_hand(target, graph, keep), abs=1e-6)
    # gradient: official reaches the relation through the reference distribution
    r = g.clone().requires_grad_(True)
    kl_rows(r, h, "graph").backward()
    assert r.grad.abs().sum() > 0
    r.grad = None
    kl_rows(r, h, "target", torch.tensor(keep)).backward()
    assert torch.isfinite(r.grad).all()
    assert r.grad[0, 1] == 0 and r.grad[1, 2] == 0             # off the graph: no gradient


# ---------------------------------------------------------------- a model per setting
D, L, B, DT = 128, 4, 8, 16


@pytest.fixture(scope="module")
def tiny_clip():
    from sgmn.models.clip import create_clip
    torch.manual_seed(0)
    return create_clip("lpr-tiny-clip")


def _model(tiny_clip, fidelity="paper", **sgmn) -> SGMN:
    import copy
    cfg = apply_fidelity(validate({"fidelity": fidelity, "sgmn": sgmn}))["sgmn"]
    torch.manual_seed(0)
    text = {"block": tiny_clip.transformer.resblocks[0], "positions": tiny_clip.positional_embedding}
    return SGMN(copy.deepcopy(tiny_clip.visual), cfg, L, B, 0.2, text_dim=DT, clip_text=text)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.randn(B, L, 3, 64, 64, generator=g), "frame_mask": torch.ones(B, L, dtype=torch.bool),
            "image": torch.randn(B, 3, 64, 64, generator=g), "product": torch.arange(B),
            "asr_feat": torch.randn(B, DT, generator=g), "title_feat": torch.randn(B, DT, generator=g),
            "asr_present": torch.ones(B, dtype=torch.bool), "title_present": torch.ones(B, dtype=torch.bool)}


def test_triplet_reduction_scales_exactly_the_triplet_terms(tiny_clip):
    """sum = N x mean for every triplet term (similarity, graph, text); KL and SMF unchanged."""
    batch = _batch()
    out = {}
    for reduction in ("sum", "mean"):
        model = _model(tiny_clip, triplet_reduction=reduction).eval()
        torch.manual_seed(0)
        out[reduction] = model(batch)
    for name in out["sum"]:
        factor = B if name in ("similarity_loss", "graph_loss", "text_loss") else 1
        assert torch.allclose(out["sum"][name], factor * out["mean"][name], rtol=1e-4, atol=1e-6), name
    sim = torch.tensor([[0.9, 0.5], [0.3, 0.2]])
    assert vse_triplet(sim, torch.tensor([0, 1])).item() == pytest.approx(0.0 + 0.3 + 0.0 + 0.5)  # v0 v1 i0 i1


def test_connect_count_counts_frames_or_the_batch():
    torch.manual_seed(0)
    n, frames_n = 8, 4
    v, i = F.normalize(torch.randn(n, D), dim=-1), F.normalize(torch.randn(n, D), dim=-1)
    for count, k in (("frames", 2), ("batch", 4)):             # 0.5 x 4 frames, 0.5 x 8 clips
        gci = GCI(D, frames_n, n, connect_count=count, batch_linear=False)
        edges = gci.connections(v, i)
        assert all(e.sum(1).tolist() == [k] * n for e in edges.values()), count


def test_cross_connection_from_the_profile_mean():
    """Crafted so the two scores disagree on the I->V edge of image 0 (they rank a V->I row the
    same way, since V is the normalised frame mean): clip A's frames are e0 and e1, clip B's
    both u with u.e0 = 0.6, image 0 is e0. Frame mean: A 0.5 < B 0.6; pooled: A 0.71 > B 0.6."""
    frames = torch.zeros(2, 2, D)
    frames[0, 0, 0], frames[0, 1, 1] = 1.0, 1.0
    frames[1, :, 0], frames[1, :, 2] = 0.6, 0.8
    mask = torch.ones(2, 2, dtype=torch.bool)
    i = torch.zeros(2, D)
    i[0, 0], i[1, 3] = 1.0, 1.0
    v = F.normalize(frames.mean(1), dim=-1)
    mean = torch.einsum("vld,id->vil", frames, i).mean(-1)
    assert mean[:, 0].tolist() == pytest.approx([0.5, 0.6]) and (v @ i[0]).tolist() == pytest.approx([0.7071, 0.6], abs=1e-4)
    for how, want in (("profile_mean", 1), ("global", 0)):
        gci = GCI(D, 2, 2, connect_ratio=0.5, connect_count="batch", cross_connection=how, batch_linear=False)
        edges = gci.connections(v, i, mean)
        assert edges["i2v"][0].nonzero().flatten().tolist() == [want], how


def test_gci_heads_and_the_official_modules(tiny_clip):
    paper, official = _model(tiny_clip, "paper"), _model(tiny_clip, "official")
    assert paper.gci.intra_v.self_attn.num_heads == 8 and official.gci.joint.self_attn.num_heads == 16
    assert official.tmc.encoder.layers[0].self_attn.num_heads == 8        # TMC keeps 8 (modeling_sgmn.py:234)
    assert official.smf.normalize and not paper.smf.normalize
    assert official.smf.fusion.p == 0.1 and paper.smf.fusion.p == 0.0
    assert official.gci.connect_count == "batch" and paper.gci.connect_count == "frames"


def test_smf_normalize_unit_norms_the_tokens_before_fusion():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, D) * 4
    for flag in (True, False):
        smf = SMF(D, None, normalize=flag)
        out = smf.fuse(tokens, None, None)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3, 5), atol=1e-5) == flag


def test_fusion_dropout_drops_a_heads_share_of_the_text():
    """In eval the fusion is LN(x + W_o(W_v t + b_v) + b_o) then the FFN block, with or without
    dropout; in training, dropout zeroes whole head slices of the text's value for a token."""
    torch.manual_seed(0)
    fusion = TextFusion(D, DT, heads=8, dropout=0.5)
    x, t, present = torch.randn(2, 6, D), torch.randn(2, DT), torch.tensor([True, True])
    fusion.eval()
    with torch.no_grad():
        added = fusion.out(fusion.value(t)).unsqueeze(1)
        y = fusion.norm1(x + added)
        want = fusion.norm2(y + fusion.ffn(y))
        assert torch.allclose(fusion(x, t, present), want, atol=1e-5)
        # training: the value per (token, head) is kept x 2 or dropped; look at W_o's input
        fusion.train()
        seen = {}
        fusion.out.register_forward_hook(lambda m, inp, out: seen.setdefault("in", inp[0]))
        fusion(x, t, present)
        value = fusion.value(t).view(2, 1, 8, D // 8)
        got = seen["in"].view(2, 6, 8, D // 8)
        ratio = (got / value).flatten(3)
        assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)   # whole head slices
        assert set(ratio[..., 0].round().unique().tolist()) == {0.0, 2.0}


def test_official_init_draws_n_0_002_and_copies_clips_text_layer(tiny_clip):
    paper, official = _model(tiny_clip, "paper"), _model(tiny_clip, "official")
    block = tiny_clip.transformer.resblocks[0]
    sb = official.smf.scorer.self_block
    assert torch.equal(sb.self_attn.in_proj_weight, block.attn.in_proj_weight)
    assert torch.equal(sb.linear1.weight, block.mlp.c_fc.weight) and torch.equal(sb.norm2.bias, block.ln_2.bias)
    assert sb.self_attn.num_heads == block.attn.num_heads == 4                # the text tower's heads
    tokens = official.smf.scorer.pos.shape[0]
    assert torch.equal(official.smf.scorer.pos, tiny_clip.positional_embedding[:tokens])
    weights = torch.cat([m.weight.flatten() for name, m in official.named_modules()
                         if isinstance(m, torch.nn.Linear) and not name.startswith(("visual", "smf.scorer.self_block"))])
    biases = [m.bias for name, m in official.named_modules()
              if isinstance(m, torch.nn.Linear) and m.bias is not None and not name.startswith(("visual", "smf.scorer.self_block"))]
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all((b == 0).all() for b in biases)
    # paper mode keeps PyTorch's defaults: e.g. the TMC's first FFN layer, U(-1/sqrt(D), 1/sqrt(D))
    w = paper.tmc.encoder.layers[0].linear1.weight
    assert abs(w.std().item() - 1 / math.sqrt(3 * D)) < 0.002
    # the visual tower is CLIP's in both
    assert torch.equal(official.visual.conv1.weight, tiny_clip.visual.conv1.weight)
    with pytest.raises(ValueError, match="clip_text"):
        cfg = apply_fidelity(validate({"fidelity": "official"}))["sgmn"]
        SGMN(tiny_clip.visual, cfg, L, B, 0.2, text_dim=DT)


def test_kl_keys_switch_the_models_kl_term(tiny_clip):
    """kl_graph and kl_reference change the model's KL term to exactly kl_rows' other form."""
    batch = _batch()
    base = _model(tiny_clip, "paper").eval()
    with torch.no_grad():
        torch.manual_seed(0)
        ref = base(batch)["kl_loss"]
        for key, value in (("kl_graph", "relevance"), ("kl_reference", "graph")):
            other = _model(tiny_clip, "paper", **{key: value}).eval()
            other.load_state_dict(base.state_dict())
            torch.manual_seed(0)
            got = other(batch)["kl_loss"]
            assert not torch.allclose(got, ref), key


# ---------------------------------------------------------------- schedules
def test_official_warmup_cosine_by_hand():
    total = 100
    assert warmup_cosine_progress(0, total) == 0.0                           # BertAdam's first step
    assert warmup_cosine_progress(5, total) == pytest.approx(0.5)
    assert warmup_cosine_progress(10, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))  # 0.9755
    assert warmup_cosine_progress(50, total) == pytest.approx(0.5)
    assert warmup_cosine_progress(100, total) == pytest.approx(0.0)
    paper = lr_multiplier("cosine", total, warmup_steps=10)
    official = lr_multiplier("warmup_cosine_progress", total, warmup_steps=10)
    assert paper(9) == pytest.approx(1.0) and paper(10) == pytest.approx(1.0)   # cosine re-based after warmup
    assert official(10) == pytest.approx(0.97553, abs=1e-5)
    with pytest.raises(ValueError, match="lr schedule"):
        lr_multiplier("linear", total, 10)


@pytest.mark.parametrize("attention", ["two_stage", "joint"])
def test_gci_under_no_grad_in_eval_matches_grad_mode(attention):
    """Regression: nn.TransformerEncoderLayer's inference fast path returned NaN with GCI's float
    graph masks (torch 2.14, CPU); GCI now always takes the regular path."""
    torch.manual_seed(0)
    n, frames_n = 6, 3
    gci = GCI(D, frames_n, n, attention=attention, batch_linear=False).eval()
    frames = F.normalize(torch.randn(n, frames_n, D), dim=-1)
    mask = torch.ones(n, frames_n, dtype=torch.bool)
    v, i = F.normalize(frames.mean(1), dim=-1), F.normalize(torch.randn(n, D), dim=-1)
    with torch.no_grad():
        vg, ig, _ = gci(v, i, frames, mask)
    vg2, ig2, _ = gci(v, i, frames, mask)
    assert torch.isfinite(vg).all() and torch.allclose(vg, vg2, atol=1e-5) and torch.allclose(ig, ig2, atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()          # restored for everything else
