"""Every registered method behind the one interface: built by the factory from a config, found
by the registry, trained a few steps, scored, and restored from its checkpoint with identical
scores. New methods get these checks by adding a row to METHOD_CONFIGS."""
from __future__ import annotations

import pytest
import torch

from sgmn.config import resolve_run_config, validate
from sgmn.io import atomic_save
from sgmn.models.factory import build_model, load_model
from sgmn.models.method import RetrievalMethod
from sgmn.models.registry import METHODS, get_method, method_names, register

B, L, S, DT = 6, 4, 64, 16
METHOD_CONFIGS = {
    "sgmn": {"method": "sgmn"},
    "rice_patch": {"method": "rice"},
    "rice_box": {"method": "rice", "rice": {"box": True}},
    "rice_text": {"method": "rice", "rice": {"te": True}},
    "fashionnet": {"method": "fashionnet"},
    "asymnet": {"method": "asymnet"},
    "seam": {"method": "seam"},
    "timesformer": {"method": "timesformer"},
    "nvan": {"method": "nvan"},
    "swinb": {"method": "swinb"},
    "mgh": {"method": "mgh"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(name: str) -> dict:
    raw = {**METHOD_CONFIGS[name], "model": {"num_frames": L, "image_size": S},
           "train": {"batch_size": B}}
    return resolve_run_config(validate(raw))


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    return {"frames": torch.randn(B, L, 3, S, S, generator=g), "frame_mask": mask,
            "image": torch.randn(B, 3, S, S, generator=g), "product": torch.tensor([0, 1, 2, 3, 3, 4]),
            "asr_feat": torch.randn(B, DT, generator=g), "asr_present": torch.ones(B, dtype=torch.bool),
            "title_feat": torch.randn(B, DT, generator=g), "title_present": torch.ones(B, dtype=torch.bool),
            "target_box": torch.tensor([0.1, 0.2, 0.7, 0.9]).expand(B, L, 4).clone(), "target_present": mask.clone()}


def test_every_registered_method_is_covered_here():
    assert {c["method"] for c in METHOD_CONFIGS.values()} == set(method_names())


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_factory_builds_the_configs_method_and_it_trains(name):
    torch.manual_seed(0)
    config = _config(name)
    model = build_model(config, "none", DT)
    assert isinstance(model, get_method(config["method"])) and model.name == config["method"]
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):   # overfit one batch
        out = model.loss(batch)
        loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.visual.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        clips, images = model.encode_clip(batch), model.encode_image(batch)
        scores = model.score(clips, images[:4])
    assert scores.shape == (B, 4) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_save_and_load_through_the_factory_gives_identical_scores(name, tmp_path):
    torch.manual_seed(1)
    config = {**_config(name), "variant": name}
    model = build_model(config, "none", DT).eval()
    path = tmp_path / "final.pt"
    atomic_save({"model": model.state_dict(), "config": config, "seed": 0, "text_dim": DT}, path)
    loaded, state = load_model(path)
    assert type(loaded) is type(model) and state["config"]["method"] == config["method"]
    batch = _batch(2)
    with torch.no_grad():
        a = model.score(model.encode_clip(batch), model.encode_image(batch))
        b = loaded.eval().score(loaded.encode_clip(batch), loaded.encode_image(batch))
    assert torch.equal(a, b)


def test_registry_round_trip_and_errors():
    class Mine(RetrievalMethod):
        name = "mine"
    register("mine", Mine)
    try:
        assert get_method("mine") is Mine and "mine" in method_names()
    finally:
        METHODS.pop("mine")
    with pytest.raises(KeyError, match="registered: asymnet, fashionnet, mgh, nvan, rice, seam, sgmn, swinb, timesformer"):
        get_method("nope")
    register("broken", "sgmn.models.sgmn:SGMNConfig")   # not a RetrievalMethod
    try:
        with pytest.raises(TypeError, match="not a RetrievalMethod"):
            get_method("broken")
    finally:
        METHODS.pop("broken")
