"""NVAN baseline (baselines/nvan.py): the space-time non-local block against its formula, padding,
the T = 1 image branch, the triplet and ID losses against hand-made values, BNNeck, training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

from baselines.nvan import (
    NVAN,
    NVANConfig,
    SpaceTimeNonLocal,
    batch_hard_soft_margin,
    batch_local_id_loss,
)
from sgmn.config import validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(nvan: dict | None = None, seed: int = 0) -> NVAN:
    torch.manual_seed(seed)
    cfg = validate({"method": "nvan", "model": {"num_frames": 4, "image_size": S}, "nvan": nvan or {}})
    return NVAN.from_config(cfg, clip=None)


def batch(b: int = 5, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    return {"frames": torch.randn(b, l, 3, S, S, generator=g) * mask[..., None, None, None],
            "frame_mask": mask, "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3])}


def randomise_bn_(module: torch.nn.Module) -> None:
    """Non-zero BN affine parameters and running stats (the non-local output BN starts at 0)."""
    g = torch.Generator().manual_seed(11)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def test_registry_config_and_architecture():
    assert get_method("nvan") is NVAN
    m = make()
    assert isinstance(m.cfg, NVANConfig) and m.cfg.widths == (16, 32, 64, 128) and m.uses_text is False
    layers = list(m.visual.layers)
    assert sum(isinstance(x, BasicBlock) for x in layers) == 8                 # 4 stages x 2 blocks
    # non-local after stage 2's last block (layer 4) and after both stage-3 blocks (6 and 8)
    assert [i for i, x in enumerate(layers) if isinstance(x, SpaceTimeNonLocal)] == [4, 6, 8]
    assert [layers[i].bn.num_features for i in (4, 6, 8)] == [32, 64, 64]
    plain = make({"non_local": False})
    assert not any(isinstance(x, SpaceTimeNonLocal) for x in plain.visual.modules())
    # the last stage keeps stride 1: a 64-px frame -> 4 x 4 at stage 3 and stage 4
    maps = []
    hooks = [layers[i].register_forward_hook(lambda mod, i, o: maps.append(o.shape[-2:])) for i in (5, 9)]
    m.eval()
    with torch.no_grad():
        m.encode_image({"image": torch.randn(2, 3, S, S)})
    for h in hooks:
        h.remove()
    assert maps == [torch.Size([4, 4]), torch.Size([4, 4])]


def test_non_local_block_matches_its_formula_and_masks_padded_keys():
    torch.manual_seed(0)
    block = SpaceTimeNonLocal(8).eval()
    randomise_bn_(block)
    b, l, h, w = 2, 3, 2, 3
    mask = torch.tensor([[True, True, True], [True, False, True]])
    idx = mask.flatten().nonzero().squeeze(1)
    x = torch.randn(len(idx), 8, h, w)
    with torch.no_grad():
        got = block(x, idx, mask)
        # reference: per clip, every position of its real frames attends to all of them
        for clip in range(b):
            rows = [i for i, j in enumerate(idx.tolist()) if j // l == clip]
            xc = x[rows]                                                  # (t, C, h, w)
            def flat(conv, xc=xc):
                return conv(xc).permute(0, 2, 3, 1).reshape(-1, 4)       # (t*h*w, C/2)
            att = torch.softmax(flat(block.theta) @ flat(block.phi).T, dim=-1)  # (t*h*w, t*h*w)
            y = (att @ flat(block.g)).view(len(rows), h, w, 4).permute(0, 3, 1, 2)
            ref = xc + block.bn(block.w(y))
            assert torch.allclose(got[rows], ref, atol=1e-5)
        # joint space-time: changing frame 1 of clip 0 changes frame 0's output
        x2 = x.clone()
        x2[1] += 1.0
        assert not torch.allclose(block(x2, idx, mask)[0], got[0], atol=1e-4)


def test_zero_initialised_non_local_is_the_identity():
    block = SpaceTimeNonLocal(8)
    x = torch.randn(4, 8, 2, 2)
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert torch.equal(block(x, torch.arange(4), mask), x)


def test_batch_hard_soft_margin_on_hand_made_points():
    # 1-D points: anchors a0 (label 0) at 0, a1 (label 1) at 10; others at 1 (0), 3 (0), 4 (1), 12 (1)
    anchor = torch.tensor([[0.0], [10.0]])
    other = torch.tensor([[1.0], [3.0], [4.0], [12.0]])
    got = batch_hard_soft_margin(anchor, other, torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]))
    # a0: farthest positive 3, nearest negative 4 -> softplus(-1); a1: farthest positive 6, nearest negative 7
    expected = (F.softplus(torch.tensor(3.0 - 4.0)) + F.softplus(torch.tensor(6.0 - 7.0))) / 2
    assert torch.allclose(got, expected)
    # an anchor without any positive is left out
    got = batch_hard_soft_margin(anchor, other[:2], torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert torch.allclose(got, got.new_zeros(()))


def test_batch_local_id_loss_is_a_normalised_classifier():
    g = torch.Generator().manual_seed(0)
    feats, protos = torch.randn(4, 6, generator=g), torch.randn(3, 6, generator=g)
    labels, proto_labels = torch.tensor([2, 0, 1, 1]), torch.tensor([0, 1, 2])
    logits = 10 * F.cosine_similarity(feats[:, None], protos[None], dim=-1)
    expected = F.cross_entropy(logits, torch.tensor([2, 0, 1, 1]))        # one prototype per product
    assert torch.allclose(batch_local_id_loss(feats, labels, protos, proto_labels, 10.0), expected, atol=1e-5)
    # two prototypes of one product: the target is their summed probability
    protos2, proto_labels2 = torch.cat([protos, protos[:1] * 2]), torch.tensor([0, 1, 2, 0])
    p = torch.softmax(10 * F.cosine_similarity(feats[:, None], protos2[None], dim=-1), -1)
    own = labels[:, None] == proto_labels2[None]
    expected2 = -(p * own).sum(1).log().mean()
    assert torch.allclose(batch_local_id_loss(feats, labels, protos2, proto_labels2, 10.0), expected2, atol=1e-5)


def test_forward_backward_and_frozen_bnneck_bias():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"triplet_loss", "id_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 and v > 0 for v in out.values())
    sum(out.values()).backward()
    for name, p in m.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # the non-local blocks' convs get no gradient while their output BN is still zero
        if ".theta." in name or ".phi." in name or ".g." in name or ".w." in name:
            continue
        assert p.grad.abs().sum() > 0, name
    assert not m.bnneck.bias.requires_grad and torch.equal(m.bnneck.bias, torch.zeros(128))


def test_padding_frames_do_not_change_the_embedding():
    m = make().eval()
    randomise_bn_(m.visual)                                              # non-local blocks active
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(2, 2, dtype=torch.bool)}
    mask = torch.cat([torch.ones(2, 2), torch.zeros(2, 2)], 1).bool()
    garbage = {"frames": torch.cat([frames, torch.randn(2, 2, 3, S, S, generator=g)], 1), "frame_mask": mask}
    interleaved = {"frames": garbage["frames"][:, [2, 0, 3, 1]], "frame_mask": mask[:, [2, 0, 3, 1]]}
    with torch.no_grad():
        ref = m.encode_clip(short)
        assert torch.allclose(m.encode_clip(garbage), ref, atol=1e-5)
        assert torch.allclose(m.encode_clip(interleaved), ref, atol=1e-5)
        # the clip's frames interact: a different second frame changes the first one's features
        other = {"frames": torch.stack([frames[:, 0], -frames[:, 1]], 1), "frame_mask": short["frame_mask"]}
        assert not torch.allclose(m.encode_clip(other), ref, atol=1e-3)


def test_image_branch_is_the_clip_network_with_one_frame():
    m = make().eval()
    randomise_bn_(m.visual)
    image = torch.randn(3, 3, S, S)
    with torch.no_grad():
        as_image = m.encode_image({"image": image})
        as_clip = m.encode_clip({"frames": image[:, None], "frame_mask": torch.ones(3, 1, dtype=torch.bool)})
    assert torch.allclose(as_image, as_clip, atol=1e-6)


def test_score_is_cosine_on_unit_embeddings_at_gallery_scale():
    m = make().eval()
    with torch.no_grad():
        v = m.encode_clip(batch(b=3))
        i = m.encode_image({"image": torch.randn(600, 3, S, S)})
        s = m.score(v, i)
    assert s.shape == (3, 600)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(s, F.cosine_similarity(v[:, None], i[None], dim=-1), atol=1e-5)


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, l=2, products=[0, 1, 2, 3], seed=3)
    losses = overfit_losses(m, b, 40, lr=2e-3)
    assert losses[-1] < 0.3 * losses[0], losses
    assert torch.equal(m.bnneck.bias, torch.zeros(128))
