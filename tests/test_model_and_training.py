"""GRA model, triplet loss, frame masking, the resumable loop and CLIP weight loading."""
import json

import pytest
import torch
from torch.utils.data import Dataset

from sgmn.data.datasets import frame_masking
from sgmn.models.clip import create_clip, save_clip
from sgmn.models.sgmn import gra_only
from sgmn.train import loop
from sgmn.models.losses import vse_triplet


def test_vse_triplet_hand_computed():
    sim = torch.tensor([[0.9, 0.5, 0.1],
                        [0.3, 0.2, 0.6],
                        [0.0, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 2])
    # video->image hardest negatives: row0 0.5, row1 0.6, row2 0.1
    # image->video hardest negatives: col0 0.3, col1 0.5, col2 0.6
    v2i = [max(0, 0.2 + 0.5 - 0.9), max(0, 0.2 + 0.6 - 0.2), max(0, 0.2 + 0.1 - 0.8)]
    i2v = [max(0, 0.2 + 0.3 - 0.9), max(0, 0.2 + 0.5 - 0.2), max(0, 0.2 + 0.6 - 0.8)]
    assert vse_triplet(sim, labels, 0.2).item() == pytest.approx(sum(v2i) + sum(i2v))  # VSE++ sums
    assert vse_triplet(sim, labels, 0.2, reduction="mean").item() == pytest.approx((sum(v2i) + sum(i2v)) / 3)


def test_vse_triplet_all_negatives_hand_computed():
    sim = torch.tensor([[0.9, 0.5], [0.3, 0.2]])
    # v0: hinge(0.2+0.5-0.9)=0; v1: hinge(0.2+0.3-0.2)=0.3; i0: hinge(0.2+0.3-0.9)=0; i1: 0.2+0.5-0.2=0.5
    assert vse_triplet(sim, torch.tensor([0, 1]), 0.2, hardest=False).item() == pytest.approx(0.3 + 0.5)
    assert vse_triplet(sim, torch.tensor([0, 1]), 0.2, hardest=False, reduction="mean").item() == pytest.approx((0.3 + 0.5) / 2)
    sim3 = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.2, 0.6], [0.0, 0.1, 0.8]])
    assert vse_triplet(sim3, torch.tensor([0, 1, 2]), 0.2, hardest=False) < vse_triplet(sim3, torch.tensor([0, 1, 2]), 0.2)


def test_vse_triplet_same_product_is_not_a_negative():
    sim = torch.tensor([[0.9, 0.95], [0.95, 0.9]])
    assert vse_triplet(sim, torch.tensor([7, 7])).item() == 0.0
    assert vse_triplet(sim, torch.tensor([7, 8])).item() > 0.0


def test_gra_ignores_masked_frames():
    torch.manual_seed(0)
    model = gra_only(create_clip("lpr-tiny-clip").visual).eval()
    frames = torch.randn(2, 4, 3, 64, 64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    v = model.encode_video(frames, mask)
    frames2 = frames.clone()
    frames2[0, 2:] = torch.randn(2, 3, 64, 64)  # change only masked frames
    assert torch.allclose(v, model.encode_video(frames2, mask), atol=1e-6)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2))
    alone = model.encode_video(frames[:1, :2], mask[:1, :2])
    assert torch.allclose(v[:1], alone, atol=1e-5)


def test_frame_masking_keeps_a_frame_and_only_drops_real_frames():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(256, 10, dtype=torch.bool)
    mask[:, 7:] = False
    out = frame_masking(mask, 1.0, 0.9, g)
    assert (out.sum(1) >= 1).all() and not (out & ~mask).any()
    assert (out.sum(1) < 7).any()  # something was dropped
    tail = frame_masking(mask, 1.0, 0.9, torch.Generator().manual_seed(0), mode="tail")
    n = tail.sum(1)
    assert all(tail[b, : n[b]].all() and not tail[b, n[b]:].any() for b in range(256))
    none = frame_masking(mask, 0.0, 0.9, g)
    assert torch.equal(none, mask)


