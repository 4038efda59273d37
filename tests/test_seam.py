"""SEAM baseline (baselines/seam.py): the emulated detector's candidates, the classifier and its
loss against direct formulas, the weak best-box selection, the non-local block, the test-time
track, padding, the phases and training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

import baselines.seam as seam_module
from baselines.seam import (
    SEAM,
    NonLocal1D,
    SEAMConfig,
    candidate_boxes,
    match_ce,
    match_logits,
)
from sgmn.config import validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses, trainer_loss

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(seam: dict | None = None, steps: int = 100, seed: int = 0) -> SEAM:
    torch.manual_seed(seed)
    cfg = validate({"method": "seam", "model": {"num_frames": 4, "image_size": S},
                    "train": {"steps": steps}, "seam": seam or {}})
    return SEAM.from_config(cfg, clip=None)


def calibrated(m: SEAM, b: dict) -> SEAM:
    """m in eval mode with every BN's running statistics set to one training pass over b (at
    init they are 0 / 1 and the activations shrink layer after layer until all boxes look alike)."""
    for mod in m.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.momentum = 1.0
    m.train()
    with torch.no_grad():
        m.loss(b)
    torch.nn.init.normal_(m.non_local.w.weight, std=0.1)                # the block no longer the identity
    return m.eval()


def box(x1, y1, x2, y2):
    return [x1, y1, x2, y2]


def batch(b: int = 4, l: int = 3, products=None, seed: int = 1) -> dict:
    """Clips with a target box in most frames and 0-3 distractor boxes; clip 1 has no target at
    all, clip 2 one padded frame."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[2, -1] = False
    xy = torch.rand(b, l, 16, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.25 + torch.rand(b, l, 16, 2, generator=g) * 0.25], -1)
    counts = torch.randint(1, 5, (b, l), generator=g)
    target_index = torch.where(torch.rand(b, l, generator=g) < 0.8, 0, -1)
    target_index[1] = -1
    present = target_index >= 0
    jitter = (torch.rand(b, l, 4, generator=g) - 0.5) * 0.05
    return {"frames": torch.randn(b, l, 3, S, S, generator=g) * mask[..., None, None, None],
            "frame_mask": mask, "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else list(range(b))),
            "target_box": ((boxes[:, :, 0] + jitter).clamp(0, 1)) * present[..., None],
            "target_present": present, "boxes": boxes, "box_counts": counts, "target_index": target_index}


def test_registry_config_and_library_pieces_run():
    assert get_method("seam") is SEAM
    m = make({"max_distractors": 2, "roi_size": 4}, steps=50)
    assert isinstance(m.cfg, SEAMConfig) and m.cfg.max_distractors == 2 and m.uses_text is False
    assert m.aggregation_step == 10                                      # 0.2 x 50
    assert any(isinstance(x, BasicBlock) for x in m.visual.modules())
    calls = []
    real = seam_module.roi_align

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out.shape)
        return out
    seam_module.roi_align = spy
    try:
        m.eval()
        with torch.no_grad():
            m.encode_image({"image": torch.randn(2, 3, S, S)})
    finally:
        seam_module.roi_align = real
    assert calls == [torch.Size([2, 64, 4, 4])]


def test_candidates_are_the_target_box_then_the_first_distractors():
    mask = torch.tensor([[True, True, True, False]])
    boxes = torch.zeros(1, 4, 16, 4)
    for t in range(4):
        for j in range(6):
            boxes[0, t, j] = torch.tensor(box(0.1 * j, 0.01 * t, 0.1 * j + 0.3, 0.5))
    b = {"frame_mask": mask, "boxes": boxes,
         "box_counts": torch.tensor([[5, 2, 1, 6]]), "target_index": torch.tensor([[1, -1, 0, 0]]),
         "target_box": torch.tensor(box(0.2, 0.2, 0.9, 0.9)).expand(1, 4, 4),
         "target_present": torch.tensor([[True, False, True, True]])}
    got, valid = candidate_boxes(b, 3)
    assert got.shape == (1, 4, 4, 4)
    # frame 0: target box, then distractors 0, 2, 3 (1 is the target's annotation; 4 past the cap)
    assert valid[0, 0].tolist() == [True, True, True, True]
    assert torch.allclose(got[0, 0, 0], torch.tensor(box(0.2, 0.2, 0.9, 0.9)))
    assert torch.allclose(got[0, 0, 1:, 0], torch.tensor([0.0, 0.2, 0.3]))
    # frame 1: no target, distractors 0 and 1
    assert valid[0, 1].tolist() == [False, True, True, False]
    assert torch.allclose(got[0, 1, 1:3, 0], torch.tensor([0.0, 0.1]))
    # frame 2: the target alone (its only box is the target's annotation); frame 3 is padding
    assert valid[0, 2].tolist() == [True, False, False, False]
    assert valid[0, 3].tolist() == [False] * 4
    # the test-time track: target boxes only
    _, track = candidate_boxes(b, 0)
    assert track.shape == (1, 4, 1) and track[0, :, 0].tolist() == [True, False, True, False]
    # a clip without any box falls back to its whole (real) frames
    none = {"frame_mask": mask, "target_box": torch.zeros(1, 4, 4),
            "target_present": torch.zeros(1, 4, dtype=torch.bool)}
    got, valid = candidate_boxes(none, 3)
    assert valid.shape == (1, 4, 1) and valid[0, :, 0].tolist() == [True, True, True, False]
    assert torch.allclose(got[0, :, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(4, 4))


def test_match_logits_are_the_squared_difference_classifier():
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 2)
    v, s = torch.randn(3, 6), torch.randn(5, 6)
    p = torch.softmax(fc((v[:, None] - s[None]) ** 2), -1)[..., 1]         # (3, 5), direct
    got = match_logits(fc, v, s)
    assert got.shape == (3, 5)
    assert torch.allclose(torch.sigmoid(got), p, atol=1e-6)


