"""TimeSformer baseline (baselines/timesformer.py) and the shared common-loss helpers it uses
(baselines/common.py: resample_real_frames, batch_id_loss, sgmn_style_loss): the library model
runs, the T=1 image path, padding, the official temporal-FC init, losses, overfitting, scores."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import TimesformerConfig, TimesformerModel

from baselines.common import (
    BNNeck,
    batch_id_loss,
    resample_real_frames,
    sgmn_style_loss,
)
from baselines.timesformer import TimeSformer, TimeSformerSection
from sgmn.config import resolve_variant, validate
from sgmn.models.losses import vse_triplet
from sgmn.models.registry import get_method
from method_checks import overfit_losses

S, T = 64, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make(section: dict | None = None, seed: int = 0) -> TimeSformer:
    torch.manual_seed(seed)
    cfg = resolve_variant(validate({"model": {"num_frames": T, "image_size": S},
                                    "timesformer": section or {}}), "timesformer")
    return TimeSformer.from_config(cfg, None)


def batch(b: int = 6, l: int = 4, products=None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, -1] = False
    mask[2, 1:] = False
    return {"frames": torch.randn(b, l, 3, S, S, generator=g), "frame_mask": mask,
            "image": torch.randn(b, 3, S, S, generator=g),
            "product": torch.tensor(products if products is not None else [0, 0, 1, 2, 3, 4][:b])}


def test_registry_config_and_library_model():
    assert get_method("timesformer") is TimeSformer
    m = make({"width": 64, "heads": 2, "layers": 2, "dim": 32})
    assert isinstance(m.cfg, TimeSformerSection) and m.cfg.width == 64 and m.cfg.dim == 32
    assert isinstance(m.visual, TimesformerModel) and m.uses_text is False
    c = m.visual.config
    assert (c.num_frames, c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers,
            c.num_attention_heads, c.attention_type) == (T, S, 16, 64, 2, 2, "divided_space_time")
    assert m.visual.embeddings.time_embeddings.shape == (1, T, 64)       # a separate time embedding
    with pytest.raises(ValueError, match="does not divide"):
        make({"patch_size": 24})


def test_temporal_fc_zero_after_the_first_block():
    m = make()
    layers = m.visual.encoder.layer
    assert layers[0].temporal_dense.weight.abs().sum() > 0
    for layer in layers[1:]:
        assert (layer.temporal_dense.weight == 0).all() and (layer.temporal_dense.bias == 0).all()


def test_forward_backward_and_every_parameter_learns():
    m = make()
    out = m.loss(batch())
    assert set(out) == {"triplet_loss", "id_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    sum(out.values()).backward()
    # blocks > 0 start with a zero temporal FC, so their temporal attention gets no gradient
    # until that FC has moved (the official init); every other parameter learns at once
    silent = tuple(f"visual.encoder.layer.{i}.temporal_{part}" for i in range(1, m.cfg.layers)
                   for part in ("attention", "layernorm"))
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert name == "neck.bn.bias"                                   # BNNeck: frozen shift
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad.abs().sum() == 0) == name.startswith(silent), name
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    m.zero_grad()
    sum(m.loss(batch()).values()).backward()
    assert m.visual.encoder.layer[1].temporal_attention.attention.qkv.weight.grad.abs().sum() > 0


def test_the_library_model_runs_with_t_frames_for_clips_and_one_for_images():
    m = make().eval()
    seen = []
    hook = m.visual.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((kwargs["pixel_values"].shape, mod.config.num_frames)),
        with_kwargs=True)
    b = batch()
    with torch.no_grad():
        m.encode_clip(b)
        m.encode_image(b)
    m.train()
    m.loss(b)
    hook.remove()
    assert seen == [((6, T, 3, S, S), T), ((6, 1, 3, S, S), 1)] * 2
    assert m.visual.config.num_frames == T                              # restored after the image call


def test_image_path_equals_a_one_frame_timesformer():
    m = make().eval()
    one = TimesformerConfig(**{**m.visual.config.to_dict(), "num_frames": 1})
    ref = TimesformerModel(one).eval()
    state = m.visual.state_dict()
    state["embeddings.time_embeddings"] = state["embeddings.time_embeddings"][:, :1]   # nearest of T -> 1
    ref.load_state_dict(state)
    img = torch.randn(3, 3, S, S)
    with torch.no_grad():
        expected = F.normalize(m.proj(ref(pixel_values=img.unsqueeze(1)).last_hidden_state[:, 0]), dim=-1)
        got = m.encode_image({"image": img})
        assert torch.allclose(got, expected, atol=1e-5)
        # the library alone cannot run T=1 on a T-frame config: its layers read config.num_frames
        # and split the tokens into T frames (an error, or silently wrong when the sizes divide)
        try:
            alone = m.visual(pixel_values=img.unsqueeze(1)).last_hidden_state[:, 0]
        except RuntimeError:
            return
        assert not torch.allclose(F.normalize(m.proj(alone), dim=-1), expected, atol=1e-3)


def test_resample_real_frames():
    frames = torch.arange(2 * 4).float().view(2, 4, 1)                   # frame value = its index
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    out = resample_real_frames(frames, mask, 8).squeeze(-1)
    assert out[0].tolist() == [0, 0, 0, 0, 2, 2, 2, 2]                 # real frames 0 and 2, in order
    assert out[1].tolist() == [4, 4, 5, 5, 6, 6, 7, 7]
    assert resample_real_frames(frames, mask, 3).squeeze(-1)[1].tolist() == [4, 5, 6]


def test_padding_does_not_change_the_embedding():
    m = make().eval()
    g = torch.Generator().manual_seed(5)
    frames = torch.randn(3, 2, 3, S, S, generator=g)
    short = {"frames": frames, "frame_mask": torch.ones(3, 2, dtype=torch.bool)}
    pad_mask = torch.tensor([[True, True, False, False]]).expand(3, 4)
    padded = {"frames": torch.cat([frames, torch.zeros(3, 2, 3, S, S)], 1), "frame_mask": pad_mask}
    garbage = {**padded, "frames": torch.cat([frames, torch.randn(3, 2, 3, S, S, generator=g)], 1)}
    gaps = {"frames": torch.stack([frames[:, 0], torch.randn(3, 3, S, S, generator=g), frames[:, 1],
                                   torch.randn(3, 3, S, S, generator=g)], 1),
            "frame_mask": torch.tensor([[True, False, True, False]]).expand(3, 4)}
    seen = []
    hook = m.visual.register_forward_hook(lambda mod, a, kw, out: seen.append(kw["pixel_values"]),
                                          with_kwargs=True)
    with torch.no_grad():
        ref = m.encode_clip(short)
        for other in (padded, garbage, gaps):
            assert torch.allclose(m.encode_clip(other), ref, atol=1e-6)
    hook.remove()
    # what the library sees: only the real frames, in order, each repeated T / 2 times
    assert torch.equal(seen[2], frames.repeat_interleave(T // 2, dim=1))


def test_overfits_a_few_pairs():
    m = make({"width": 64, "heads": 2, "layers": 2})
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


def test_batch_id_loss_against_a_loop():
    g = torch.Generator().manual_seed(11)
    q, k = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.tensor([7, 3, 7, 9, 3])
    classes = [3, 7, 9]
    protos = torch.stack([F.normalize(sum(F.normalize(k[j], dim=0) for j in range(5) if labels[j] == c), dim=0)
                          for c in classes])
    ce = [-(torch.log_softmax(16.0 * F.normalize(q[n], dim=0) @ protos.T, 0)[classes.index(int(labels[n]))])
          for n in range(5)]
    assert torch.allclose(batch_id_loss(q, k, labels), torch.stack(ce).mean(), atol=1e-5)


def test_sgmn_style_loss_is_the_vse_triplet_plus_the_bnneck_id_loss():
    g = torch.Generator().manual_seed(13)
    fv, fi = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    neck = BNNeck(8)
    out = sgmn_style_loss(fv, fi, labels, neck, margin=0.2, hardest=True, reduction="sum", id_weight=0.5)
    v, i = F.normalize(fv, dim=-1), F.normalize(fi, dim=-1)
    assert torch.allclose(out["triplet_loss"], vse_triplet(v @ i.T, labels, 0.2, True, "sum"))
    both = torch.cat([fv, fi])                                          # one set of BN statistics
    bn = (both - both.mean(0)) / (both.var(0, unbiased=False) + 1e-5).sqrt()
    idl = 0.5 * (batch_id_loss(bn[:6], bn[6:], labels) + batch_id_loss(bn[6:], bn[:6], labels))
    assert torch.allclose(out["id_loss"], 0.5 * idl, atol=1e-5)
    soft = sgmn_style_loss(fv, fi, labels, neck, 0.2, False, "sum", 0.5)
    assert torch.allclose(soft["triplet_loss"], vse_triplet(v @ i.T, labels, 0.2, False, "sum"))
    assert not neck.bn.bias.requires_grad


def test_trainer_switches_the_hardest_negative():
    m = make()
    b = batch()
    m.hardest_negatives = False
    soft = m.loss(b)["triplet_loss"]
    m.hardest_negatives = True
    hard = m.loss(b)["triplet_loss"]
    assert hard > soft                                                  # max of hinges > their mean