class _Toy(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _loss(m, batch, generator):
    noise = torch.randn(batch["x"].shape, generator=generator) * 0.01
    return {"mse_loss": ((m(batch["x"] + noise).squeeze(-1) - batch["y"]) ** 2).mean()}


def _run(tmp, steps, **kw):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 1)
    loop.train(model, _Toy(), _collate, _loss, tmp, steps=steps, batch_size=8, lr=0.05,
               warmup_steps=2, weight_decay=0.0, seed=3, checkpoint_every=5, config={"a": 1}, **kw)
    return model


def test_resume_follows_the_uninterrupted_trajectory(tmp_path, monkeypatch):
    full = _run(tmp_path / "full", 20)
    # interrupted run: crash after the step-10 checkpoint, then rerun to the end
    calls = {"n": 0}

    def crashing(m, batch, generator):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return _loss(m, batch, generator)

    torch.manual_seed(1)
    model = torch.nn.Linear(4, 1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(model, _Toy(), _collate, crashing, tmp_path / "cut", steps=20, batch_size=8,
                   lr=0.05, warmup_steps=2, weight_decay=0.0, seed=3, checkpoint_every=5, config={"a": 1})
    state = torch.load(tmp_path / "cut" / "ckpt" / "latest.pt", weights_only=False)
    assert state["step"] == 10
    resumed = _run(tmp_path / "cut", 20)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()]
    assert steps[-1] == 20