def test_match_ce_is_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g)
    target = torch.rand(4, 5, generator=g) > 0.6
    keep = torch.rand(4, 5, generator=g) > 0.2
    two = torch.stack([torch.zeros_like(logits), logits], -1)[keep]          # (k, 2): z_0 = 0, z_1
    expected = F.cross_entropy(two, target[keep].long(), weight=torch.tensor([1.0, 0.3]))
    assert torch.allclose(match_ce(logits, target, keep, 0.3), expected, atol=1e-6)


def test_non_local_1d_matches_its_formula_and_ignores_padding():
    torch.manual_seed(0)
    block = NonLocal1D(6)
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    assert torch.equal(block(x, mask), x)                                 # W starts at zero
    torch.nn.init.normal_(block.w.weight)
    got = block(x, mask)
    for b in range(2):
        real = mask[b].nonzero().squeeze(1)
        xr = x[b, real]                                                   # (n, D)
        pair = torch.cat([block.theta(xr)[:, None].expand(-1, len(real), -1),
                          block.phi(xr)[None].expand(len(real), -1, -1)], -1)   # (n, n, 2h): [theta_i; phi_j]
        f = F.relu(block.f(pair)).squeeze(-1) / len(real)
        ref = xr + block.w(f @ block.g(xr))
        assert torch.allclose(got[b, real], ref, atol=1e-5)
    x2 = x.clone()
    x2[1, [1, 3]] = torch.randn(2, 6)
    assert torch.allclose(block(x2, mask)[1, [0, 2]], got[1, [0, 2]], atol=1e-6)


def test_weak_selection_and_losses_against_a_per_box_reference():
    """In eval mode (BN on running statistics) each candidate box is described on its own, scored
    against the shops with the direct classifier formula; the loss's terms must agree."""
    b = batch()
    m = calibrated(make(), b)
    with torch.no_grad():
        out = m.loss({**b, "step": 0})          # pretraining phase: weak + match terms
        out_agg = m.loss(b)                     # no step: weak + aggregation
        shops = m.encode_image(b)
        fc = m.classifier

        def logit(d, s):
            p = torch.softmax(fc((d - s) ** 2), -1)
            return (p[..., 1] / p[..., 0]).log()

        rows, targets, picked, has = [], [], torch.zeros(4, 3, 128), torch.zeros(4, 3, dtype=torch.bool)
        pre_rows, pre_targets, n_target, n_frames = [], [], 0, 0
        for c in range(4):
            for t in range(3):
                if not b["frame_mask"][c, t]:
                    continue
                cands, is_target = [], []
                if b["target_present"][c, t]:
                    cands.append(b["target_box"][c, t])
                    is_target.append(True)
                others = [j for j in range(int(b["box_counts"][c, t])) if j != int(b["target_index"][c, t])]
                for j in others[:4]:
                    cands.append(b["boxes"][c, t, j])
                    is_target.append(False)
                if not cands:
                    continue
                desc = m.describe(b["frames"][c, t][None], torch.stack(cands), torch.zeros(len(cands), dtype=torch.long))
                own = torch.stack([logit(d, shops[c]) for d in desc])
                best = int(own.argmax())
                if len(cands) > 1:                                        # no near-tie decides the test
                    assert own.topk(2).values.diff().abs() > 1e-3
                n_frames += 1
                n_target += int(is_target[best])
                picked[c, t], has[c, t] = desc[best], True
                for n in range(4):                                        # chosen box vs every shop
                    rows.append(logit(desc[best], shops[n]))
                    targets.append(b["product"][c] == b["product"][n])
                for k in range(len(cands)):                               # others vs own shop
                    if k != best:
                        rows.append(own[k])
                        targets.append(False)
                if is_target[0]:                                          # pretraining: target vs every shop
                    for n in range(4):
                        pre_rows.append(logit(desc[0], shops[n]))
                        pre_targets.append(b["product"][c] == b["product"][n])

        def weighted_ce(z, y):
            z = torch.stack(z)
            return F.cross_entropy(torch.stack([torch.zeros_like(z), z], -1), torch.tensor(y).long(),
                                   weight=torch.tensor([1.0, 0.3]))

        assert torch.allclose(out["weak_loss"], weighted_ce(rows, targets), atol=1e-4)
        assert torch.allclose(out["match_loss"], weighted_ce(pre_rows, pre_targets), atol=1e-4)
        assert out["aggregation_loss"] == 0 and out_agg["match_loss"] == 0
        assert torch.allclose(out["selected_target"], torch.tensor(n_target / n_frames))
        # clip 1 has distractors only: its video vector aggregates the chosen distractor boxes
        video = m.aggregate(picked, has)
        agg = [logit(video[c], shops[n]) for c in range(4) for n in range(4)]
        agg_t = [bool(b["product"][c] == b["product"][n]) for c in range(4) for n in range(4)]
        assert torch.allclose(out_agg["aggregation_loss"], weighted_ce(agg, agg_t), atol=1e-4)


