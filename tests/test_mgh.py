"""MGH baseline (baselines/mgh.py): kNN hyperedges within temporal windows (against a loop),
masked BatchNorm, the propagation and pooling, padding, the T=1 image branch, the cross-domain
batch-hard triplet (baselines/common.py), losses, overfitting, scores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.common import batch_hard_triplet
from baselines.mgh import MGH, MGHConfig, hyperedges, masked_batch_norm, window_masks
from sgmn.config import resolve_variant, validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(section: dict | None = None, seed: int = 0) -> MGH:
    torch.manual_seed(seed)
    cfg = resolve_variant(validate({"model": {"num_frames": 4, "image_size": S},
                                    "mgh": section or {}}), "mgh")
    return MGH.from_config(cfg, None)


def batch(b: int = 6, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    return {"frames": torch.randn(b, l, 3, S, S, generator=g), "frame_mask": mask,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4][:b])}


def test_registry_and_config():
    assert get_method("mgh") is MGH
    m = make()
    assert isinstance(m.cfg, MGHConfig) and m.cfg.parts == (1, 2, 4) and m.cfg.windows == (1, 3)
    assert m.cfg.knn == 3 and m.cfg.hidden == 64 and m.cfg.triplet_margin == 0.3
    assert set(m.graphs) == {"2", "4"} and m.sizes == [96, 128, 128] and m.uses_text is False
    assert make({"parts": [2, 8], "windows": [0, 2, 5]}).sizes == [128, 128]


def test_window_masks():
    frame_of = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    allowed = window_masks(frame_of, (0, 1, 3))
    assert allowed.shape == (3, 8, 8)
    for w, a in zip((0, 1, 3), allowed):
        for i in range(8):
            for j in range(8):
                assert a[i, j] == (abs(int(frame_of[i]) - int(frame_of[j])) <= w)


def test_hyperedges_against_a_loop():
    g = torch.Generator().manual_seed(3)
    b, n, f, knn = 2, 8, 5, 3
    x = torch.randn(b, n, f, generator=g)
    real = torch.ones(b, n, dtype=torch.bool)
    real[1, 6:] = False                                                  # clip 1: frame 3 padded
    frame_of = torch.arange(n) // 2
    windows = (0, 1)
    got = hyperedges(x, real, window_masks(frame_of, windows), knn)      # (B, W, N, F)
    assert got.shape == (b, 2, n, f)
    for bi in range(b):
        for wi, w in enumerate(windows):
            for i in range(n):
                if not real[bi, i]:
                    continue
                cands = [j for j in range(n) if j != i and real[bi, j] and abs(int(frame_of[i]) - int(frame_of[j])) <= w]
                cos = {j: F.cosine_similarity(x[bi, i], x[bi, j], dim=0).item() for j in cands}
                chosen = sorted(cands, key=lambda j: -cos[j])[:knn - 1]
                expected = x[bi, chosen].mean(0)
                assert torch.allclose(got[bi, wi, i], expected, atol=1e-5), (bi, w, i, chosen)


def test_hyperedge_of_a_lone_node_is_itself():
    x = torch.randn(1, 2, 4)
    real = torch.tensor([[True, False]])
    got = hyperedges(x, real, window_masks(torch.tensor([0, 0]), (1,)), 3)
    assert torch.equal(got[0, 0, 0], x[0, 0])                           # the padded node is no member


def test_masked_batch_norm_uses_real_nodes_only():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 6, generator=g)
    real = torch.rand(3, 5, generator=g) > 0.4
    real[0, 0] = True
    bn = torch.nn.BatchNorm1d(6)
    out = masked_batch_norm(bn, x, real)
    sel = x[real]
    expected = (sel - sel.mean(0)) / (sel.var(0, unbiased=False) + 1e-5).sqrt()
    assert torch.allclose(out[real], expected, atol=1e-5)
    assert (out[~real] == 0).all()


def test_batch_hard_triplet_against_a_loop():
    g = torch.Generator().manual_seed(5)
    a, o = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g)
    la, lo = torch.tensor([0, 1, 1, 2, 9]), torch.tensor([1, 0, 2, 1, 3, 4])
    hinges = []
    for i in range(5):
        pos = [torch.dist(a[i], o[j]) for j in range(6) if lo[j] == la[i]]
        neg = [torch.dist(a[i], o[j]) for j in range(6) if lo[j] != la[i]]
        if pos and neg:
            hinges.append((0.3 + max(pos) - min(neg)).clamp(min=0))
    assert torch.allclose(batch_hard_triplet(a, o, la, lo, 0.3), torch.stack(hinges).mean(), atol=1e-5)


def test_forward_backward_and_every_parameter_learns():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"id_loss", "triplet_loss", "id_p1", "id_p2", "id_p4"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert torch.allclose(out["id_loss"], out["id_p1"] + out["id_p2"] + out["id_p4"])
    (out["id_loss"] + out["triplet_loss"]).backward()
    # the non-local block starts as identity (its output BN's scale is 0), so its inner convs get
    # their gradient once that scale has moved; every other parameter learns at once
    silent = ("visual.7.theta.", "visual.7.phi.", "visual.7.g.", "visual.7.out.0.")
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert name == "neck.bn.bias"
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad.abs().sum() == 0) == name.startswith(silent), name
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    out = m.loss(batch())
    (out["id_loss"] + out["triplet_loss"]).backward()
    assert m.visual[7].theta.weight.grad.abs().sum() > 0


def test_padding_does_not_change_the_embedding_or_the_loss():
    m = make()
    g = torch.Generator().manual_seed(6)
    frames = torch.randn(3, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(3, 2, dtype=torch.bool)}
    pad_mask = torch.tensor([[True, True, False, False]]).expand(3, 4)
    padded = {"frames": torch.cat([frames, torch.zeros(3, 2, 3, S, S)], 1), "frame_mask": pad_mask}
    garbage = {**padded, "frames": torch.cat([frames, torch.randn(3, 2, 3, S, S, generator=g)], 1)}
    gaps = {"frames": torch.stack([frames[:, 0], torch.randn(3, 3, S, S, generator=g), torch.zeros(3, 3, S, S),
                                   frames[:, 1]], 1),
            "frame_mask": torch.tensor([[True, False, False, True]]).expand(3, 4)}
    m.eval()
    with torch.no_grad():
        ref = m.encode_clip(short)
        for other in (padded, garbage, gaps):
            assert torch.allclose(m.encode_clip(other), ref, atol=1e-5)
    # training mode: padded frames stay out of every BatchNorm's statistics too
    m.train()
    image, product = torch.randn(3, 3, S, S, generator=g), torch.tensor([0, 1, 2])
    with torch.no_grad():
        a = m.loss({**short, "image": image, "product": product})
        b = m.loss({**garbage, "image": image, "product": product})
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_image_branch_is_a_one_frame_clip():
    m = make().eval()
    g = torch.Generator().manual_seed(7)
    img = torch.randn(2, 3, S, S, generator=g)
    one = torch.zeros(2, 4, 3, S, S)
    one[:, 0] = img
    mask = torch.tensor([[True, False, False, False]]).expand(2, 4)
    with torch.no_grad():
        i = m.encode_image({"image": img})
        assert torch.allclose(m.encode_clip({"frames": one, "frame_mask": mask}), i, atol=1e-5)
        assert i.shape == (2, sum(m.sizes))


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, l=2, products=[0, 1, 2, 3], seed=3)
    b["frame_mask"][:] = True
    losses = overfit_losses(m, b, 30, loss_of=lambda out: out["id_loss"] + out["triplet_loss"])
    assert losses[-1] < 0.3 * losses[0], losses


def test_scores_are_cosine_at_gallery_scale():
    m = make().eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        q = m.encode_clip(batch(b=3))
        gal = m.encode_image({"image": torch.randn(600, 3, S, S, generator=g)})
        s = m.score(q, gal)
    assert s.shape == (3, 600) and torch.isfinite(s).all()
    assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(s, F.cosine_similarity(q[:, None], gal[None], dim=-1), atol=1e-5)


def test_bad_parts():
    with pytest.raises(Exception, match="parts|enum"):
        make({"parts": [3]})


def test_other_frame_sizes_pool_stripes_adaptively():
    torch.manual_seed(0)
    cfg = resolve_variant(validate({"model": {"num_frames": 2, "image_size": 96},
                                    "mgh": {"parts": [1, 2, 8]}}), "mgh")
    m = MGH.from_config(cfg, None).eval()                               # 12 rows: 8 stripes of 1-2 rows
    with torch.no_grad():
        v = m.encode_clip({"frames": torch.randn(2, 2, 3, 96, 96), "frame_mask": torch.ones(2, 2, dtype=torch.bool)})
    assert v.shape == (2, sum(m.sizes)) and torch.isfinite(v).all()