def test_checkpoint_of_another_config_is_set_aside(tmp_path):
    ckpt = tmp_path / "ckpt" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    other = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(other.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loop._checkpoint(ckpt, other, opt, sched, 5, {"a": 2})
    fresh = _run(tmp_path / "fresh", 12)
    restarted = _run(tmp_path, 12)  # config {"a": 1}: must not resume the {"a": 2} state
    assert (tmp_path / "ckpt" / "latest.stale.pt").exists()
    for a, b in zip(fresh.parameters(), restarted.parameters()):
        assert torch.equal(a, b)
    assert not ckpt.exists()  # a finished run leaves no checkpoint to resume


def test_warmup_cosine_schedule():
    assert loop.warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert loop.warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert loop.warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert loop.warmup_cosine(55, 100, 10) == pytest.approx(0.5)


def test_step_batches_are_a_function_of_seed_and_step():
    s = loop.StepBatchSampler(50, 8, seed=4, start=0, total=20)
    t = loop.StepBatchSampler(50, 8, seed=4, start=13, total=20)
    assert list(s)[13:] == list(t)
    epoch0 = sum(list(s)[:6], [])
    assert len(set(epoch0)) == 48  # no repeats inside an epoch


def test_local_clip_checkpoint_loads_bit_identically(tmp_path):
    """The path real runs use for ViT-B-32 weights, exercised with a file the test writes."""
    torch.manual_seed(0)
    model = create_clip("ViT-B-32", "none")
    path = tmp_path / "vit_b_32.pt"
    save_clip(model, path)
    loaded = create_clip("ViT-B-32", str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_mismatched_checkpoint_fails_loudly(tmp_path):
    path = tmp_path / "tiny.pt"
    save_clip(create_clip("lpr-tiny-clip", "none"), path)
    with pytest.raises(RuntimeError):
        create_clip("ViT-B-32", str(path))


def test_missing_weights_and_offline_openai_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a file nor a tag"):
        create_clip("lpr-tiny-clip", str(tmp_path / "nope.pt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(RuntimeError, match="model.pretrained"):
        create_clip("ViT-B-32", "openai")


def test_bertadam_hand_computed():
    """Two steps of BertAdam against the formulas: per-parameter clip to norm 1, no bias
    correction, decay added to the update (p -= lr * (m / (sqrt(v) + eps) + wd * p))."""
    from sgmn.train.optim import BertAdam
    lr, wd, b1, b2, eps = 0.1, 0.2, 0.9, 0.98, 1e-6
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = BertAdam([p], lr=lr, weight_decay=wd)
    grads = [[3.0, 4.0], [0.1, -0.2]]  # norm 5 (clipped to ~1), then norm 0.22 (kept)
    x, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
    for step, raw in enumerate(grads):
        p.grad = torch.tensor(raw)
        opt.step()
        norm = sum(gi * gi for gi in raw) ** 0.5
        g = [gi * min(1.0, 1.0 / (norm + 1e-6)) for gi in raw]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        x = [xi - lr * (mi / (vi ** 0.5 + eps) + wd * xi) for xi, mi, vi in zip(x, m, v)]
        assert p.detach().tolist() == pytest.approx(x, rel=1e-5)
        if step == 0:  # without bias correction m / sqrt(v) = (1 - b1) / sqrt(1 - b2) = 0.707
            # per unit of sign(g) at step 1, where bias-corrected Adam moves by 1
            assert p[0].item() == pytest.approx(1.0 - lr * (0.1 / 0.02 ** 0.5 + wd), rel=1e-5)
    assert opt.state[p]["step"] == 2


class _WithHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = create_clip("lpr-tiny-clip").visual
        self.head = torch.nn.Linear(128, 4)

    def forward(self, x):
        return self.head(self.visual(x))


def test_parameter_groups_scale_the_clip_lr_and_spare_biases():
    from sgmn.train.optim import build_optimizer
    model = _WithHead()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, "bertadam", 3e-4, 0.2, clip_lr_scale=1e-3)
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["lr"] == pytest.approx(3e-7 if name.startswith("visual.") else 3e-4)
            assert group["weight_decay"] == (0.0 if name.endswith("bias") else 0.2)
    assert seen == set(names.values())
    assert {g["name"] for g in opt.param_groups} == {"other.decay", "other.no_decay", "visual.decay",
                                                     "visual.no_decay"}
    # the schedule scales every group's own lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert sorted(sched.get_last_lr()) == pytest.approx(sorted([1.5e-7, 1.5e-7, 1.5e-4, 1.5e-4]))
    # Adam's coupled L2 decays every parameter; adamw spares biases; scale 1 is one lr
    adam = build_optimizer(model, "adam", 1e-3, 0.01)
    assert all(g["weight_decay"] == 0.01 and g["lr"] == 1e-3 for g in adam.param_groups)
    adamw = build_optimizer(model, "adamw", 1e-3, 0.01)
    assert isinstance(adamw, torch.optim.AdamW)
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.0, 0.01}
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "sgd", 1e-3, 0.0)


def test_a_backbone_from_scratch_ignores_the_clip_lr_scale_and_the_stem_freeze():
    """fidelity official's clip_lr_scale / freeze_stem fine-tune a pretrained CLIP; a method
    whose `visual` is its own backbone from random init (pretrained_visual False) trains whole."""
    from sgmn.train.optim import build_optimizer
    model = _WithHead()
    model.pretrained_visual = False
    opt = build_optimizer(model, "adam", 3e-4, 0.0, clip_lr_scale=1e-3, freeze_stem=True)
    assert all(g["lr"] == 3e-4 for g in opt.param_groups)
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_stem_does_not_train():
    from sgmn.train.optim import build_optimizer
    model = _WithHead()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, "bertadam", 1e-2, 0.2, clip_lr_scale=0.5, freeze_stem=True)
    stem = {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
            "visual.ln_pre.weight", "visual.ln_pre.bias"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == stem
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in model.named_parameters() if n in stem)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    opt.step()
    after = model.state_dict()
    for k in stem:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["visual.proj"], after["visual.proj"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    with pytest.raises(ValueError, match="freeze_stem"):
        build_optimizer(torch.nn.Linear(2, 2), "adam", 1e-3, 0.0, freeze_stem=True)
