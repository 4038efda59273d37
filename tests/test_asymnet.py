"""AsymNet baseline (baselines/asymnet.py): L not a power of two, crops and tracks, per-step
hidden states, the leaf nets and gated fusion tree (masked leaves), pairwise scoring at gallery
scale, the weighted BCE losses and the three training phases."""
from __future__ import annotations

import math

import pytest
import torch

import baselines.asymnet as asym
from baselines.asymnet import AsymNet, AsymNetConfig, SimilarityNetwork
from sgmn.config import resolve_run_config, validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S, L, STEPS = 64, 4, 100


pytestmark = pytest.mark.usefixtures("one_thread")


def config(section: dict | None = None, frames: int = L) -> dict:
    return resolve_run_config(validate({"method": "asymnet", "model": {"num_frames": frames, "image_size": S},
                                        "train": {"steps": STEPS}, "asymnet": section or {}}))


def make(section: dict | None = None, seed: int = 0) -> AsymNet:
    torch.manual_seed(seed)
    return AsymNet.from_config(config(section), clip=None)


def batch(b: int = 6, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    xy = torch.rand(b, L, 2, generator=g) * 0.4
    box = torch.cat([xy, xy + 0.3 + torch.rand(b, L, 2, generator=g) * 0.3], -1)
    present = mask.clone()
    present[3, 1] = False                                                # a gap in the track
    present[1] = False                                                   # never in view: whole frames
    return {"frames": torch.randn(b, L, 3, S, S, generator=g), "frame_mask": mask,
            "target_box": box * present.unsqueeze(-1), "target_present": present,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4])}


def grads(m: AsymNet) -> dict[str, bool]:
    return {n: p.grad is not None and p.grad.abs().sum().item() > 0 for n, p in m.named_parameters()}


def test_registry_and_config():
    assert get_method("asymnet") is AsymNet
    m = make({"hidden": 32, "width": 32})
    assert isinstance(m.cfg, AsymNetConfig) and m.uses_text is False and m.steps == STEPS
    assert len(m.sn.gates) == int(math.log2(L)) + 1 and m.lstm.num_layers == 2 and m.lstm.hidden_size == 32
    # separate weights for the frame and the image CNN
    assert m.visual["frame"].head[0].weight.data_ptr() != m.visual["image"].head[0].weight.data_ptr()
    with pytest.raises(ValueError, match="phase1_end"):
        make({"phase1_end": 0.8, "phase2_end": 0.5})
    assert len(AsymNet.from_config(config(frames=8), clip=None).sn.gates) == 4


def test_embeddings_are_per_step_hidden_states():
    m = make().eval()
    b = batch()
    with torch.no_grad():
        v, i = m.encode_clip(b), m.encode_image(b)
    assert v.shape == (6, L * 128) and i.shape == (6, 128)
    steps = v.view(6, L, 128).abs().amax(-1) > 0
    # the track: present frames packed first (clip 3 has a gap, clip 1 falls back to its real frames)
    assert steps.tolist() == [[True, True, True, False], [True] * 4, [True, False, False, False],
                              [True, True, True, False], [True] * 4, [True] * 4]


def test_tracks_pack_the_crops_and_ignore_padding():
    m = make().eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 2, 3, S, S, generator=g)
    ones = torch.ones(2, 2, dtype=torch.bool)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])
    short = {"frames": frames, "frame_mask": ones, "target_box": full.expand(2, 2, 4), "target_present": ones}
    # the same two frames at positions 0 and 2 of 4, garbage elsewhere: padded (1) and absent (3)
    spread = torch.randn(2, L, 3, S, S, generator=g)
    spread[:, [0, 2]] = frames
    mask = torch.tensor([True, False, True, True]).expand(2, L)
    present = torch.tensor([True, False, True, False]).expand(2, L)
    long = {"frames": spread, "frame_mask": mask, "target_box": full.expand(2, L, 4), "target_present": present}
    with torch.no_grad():
        ref = m.encode_clip(short)
        got = m.encode_clip(long)
    assert torch.allclose(got[:, :2 * 128], ref, atol=1e-5) and (got[:, 2 * 128:] == 0).all()


def test_frames_are_cropped_to_the_target_box():
    m = make().eval()
    seen = []
    m.visual["frame"].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    g = torch.Generator().manual_seed(7)
    colour = torch.tensor([0.3, -0.5, 0.8])[:, None, None]
    frame = torch.randn(1, 2, 3, S, S, generator=g)
    frame[..., :40, :40] = colour                                        # the box's region, and a margin
    one = torch.ones(1, 2, dtype=torch.bool)
    box = torch.tensor([0.0, 0.0, 0.5, 0.5]).expand(1, 2, 4)
    with torch.no_grad():
        cropped = m.encode_clip({"frames": frame, "frame_mask": one, "target_present": one, "target_box": box})
        # the crop is the box's region resampled to S x S: that colour only
        assert seen[-1].shape == (2, 3, S, S)
        assert torch.allclose(seen[-1], colour.expand(2, 3, S, S), atol=1e-5)
        flat = m.encode_clip({"frames": colour.expand(1, 2, 3, S, S).clone(), "frame_mask": one,
                              "target_present": ~one, "target_box": box})
        # a clip without the product keeps its whole frames, uncropped
        m.encode_clip({"frames": frame, "frame_mask": one, "target_present": ~one, "target_box": box})
        assert torch.equal(seen[-1], frame[0])
    assert torch.allclose(cropped, flat, atol=1e-5)
    with pytest.raises(ValueError, match="target_box"):
        m.encode_clip({"frames": frame, "frame_mask": one})


