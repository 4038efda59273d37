"""RICE baseline (baselines/rice.py) on the suite's tiny CLIP: losses, gradients, encoders,
padding, the box variant, hard-negative mining, PFR's detached targets and the text branch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.rice import RICE, RICEConfig, icl_loss, mine_hard_negatives, pfr_loss
from sgmn.config import validate
from sgmn.models.clip import create_clip
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(rice: dict | None = None, text_dim: int | None = None, seed: int = 0) -> RICE:
    torch.manual_seed(seed)
    cfg = validate({"method": "rice", "model": {"num_frames": 4, "image_size": S}, "rice": rice or {}})
    return RICE.from_config(cfg, create_clip("lpr-tiny-clip"), text_dim)


def batch(b: int = 6, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    xy = torch.rand(b, l, 2, generator=g) * 0.5
    wh = 0.3 + torch.rand(b, l, 2, generator=g) * 0.5
    box = torch.cat([xy, (xy + wh).clamp(max=1)], -1)
    present = torch.rand(b, l, generator=g) > 0.3
    present[1] = False                                                   # a clip without any box
    frames = torch.randn(b, l, 3, S, S, generator=g) * mask[..., None, None, None]
    return {"frames": frames, "frame_mask": mask, "target_box": box, "target_present": present,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4])}


def test_registry_and_config():
    assert get_method("rice") is RICE
    m = make({"hard_negatives": 2, "pmd_heads": 4})
    assert isinstance(m.cfg, RICEConfig) and m.cfg.hard_negatives == 2 and m.cfg.pmd_heads == 4
    assert m.uses_text is False and m.visual.output_tokens


def test_forward_backward_gradients_and_decoder_is_training_only():
    m = make()
    b = batch()
    out = m.loss(b)
    assert set(out) == {"icl_loss", "pmd_loss", "pfr_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    sum(out.values()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    heads = ("decoder.", "pfr_head.", "match_vector")
    head_params = [n for n, _ in m.named_parameters() if n.startswith(heads)]
    assert len(head_params) >= 10

    m.eval()
    with torch.no_grad():
        clip_before, image_before = m.encode_clip(b), m.encode_image(b)
        for n, p in m.named_parameters():
            if n in head_params:
                p.add_(torch.randn_like(p))
        assert torch.equal(m.encode_clip(b), clip_before)
        assert torch.equal(m.encode_image(b), image_before)

    off = make({"pmd_weight": 0.0, "pfr_weight": 0.0})              # ICL only: no decoder built
    out = off.loss(b)
    assert off.decoder is None and out["pmd_loss"] == 0 and out["pfr_loss"] == 0


def test_overfits_a_few_pairs():
    m = make()
    b = batch(b=4, l=2, products=[0, 1, 2, 3], seed=3)
    b["target_present"][:] = True
    losses = overfit_losses(m, b, 30)
    assert losses[-1] < 0.5 * losses[0], losses


def test_score_is_cosine_and_embeddings_unit_norm():
    m = make().eval()
    with torch.no_grad():
        v = m.encode_clip(batch(b=5))
        i = m.encode_image({"image": torch.randn(7, 3, S, S)})
        s = m.score(v, i)
    assert s.shape == (5, 7)
    assert torch.allclose(v.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(i.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(s, F.cosine_similarity(v[:, None], i[None], dim=-1), atol=1e-5)


def test_padding_frames_do_not_change_the_embedding():
    m = make().eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(3, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(3, 2, dtype=torch.bool)}
    padded = {"frames": torch.cat([frames, torch.zeros(3, 2, 3, S, S)], 1),
              "frame_mask": torch.cat([torch.ones(3, 2), torch.zeros(3, 2)], 1).bool()}
    garbage = {**padded, "frames": torch.cat([frames, torch.randn(3, 2, 3, S, S, generator=g)], 1)}
    with torch.no_grad():
        ref = m.encode_clip(short)
        assert torch.allclose(m.encode_clip(padded), ref, atol=1e-5)
        assert torch.allclose(m.encode_clip(garbage), ref, atol=1e-5)


def test_box_variant_crops_and_selects_frames():
    plain, boxed = make(seed=0).eval(), make({"box": True}, seed=0).eval()
    boxed.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(7)
    frames = torch.randn(1, 3, 3, S, S, generator=g)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(1, 3, 4)
    ones = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        ref = plain.encode_clip({"frames": frames, "frame_mask": ones})
        # the full-frame box is the uncropped frame
        whole = boxed.encode_clip({"frames": frames, "frame_mask": ones, "target_box": full,
                                   "target_present": ones})
        assert torch.allclose(whole, ref, atol=1e-4)
        # frames without a box leave the mean: boxes on frames 0 and 2 only
        some = torch.tensor([[True, False, True]])
        got = boxed.encode_clip({"frames": frames, "frame_mask": ones, "target_box": full,
                                 "target_present": some})
        two = plain.encode_clip({"frames": frames[:, [0, 2]], "frame_mask": ones[:, :2]})
        assert torch.allclose(got, two, atol=1e-4) and not torch.allclose(got, ref, atol=1e-3)
        # a clip with no box at all keeps all its frames, uncropped
        none = boxed.encode_clip({"frames": frames, "frame_mask": ones, "target_box": full,
                                  "target_present": torch.zeros(1, 3, dtype=torch.bool)})
        assert torch.allclose(none, ref, atol=1e-6)
        # a real crop: the box's region is one colour, the rest noise -> the crop is that colour
        colour = torch.tensor([0.3, -0.5, 0.8])[:, None, None]
        frame = torch.randn(1, 1, 3, S, S, generator=g)
        frame[..., :40, :40] = colour
        cropped = boxed.encode_clip({"frames": frame, "frame_mask": ones[:, :1],
                                     "target_box": torch.tensor([[[0.0, 0.0, 0.5, 0.5]]]),
                                     "target_present": ones[:, :1]})
        flat = plain.encode_clip({"frames": colour.expand(1, 1, 3, S, S).clone(),
                                  "frame_mask": ones[:, :1]})
        assert torch.allclose(cropped, flat, atol=1e-4)


def test_hard_negative_mining():
    g = torch.Generator().manual_seed(11)
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5])
    sim = torch.randn(8, 8, generator=g)
    idx, valid = mine_hard_negatives(sim, labels, 3)
    assert idx.shape == valid.shape == (8, 3) and valid.all()
    assert (labels[idx] != labels[:, None]).all()
    for r in range(8):                                               # they are the 3 most similar
        other = [c for c in range(8) if labels[c] != labels[r]]
        best = sorted(other, key=lambda c: -sim[r, c].item())[:3]
        assert idx[r].tolist() == best
    # too few other products: the missing slots are invalid, never a same-product row
    idx, valid = mine_hard_negatives(sim[:3, :3], labels[:3], 3)
    assert valid.sum(1).tolist() == [1, 1, 2]
    assert (labels[:3][idx][valid] != labels[:3, None].expand(3, 3)[valid]).all()
    assert (idx[~valid] == torch.arange(3)[:, None].expand(3, 3)[~valid]).all()

    m = make({"hard_negatives": 3})
    b = batch()
    with torch.no_grad():
        v, vt, vm = m._encode_video(b)
        i, it = m._encode_image(b["image"])
        logits, valid, attn = m.match_logits(it, vt, vm, i @ v.T, b["product"])
    assert logits.shape == (6, 4) and valid.shape == (6, 3)
    assert attn.shape[:3] == (6, 4, m.cfg.pmd_heads) and attn.shape[-1] == vt.shape[1]
    assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
    assert (attn[0, 0][..., ~vm[0]] == 0).all()                      # clip 0's padding keys unused


def test_pfr_targets_are_detached():
    g = torch.Generator().manual_seed(13)
    n, h, p, k, d = 3, 4, 5, 8, 16
    attn = torch.rand(n, h, p, k, generator=g).requires_grad_()
    vid = torch.randn(n, k, d, generator=g).requires_grad_()
    img = torch.randn(n, p, d, generator=g).requires_grad_()
    mask = torch.ones(n, k, dtype=torch.bool)
    mask[0, 4:] = False
    head = torch.nn.Conv2d(h, 1, 1, bias=False)
    pfr_loss(attn, head, vid, img, mask).backward()
    assert vid.grad is None and img.grad is None
    assert attn.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0

    # in the model, PFR reaches the encoder only through the attention maps (queries and keys)
    m = make()
    m.loss(batch())["pfr_loss"].backward()
    dec = m.decoder
    for unused in (dec.v.weight, dec.out.weight, dec.norm_out.weight, m.match_vector):
        assert unused.grad is None
    for used in (dec.q.weight, dec.k.weight, m.pfr_head.weight, m.visual.proj):
        assert used.grad is not None and used.grad.abs().sum() > 0


def test_text_branch():
    with pytest.raises(ValueError, match="text_dim"):
        make({"te": True})
    m = make({"te": True, "lambda_text": 0.25}, text_dim=16)
    assert m.uses_text is True
    b = batch()
    g = torch.Generator().manual_seed(17)
    b.update(asr_feat=torch.randn(6, 16, generator=g), title_feat=torch.randn(6, 16, generator=g),
             asr_present=torch.tensor([True, False, True, True, False, True]),
             title_present=torch.ones(6, dtype=torch.bool))
    out = m.loss(b)
    assert all(torch.isfinite(v) for v in out.values())
    with torch.no_grad():
        v, i = m.encode_clip(b), m.encode_image(b)
    d = m.visual.output_dim
    assert v.shape == (6, d + 16) and i.shape == (6, d + 16)
    assert (v[[1, 4], d:] == 0).all() and (v[[0, 2], d:].abs().sum(-1) > 0).all()
    assert torch.allclose(v[0, d:].norm(), torch.tensor(0.5), atol=1e-5)   # sqrt(lambda_text)
    assert torch.allclose(v[:, :d].norm(dim=-1), torch.ones(6), atol=1e-5)


def test_icl_masks_same_product_pairs_out_of_both_softmaxes():
    g = torch.Generator().manual_seed(19)
    v = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    i = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 2, 1])
    scale = torch.tensor(4.0)
    logits = 16 * v @ i.T

    def ce(row: torch.Tensor, pos: int, keep: list[int]) -> torch.Tensor:
        return -(row[pos] - torch.logsumexp(row[keep], 0))

    def keep(r: int) -> list[int]:
        return [c for c in range(5) if c == r or labels[c] != labels[r]]

    ref = sum(ce(logits[r], r, keep(r)) + ce(logits[:, r], r, keep(r)) for r in range(5)) / 10
    assert torch.allclose(icl_loss(v, i, labels, scale), ref, atol=1e-5)
    # with all products distinct it is CLIP's symmetric InfoNCE
    distinct = torch.arange(5)
    clip = (F.cross_entropy(logits, distinct) + F.cross_entropy(logits.T, distinct)) / 2
    assert torch.allclose(icl_loss(v, i, distinct, scale), clip, atol=1e-5)
