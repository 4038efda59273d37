"""Training a retrieval model (GRA today; the SGMN modules and baselines plug in the same way).

`build_model` turns a resolved config into a model whose visual encoder is initialised from the
configured CLIP weights; `train_run` trains it and writes `final.pt`, a self-describing
checkpoint (weights, config, seed, provenance) that `sgmn evaluate` rebuilds the model from.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from sgmn.data.datasets import ClipPairDataset, collate, frame_masking, read_split
from sgmn.io import atomic_save, provenance, write_json
from sgmn.models.clip import create_clip
from sgmn.models.gra import GRA
from sgmn.train import loop

log = logging.getLogger(__name__)


def build_model(config: dict, clip_weights: str | None = "none") -> GRA:
    m = config["model"]
    clip = create_clip(m["clip"], clip_weights, m["image_size"])
    return GRA(clip.visual, margin=config["train"]["margin"])


def load_model(checkpoint: str | Path) -> tuple[GRA, dict]:
    """Rebuild a trained model from its final.pt (strict: every weight must match)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_model(state["config"], "none")
    model.load_state_dict(state["model"], strict=True)
    return model, state


def train_run(config: dict, seed: int, data_dir: str | Path, clip_weights: str | None,
              out_dir: str | Path) -> Path:
    """Train one (variant, seed) run; returns the path of final.pt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg, dcfg = config["train"], config["dataset"]
    torch.manual_seed(seed)
    model = build_model(config, clip_weights)
    write_json({**provenance(config, seed), "clip_weights": str(clip_weights)}, out_dir / "params.json")

    skipped: list[str] = []
    clips = read_split(data_dir, dcfg["format"], "train", dcfg["on_bad_line"], skipped)
    dataset = ClipPairDataset(clips, config["model"]["num_frames"], config["model"]["image_size"],
                              dcfg["on_bad_frame"])
    log.info("training on %d clips of %d products (%d bad lines skipped)", len(dataset),
             len(dataset.product_ids), len(skipped))

    def loss_fn(m, batch, generator):
        m.hardest_negatives = batch["step"] >= tcfg["triplet_warmup_steps"]
        batch["frame_mask"] = frame_masking(batch["frame_mask"].cpu(), tcfg["frame_mask_prob"],
                                            tcfg["frame_mask_max_ratio"], generator
                                            ).to(batch["frame_mask"].device)
        return m(batch)

    loop.train(model, dataset, collate, loss_fn, out_dir, steps=tcfg["steps"],
               batch_size=tcfg["batch_size"], lr=tcfg["lr"], warmup_steps=tcfg["warmup_steps"],
               weight_decay=tcfg["weight_decay"], optimizer=tcfg["optimizer"],
               min_lr_ratio=tcfg["min_lr_ratio"], grad_clip=tcfg["grad_clip"], seed=seed,
               checkpoint_every=tcfg["checkpoint_every"], num_workers=tcfg["num_workers"],
               device=tcfg["device"], precision=tcfg["precision"], config={**config, "seed": seed})
    report = {"skipped_lines": skipped, "frame_errors": dataset.frame_errors}
    write_json(report, out_dir / "data_report.json")
    final = out_dir / "final.pt"
    atomic_save({"model": model.cpu().state_dict(), "config": config, "seed": seed,
                 "provenance": provenance(config, seed)}, final)
    return final