def test_leaf_net_is_an_fc_on_the_concatenation():
    torch.manual_seed(3)
    sn = SimilarityNetwork(8, 4).eval()
    with torch.no_grad():
        sn.bn.running_mean.normal_()
        sn.bn.running_var.uniform_(0.5, 2)
        h, m = torch.randn(2, 4, 8), torch.randn(3, 8)
        x, logits = sn.leaves(h, m, torch.ones(2, 4, dtype=torch.bool), bn_batch_stats=False)
        w = torch.cat([sn.fc_h.weight, sn.fc_m.weight], 1)                 # FC(2d -> d)
        pair = torch.cat([h[:, None].expand(2, 3, 4, 8), m[None, :, None].expand(2, 3, 4, 8)], -1)
        u = torch.relu(pair @ w.T + sn.fc_h.bias)
        bn = (u - sn.bn.running_mean) / torch.sqrt(sn.bn.running_var + sn.bn.eps) * sn.bn.weight + sn.bn.bias
    assert x.shape == (2, 3, 4, 8) and logits.shape == (2, 3, 4)
    assert torch.allclose(x, bn, atol=1e-5)
    assert torch.allclose(logits, bn @ sn.out.weight[0] + sn.out.bias, atol=1e-5)


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_fusion_tree_gates_paths_and_masked_leaves():
    """Four leaves, d = 2, every gate scores x[0] (level bias b): gates by hand."""
    sn = SimilarityNetwork(2, 4)
    with torch.no_grad():
        for lvl, gate in enumerate(sn.gates):
            gate.weight.copy_(torch.tensor([[1.0, 0.0]]))
            gate.bias.fill_(0.1 * lvl)
    a = [0.2, -0.4, 1.0, 0.3]                                             # x[..., 0] per leaf
    x = torch.tensor([[v, 5.0] for v in a]).view(1, 1, 4, 2)
    y = torch.tensor([0.9, 0.2, 0.6, 0.4]).view(1, 1, 4)

    def pair(p, q):                                                       # softmax between siblings
        return math.exp(p) / (math.exp(p) + math.exp(q)), math.exp(q) / (math.exp(p) + math.exp(q))

    g0 = [*pair(a[0], a[1]), *pair(a[2], a[3])]
    m01, m23 = (a[0] + a[1]) / 2, (a[2] + a[3]) / 2
    g1 = pair(m01 + 0.1, m23 + 0.1)
    root = _sig((m01 + m23) / 2 + 0.2)
    want = root * (g1[0] * (g0[0] * 0.9 + g0[1] * 0.2) + g1[1] * (g0[2] * 0.6 + g0[3] * 0.4))
    with torch.no_grad():
        got = sn.fuse(x, y, torch.ones(1, 4, dtype=torch.bool))
    assert got.shape == (1, 1) and abs(got.item() - want) < 1e-6

    # leaves 1 and 3 masked (whatever their values): the gates renormalise over leaves 0 and 2
    x2, y2 = x.clone(), y.clone()
    x2[..., [1, 3], 0], y2[..., [1, 3]] = 100.0, 1.0
    with torch.no_grad():
        got = sn.fuse(x2, y2, torch.tensor([[True, False, True, False]]))
    g1 = pair(a[0] + 0.1, a[2] + 0.1)                                     # parents = the real child
    want = _sig((a[0] + a[2]) / 2 + 0.2) * (g1[0] * 0.9 + g1[1] * 0.6)
    assert abs(got.item() - want) < 1e-6

    # a whole subtree masked: all the weight below the root goes to the other one
    x3, y3 = x.clone(), y.clone()
    x3[..., [2, 3], 0], y3[..., [2, 3]] = 100.0, 1.0
    with torch.no_grad():
        got = sn.fuse(x3, y3, torch.tensor([[True, True, False, False]]))
    want = _sig(m01 + 0.2) * (pair(a[0], a[1])[0] * 0.9 + pair(a[0], a[1])[1] * 0.2)
    assert abs(got.item() - want) < 1e-6
    with torch.no_grad():                                                 # no real leaf: 0, no NaN
        assert sn.fuse(x3, y3, torch.zeros(1, 4, dtype=torch.bool)).item() == 0


