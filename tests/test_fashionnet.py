"""FashionNet baseline (baselines/fashionnet.py): losses and gradients, landmark targets and
pooling at the predicted landmarks, the landmark-first weighting, encoders and padding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.fashionnet import (
    FashionNet,
    FashionNetConfig,
    landmark_losses,
    landmark_pool,
    landmark_targets,
)
from sgmn.config import resolve_run_config, validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses, trainer_loss as total

S, STEPS = 64, 100


pytestmark = pytest.mark.usefixtures("one_thread")


def make(section: dict | None = None, seed: int = 0) -> FashionNet:
    torch.manual_seed(seed)
    cfg = resolve_run_config(validate({"method": "fashionnet", "model": {"num_frames": 4, "image_size": S},
                                       "train": {"steps": STEPS}, "fashionnet": section or {}}))
    return FashionNet.from_config(cfg, clip=None)


def batch(b: int = 6, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    xy = torch.rand(b, l, 2, generator=g) * 0.4
    box = torch.cat([xy, (xy + 0.3 + torch.rand(b, l, 2, generator=g) * 0.5).clamp(max=1)], -1)
    present = torch.rand(b, l, generator=g) > 0.3
    present[1] = False                                                   # product never in view
    return {"frames": torch.randn(b, l, 3, S, S, generator=g), "frame_mask": mask,
            "target_box": box * present.unsqueeze(-1), "target_present": present,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4])}


def test_registry_and_config():
    assert get_method("fashionnet") is FashionNet
    m = make({"num_landmarks": 4, "width": 64, "embed_dim": 32})
    assert isinstance(m.cfg, FashionNetConfig) and m.cfg.num_landmarks == 4 and m.uses_text is False
    assert m.steps == STEPS and m.margin == 0.2
    assert m.visual.pose[-1].out_features == 3 * 4 and m.visual.fusion.out_features == 32


def test_forward_backward_reaches_every_parameter():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"triplet_loss", "id_loss", "landmark_loss", "visibility_loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    total(out).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, l=2, products=[0, 1, 2, 3], seed=3)
    losses = overfit_losses(m, b, 40, loss_of=total)
    assert losses[-1] < 0.5 * losses[0], losses


def test_encoders_unit_norm_and_cosine_score():
    m = make().eval()
    with torch.no_grad():
        v = m.encode_clip(batch(b=5, products=[0, 1, 2, 3, 4]))
        i = m.encode_image({"image": torch.randn(7, 3, S, S)})
        s = m.score(v, i)
    assert v.shape == (5, 128) and i.shape == (7, 128) and s.shape == (5, 7)
    assert torch.allclose(v.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(s, F.cosine_similarity(v[:, None], i[None], dim=-1), atol=1e-5)


def test_padding_frames_do_not_change_the_embedding():
    m = make().eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(3, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(3, 2, dtype=torch.bool)}
    mask = torch.tensor([[True, False, True, False]]).expand(3, 4)
    spread = torch.randn(3, 4, 3, S, S, generator=g)                    # garbage in the padded frames
    spread[:, [0, 2]] = frames
    with torch.no_grad():
        ref = m.encode_clip(short)
        assert torch.allclose(m.encode_clip({"frames": spread, "frame_mask": mask}), ref, atol=1e-5)
        # the clip is the normalised mean of its frames' normalised embeddings
        single = F.normalize(m.encode_image({"image": frames.flatten(0, 1)}), dim=-1).view(3, 2, -1)
        assert torch.allclose(ref, F.normalize(single.mean(1), dim=-1), atol=1e-5)


def test_landmark_targets_corners_mid_edges_and_visibility():
    box = torch.tensor([[0.1, 0.2, 0.5, 0.6],        # inside the frame
                        [0.0, 0.2, 0.5, 1.0],        # clamped at the left and bottom borders
                        [0.1, 0.2, 0.5, 0.6]])       # product not present
    present = torch.tensor([True, True, False])
    pts, vis = landmark_targets(box, present, 8)
    expected0 = torch.tensor([[0.1, 0.2], [0.5, 0.2], [0.5, 0.6], [0.1, 0.6],
                              [0.3, 0.2], [0.5, 0.4], [0.3, 0.6], [0.1, 0.4]])
    assert torch.allclose(pts[0], expected0)
    assert vis[0].all() and not vis[2].any()
    # box 1: x1 = 0 truncates the left corners and mid-left; y2 = 1 the bottom ones and mid-bottom
    assert vis[1].tolist() == [False, True, False, False, True, True, False, False]
    pts4, vis4 = landmark_targets(box, present, 4)
    assert torch.equal(pts4, pts[:, :4]) and torch.equal(vis4, vis[:, :4])


def test_landmark_pool_is_the_window_max_times_visibility_and_differentiable():
    fmap = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    fmap[0, 1] = -fmap[0, 1]
    # cell (row 1, col 2) centre, and cell (row 0, col 0) centre
    points = torch.tensor([[[2.5 / 4, 1.5 / 4], [0.5 / 4, 0.5 / 4]]], requires_grad=True)
    vis = torch.tensor([[0.5, 1.0]])
    out = landmark_pool(fmap, points, vis)                               # (1, K * C), point-major
    # channel 0 (values r*4+c): max over rows 0-2, cols 1-3 = 11; over rows 0-1, cols 0-1 = 5
    # channel 1 (negated): max = -(smallest) = -1 and 0
    assert torch.allclose(out, torch.tensor([[11 * 0.5, -1 * 0.5, 5.0, 0.0]]))
    # between two cell centres the read-out interpolates, so it is differentiable in the points
    half = torch.tensor([[[3.0 / 4, 1.5 / 4]]], requires_grad=True)     # halfway between cols 2 and 3
    landmark_pool(fmap[:, :1], half, torch.ones(1, 1)).sum().backward()
    assert half.grad.abs().sum() > 0


def test_landmark_losses_only_count_visible_positions():
    pred = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    target = torch.tensor([[[0.2, 0.1], [1.0, 1.0]]])
    visible = torch.tensor([[True, False]])
    logits = torch.tensor([[0.0, 2.0]])
    l2, ce = landmark_losses(pred, logits, target, visible)
    assert torch.allclose(l2, torch.tensor(0.3 ** 2 + 0.4 ** 2))       # the invisible point is ignored
    expected_ce = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))) / 2
    assert torch.allclose(ce, expected_ce)


def test_local_branch_pools_at_the_predicted_landmarks():
    """With the landmark terms weighted 0, the pose head's position outputs still get a gradient
    from the retrieval terms: only through the pooling at its predicted points."""
    m = make({"landmark_weight": 0.0})
    out = m.loss({**batch(), "step": STEPS - 1})
    assert out["landmark_loss"] == 0 and out["visibility_loss"] == 0
    total(out).backward()
    head = m.visual.pose[-1]
    k = m.cfg.num_landmarks
    assert head.weight.grad[:2 * k].abs().sum() > 0                     # positions
    assert head.weight.grad[2 * k:].abs().sum() > 0                     # visibilities (pooling weights)


def test_landmark_first_weighting():
    m = make({"landmark_first": 0.25, "landmark_weight": 0.1})
    b = batch()
    assert m.task_weights(0) == (1.0, 0.1) and m.task_weights(24) == (1.0, 0.1)
    assert m.task_weights(25) == (0.1, 1.0) and m.task_weights(None) == (0.1, 1.0)
    with torch.no_grad():
        early, late = m.loss({**b, "step": 0}), m.loss({**b, "step": 50})
    for k in ("triplet_loss", "id_loss"):
        assert torch.allclose(early[k], 0.1 * late[k], rtol=1e-4)
    for k in ("landmark_loss", "visibility_loss"):
        assert torch.allclose(late[k], 0.1 * early[k], rtol=1e-4)


def test_shop_images_are_supervised_with_the_whole_image_box():
    """A model whose pose head outputs exactly the whole-image landmarks, all visible with high
    confidence, has zero landmark L2 on shop images alone."""
    m = make({"num_landmarks": 4})
    head = m.visual.pose[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-30.0, -30, 30, -30, 30, 30, -30, 30, 30, 30, 30, 30]))
    b = batch()
    b["frame_mask"][:] = False
    b["frame_mask"][:, 0] = True
    b["target_present"][:] = True
    b["target_box"] = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(6, 4, 4).clone()
    # frames: the whole-frame box is truncated everywhere -> visibility 0 there, images: 1
    with torch.no_grad():
        out = m.loss({**b, "step": 0})
    assert out["landmark_loss"] < 1e-6
    expected = (6 * 4 * 30 + 6 * 4 * 0) / (12 * 4)                      # BCE(30, 0) ~ 30, BCE(30, 1) ~ 0
    assert torch.allclose(out["visibility_loss"], torch.tensor(expected), rtol=1e-3)


def test_loss_needs_the_target_box():
    m = make()
    b = batch()
    del b["target_box"]
    with pytest.raises(ValueError, match="target_box"):
        m.loss(b)
