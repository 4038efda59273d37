"""One way to make a model: `build_model` from a resolved config, `load_model` from a final.pt.

Training, evaluation, the bench and the diagnostics all go through these two functions, so every
method is built, initialised and restored the same way (cf. open_clip's create_model).
"""
from __future__ import annotations

from pathlib import Path

import torch

from sgmn.models.clip import create_clip
from sgmn.models.method import RetrievalMethod
from sgmn.models.registry import get_method


def build_model(config: dict, clip_weights: str | None = "none", text_dim: int | None = None) -> RetrievalMethod:
    """The config's method (`method`, default sgmn), its visual tower from the CLIP weights
    (`none`, an open_clip tag or a local file; sgmn.models.clip.create_clip)."""
    m = config["model"]
    clip = create_clip(m["clip"], clip_weights, m["image_size"])
    return get_method(config.get("method", "sgmn")).from_config(config, clip, text_dim)


def load_model(checkpoint: str | Path) -> tuple[RetrievalMethod, dict]:
    """Rebuild a trained model from its final.pt (strict: every weight must match).

    The stored config is re-validated, so a key added to the schema since the checkpoint was
    written takes its default; if that changes the model's structure, the error says so.
    """
    from sgmn.config import ConfigError, resolve_run_config, strip_run_keys, validate
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        config = {**resolve_run_config(validate(strip_run_keys(state["config"]))),
                  "variant": state["config"].get("variant")}
    except ConfigError as err:
        raise ConfigError(f"{checkpoint}: its stored config no longer validates: {err}") from None
    model = build_model(config, "none", state.get("text_dim"))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{checkpoint} does not match the model its config builds today (written by an "
                           f"older version of the suite? retrain it): {str(err)[:500]}") from None
    return model, state


def init_from_checkpoint(model: RetrievalMethod, checkpoint: str | Path) -> None:
    """Start `model` from the weights of another run's final.pt (fine-tuning, e.g. Table 2's
    SGMN trained on the main dataset, then on MovingFashion). The architectures must match."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"--init-checkpoint {checkpoint}: its weights do not fit the model this config builds "
                           f"(a different method or architecture?): {str(err)[:500]}") from None