def test_score_every_pair_at_gallery_scale_in_chunks(monkeypatch):
    m = make().eval()
    with torch.no_grad():
        q = m.encode_clip(batch())[[0, 2, 3]]                             # full, 1-step and gapped tracks
        gallery = m.encode_image({"image": torch.randn(600, 3, S, S, generator=torch.Generator().manual_seed(9))})
        s = m.score(q, gallery)
        assert s.shape == (3, 600) and torch.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
        # one pair at a time gives the same scores (no dependence on the other pairs)
        for i, j in [(0, 0), (1, 17), (2, 599)]:
            assert torch.allclose(m.score(q[i:i + 1], gallery[j:j + 1])[0, 0], s[i, j], atol=1e-6)
        monkeypatch.setattr(asym, "SCORE_CHUNK", 7 * L * 128)                # 7 images per chunk
        assert torch.allclose(m.score(q, gallery), s, atol=1e-6)
        m.train()                                                            # BN running stats in any mode
        assert torch.allclose(m.score(q, gallery[:5]), s[:, :5], atol=1e-6)
    # inference only: the evaluation calls it outside no_grad and reads the scores with numpy()
    out = m.score(q.clone().requires_grad_(), gallery[:2].clone().requires_grad_())
    assert not out.requires_grad and out.numpy().shape == (3, 2)


def test_forward_backward_joint_phase_reaches_every_parameter():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"match_loss", "leaf_loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v.requires_grad for v in out.values())
    sum(out.values()).backward()
    assert all(grads(m).values()), [n for n, ok in grads(m).items() if not ok]


def test_loss_is_the_weighted_bce_over_all_pairs():
    """The fused BCE by hand from the model's own scores (positives weighted N/2)."""
    m = make().eval()
    b = batch()
    with torch.no_grad():
        s = m.score(m.encode_clip(b), m.encode_image(b))                    # eval: running-stat BN
        out = m.loss(b)
    labels = b["product"].tolist()
    terms = []
    for i in range(6):
        for j in range(6):
            pos = labels[i] == labels[j]
            p = s[i, j].item()
            terms.append(-(3.0 * math.log(p) if pos else math.log(1 - p)))
    assert abs(out["match_loss"].item() - sum(terms) / len(terms)) < 1e-4


def test_phases_freeze_what_the_port_freezes():
    m = make({"phase1_end": 0.3, "phase2_end": 0.6})
    assert [m.phase(s) for s in (0, 29, 30, 59, 60, 99, None)] == [1, 1, 2, 2, 3, 3, 3]
    gate_names = {n for n, _ in m.named_parameters() if n.startswith("sn.gates.")}

    out = m.loss({**batch(), "step": 0})                                 # phase 1: features + leaves
    assert not out["match_loss"].requires_grad and out["leaf_loss"].requires_grad
    sum(out.values()).backward()
    g = grads(m)
    assert not any(g[n] for n in gate_names) and all(ok for n, ok in g.items() if n not in gate_names)

    m.zero_grad(set_to_none=True)
    bn = m.visual["frame"].head[-1]
    running = bn.running_mean.clone()
    out = m.loss({**batch(), "step": 45})                                # phase 2: gates only
    assert out["match_loss"].requires_grad and not out["leaf_loss"].requires_grad
    sum(out.values()).backward()
    g = grads(m)
    assert all(g[n] for n in gate_names) and not any(ok for n, ok in g.items() if n not in gate_names)
    assert torch.equal(bn.running_mean, running) and m.training and bn.training   # eval inside only


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, products=[0, 1, 2, 3], seed=3)
    losses = overfit_losses(m, b, 40)
    assert losses[-1] < 0.5 * losses[0], losses


def test_an_l_that_is_not_a_power_of_two_scores_as_padded_frames():
    """L = 6 builds the 8-leaf tree; its scores equal those of the same weights at L = 8 on the
    same clips with two padded frames appended (the tree ignores masked leaves either way)."""
    torch.manual_seed(0)
    six = AsymNet.from_config(config({"hidden": 32, "width": 32}, frames=6), clip=None).eval()
    eight = AsymNet.from_config(config({"hidden": 32, "width": 32}, frames=8), clip=None).eval()
    eight.load_state_dict(six.state_dict())
    assert len(six.sn.gates) == 4
    per_frame = ("frames", "frame_mask", "target_box", "target_present")
    a, b = batch(4, products=[0, 1, 2, 3], seed=1), batch(4, products=[0, 1, 2, 3], seed=2)   # L = 4 each
    b6 = {**a, **{k: torch.cat([a[k], b[k][:, :2]], 1) for k in per_frame}}
    b6["frame_mask"][:, 4:] = b6["frame_mask"][:, 4:] | True   # frames 5-6 real (a's gaps stay)
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :2])], 1)  # noqa: E731
    b8 = {**b6, **{k: pad(b6[k]) for k in per_frame}}
    with torch.no_grad():
        s6 = six.score(six.encode_clip(b6), six.encode_image(b6))
        s8 = eight.score(eight.encode_clip(b8), eight.encode_image(b8))
    assert s6.shape == (4, 4) and torch.allclose(s6, s8, atol=1e-6)