def test_phases_switch_at_the_configured_fraction():
    m = make({"aggregation_start": 0.3}, steps=10)
    b = batch()
    before, after = m.loss({**b, "step": 2}), m.loss({**b, "step": 3})
    assert before["aggregation_loss"] == 0 and before["match_loss"] > 0
    assert after["match_loss"] == 0 and after["aggregation_loss"] > 0
    assert set(before) == {"weak_loss", "match_loss", "aggregation_loss", "selected_target"}


def test_forward_backward_reaches_every_part():
    m = make()
    out = m.loss(batch())
    loss = sum(v for k, v in out.items() if k.endswith("_loss"))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.startswith("non_local.") and not name.startswith("non_local.w."):
            continue                  # zero-initialised W: theta / phi / g / f wait for it to move
        assert p.grad.abs().sum() > 0, name


def test_encode_clip_follows_the_target_track_and_ignores_padding():
    b = batch()
    m = calibrated(make(), b)
    with torch.no_grad():
        ref = m.encode_clip(b)
        assert ref.shape == (4, 128) and ref.std(0).mean() > 0.1         # clips differ
        shifted = {**b, "target_box": (b["target_box"] + 0.1).clamp(0, 1)}
        assert not torch.allclose(m.encode_clip(shifted)[0], ref[0], atol=1e-2)   # the box matters
        # distractor boxes play no part at test time
        assert torch.allclose(m.encode_clip({**b, "boxes": torch.rand(4, 3, 16, 4)}), ref, atol=1e-6)
        # frames without the target leave the clip: clip 0 with frame 1's target removed
        single = {k: v[:1].clone() for k, v in b.items()}
        single["target_present"][0] = torch.tensor([True, False, True])
        kept = {k: v[:, [0, 2]] for k, v in single.items() if v.dim() >= 2 and k != "image"}
        assert torch.allclose(m.encode_clip(single), m.encode_clip(kept), atol=1e-5)
        assert not torch.allclose(m.encode_clip(single), ref[:1], atol=1e-3)
        # clip 1 has no target: its whole frames, as if the target box were the whole frame
        whole = {"frames": b["frames"][1:2], "frame_mask": b["frame_mask"][1:2],
                 "target_box": torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(1, 3, 4),
                 "target_present": torch.ones(1, 3, dtype=torch.bool)}
        assert torch.allclose(ref[1:2], m.encode_clip(whole), atol=1e-5)
        # padded frames: garbage pixels and boxes there change nothing
        garbage = {**b, "frames": b["frames"].clone(), "target_box": b["target_box"].clone(),
                   "target_present": b["target_present"].clone()}
        garbage["frames"][2, -1] = torch.randn(3, S, S)
        garbage["target_box"][2, -1] = torch.tensor([0.0, 0.0, 0.5, 0.5])
        garbage["target_present"][2, -1] = True
        assert torch.allclose(m.encode_clip(garbage), ref, atol=1e-6)


def test_score_is_the_match_logit_at_gallery_scale():
    m = calibrated(make(), batch())
    with torch.no_grad():
        v = m.encode_clip(batch(b=3))
        g = m.encode_image({"image": torch.randn(600, 3, S, S)})
        s = m.score(v, g)
        assert s.shape == (3, 600) and torch.isfinite(s).all()
        p = torch.softmax(m.classifier((v[:, None] - g[None]) ** 2), -1)[..., 1]
        with torch.autocast("cpu", dtype=torch.bfloat16):                # the expansion stays in fp32
            s_bf16 = m.score(v, g)
    assert torch.allclose(torch.sigmoid(s), p, atol=1e-5) and s.std() > 1e-3
    assert s_bf16.dtype == torch.float32 and torch.allclose(s_bf16, s, atol=1e-5)


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, l=2, seed=3)
    losses = overfit_losses(m, b, 40, lr=2e-3, loss_of=trainer_loss)
    assert losses[-1] < 0.3 * losses[0], losses
