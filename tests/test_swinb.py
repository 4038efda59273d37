"""Video Swin baseline (baselines/swinb.py): torchvision's SwinTransformer3d is the model that runs,
its shifted 3-D windows, the 2-frame image tubelet, padding, losses, overfitting, scores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video.swin_transformer import SwinTransformer3d

from baselines.swinb import SwinBConfig, VideoSwin
from sgmn.config import resolve_variant, validate
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S, T = 64, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make(section: dict | None = None, seed: int = 0, frames: int = T) -> VideoSwin:
    torch.manual_seed(seed)
    cfg = resolve_variant(validate({"model": {"num_frames": frames, "image_size": S},
                                    "swinb": section or {}}), "swinb")
    return VideoSwin.from_config(cfg, None)


def batch(b: int = 6, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    return {"frames": torch.randn(b, l, 3, S, S, generator=g), "frame_mask": mask,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4][:b])}


def test_registry_config_and_library_model():
    assert get_method("swinb") is VideoSwin
    m = make()
    assert isinstance(m.cfg, SwinBConfig) and m.cfg.depths == (2, 2, 2, 2) and m.cfg.window_size == (2, 4, 4)
    assert isinstance(m.visual, SwinTransformer3d) and isinstance(m.visual.head, nn.Identity)
    assert m.visual.patch_embed.proj.kernel_size == (2, 4, 4)              # the 2x4x4 tubelet
    assert m.proj.in_features == 8 * m.cfg.embed_dim and m.uses_text is False
    # hierarchical stages, heads doubling, every second block on shifted windows (T, H and W)
    blocks = [mod for mod in m.visual.features if isinstance(mod, nn.Sequential)]
    assert [len(s) for s in blocks] == [2, 2, 2, 2]
    assert [s[0].attn.num_heads for s in blocks] == [1, 2, 4, 8]
    assert list(blocks[0][0].attn.shift_size) == [0, 0, 0] and list(blocks[0][1].attn.shift_size) == [1, 2, 2]
    with pytest.raises(ValueError, match="does not divide"):
        make({"embed_dim": 24, "heads": 5})


def test_forward_backward_and_every_parameter_learns():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"triplet_loss", "id_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    sum(out.values()).backward()
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert name == "neck.bn.bias"                                   # BNNeck: frozen shift
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_the_library_model_runs_on_resampled_clips_and_two_frame_images():
    m = make().eval()
    seen = []
    hook = m.visual.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    b = batch()
    with torch.no_grad():
        m.encode_clip(b)
        m.encode_image(b)
    m.train()
    m.loss(b)
    hook.remove()
    assert [x.shape for x in seen] == [(6, 3, T, S, S), (6, 3, 2, S, S)] * 2
    clip_in, image_in = seen[0], seen[1]
    # [B, 3, T, H, W]: clip 1 (all real) frame by frame; clip 2 has one real frame, repeated
    assert torch.equal(clip_in[1].transpose(0, 1), b["frames"][1])
    assert torch.equal(clip_in[2].transpose(0, 1), b["frames"][2, :1].expand(T, -1, -1, -1))
    # clip 0: 3 real frames resampled to 4: frames 0, 0, 1, 2
    assert torch.equal(clip_in[0].transpose(0, 1), b["frames"][0, [0, 0, 1, 2]])
    # an image is one tubelet: itself twice
    assert torch.equal(image_in[:, :, 0], b["image"]) and torch.equal(image_in[:, :, 1], b["image"])


def test_library_also_runs_one_frame():
    m = make().eval()
    with torch.no_grad():
        assert m.visual(torch.randn(2, 3, 1, S, S)).shape == (2, 8 * m.cfg.embed_dim)


def test_padding_does_not_change_the_embedding():
    m = make().eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(3, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(3, 2, dtype=torch.bool)}
    pad_mask = torch.tensor([[True, True, False, False]]).expand(3, 4)
    padded = {"frames": torch.cat([frames, torch.zeros(3, 2, 3, S, S)], 1), "frame_mask": pad_mask}
    garbage = {**padded, "frames": torch.cat([frames, torch.randn(3, 2, 3, S, S, generator=g)], 1)}
    gaps = {"frames": torch.stack([torch.randn(3, 3, S, S, generator=g), frames[:, 0], frames[:, 1],
                                   torch.randn(3, 3, S, S, generator=g)], 1),
            "frame_mask": torch.tensor([[False, True, True, False]]).expand(3, 4)}
    with torch.no_grad():
        ref = m.encode_clip(short)
        for other in (padded, garbage, gaps):
            assert torch.allclose(m.encode_clip(other), ref, atol=1e-6)


def test_overfits_a_few_pairs():
    m = make({"depths": [2, 2]}, frames=2)
    b = batch(b=4, l=2, products=[0, 1, 2, 3], seed=3)
    b["frame_mask"][:] = True
    losses = overfit_losses(m, b, 30)
    assert losses[-1] < 0.3 * losses[0], losses


def test_scores_are_cosine_at_gallery_scale_and_the_neck_is_training_only():
    m = make().eval()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        q = m.encode_clip(batch(b=3))
        gal = m.encode_image({"image": torch.randn(600, 3, S, S, generator=g)})
        s = m.score(q, gal)
        assert s.shape == (3, 600) and q.shape == (3, m.cfg.dim)
        assert torch.allclose(q.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(s, F.cosine_similarity(q[:, None], gal[None], dim=-1), atol=1e-5)
        m.neck.bn.weight.add_(1.0)
        m.neck.bn.running_mean.add_(3.0)
        assert torch.equal(m.encode_clip(batch(b=3)), q)
    assert m.training_only == ("neck",)


def test_trainer_switches_the_hardest_negative():
    m = make()
    b = batch()
    m.hardest_negatives = False
    soft = m.loss(b)["triplet_loss"]
    m.hardest_negatives = True
    hard = m.loss(b)["triplet_loss"]
    assert hard > soft
