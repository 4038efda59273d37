"""Training a retrieval model: any registered method (sgmn.models.registry), built by the factory.

`train_run` builds the config's method (its visual encoder from the configured CLIP weights),
trains it and writes `final.pt`, a self-describing checkpoint (weights, config, seed,
provenance) that `sgmn.models.factory.load_model` rebuilds the model from.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from sgmn.data.frame_store import open_store
from sgmn.data.datasets import ClipPairDataset, collate, frame_masking, index_of, read_split
from sgmn.config import uses_text
from sgmn.io import atomic_save, provenance, write_json
from sgmn.models.factory import build_model, init_from_checkpoint, load_model  # noqa: F401  (load_model: re-exported)
from sgmn.text.features import TextFeatures
from sgmn.train import distributed, loop

log = logging.getLogger(__name__)


def add_text_features(batch: dict, store: TextFeatures | None, device) -> dict:
    """ASR and title features of a training batch (Eq. 4's input), looked up in the cache."""
    if store is not None:
        for key in ("asr", "title"):
            feats, present = store.lookup(batch[key])
            batch[f"{key}_feat"], batch[f"{key}_present"] = feats.to(device), present.to(device)
    return batch


def train_run(config: dict, seed: int, data_dir: str | Path, clip_weights: str | None,
              out_dir: str | Path, text_features: str | Path | None = None,
              frame_store: str | Path | None = None, init_checkpoint: str | Path | None = None) -> Path:
    """Train one (variant, seed) run; returns the path of final.pt. frame_store: decoded frames
    of data_dir (`sgmn frame-store`), or None to decode the files; init_checkpoint: another
    run's final.pt to start from (fine-tuning; a resumed run continues from its own checkpoint)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg, dcfg = config["train"], config["dataset"]
    torch.manual_seed(seed)
    text = uses_text(config)
    if text and text_features is None:
        raise ValueError(f"{config.get('method', 'sgmn')}.te is on: pass the text feature cache (--text-features)")
    store = TextFeatures.load(text_features) if text else None
    model = build_model(config, clip_weights, store.dim if store else None)
    if init_checkpoint is not None:
        init_from_checkpoint(model, init_checkpoint)
    if distributed.is_main():
        write_json({**provenance(config, seed), "clip_weights": str(clip_weights),
                    "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint)},
                   out_dir / "params.json")

    skipped: list[str] = []
    clips = read_split(data_dir, dcfg["format"], "train", dcfg["on_bad_line"], skipped, index_of(dcfg))
    dataset = ClipPairDataset(clips, config["model"]["num_frames"], config["model"]["image_size"],
                              dcfg["on_bad_frame"], open_store(frame_store, data_dir))
    log.info("training on %d clips of %d products (%d bad lines skipped)", len(dataset),
             len(dataset.product_ids), len(skipped))

    def loss_fn(m, batch, generator):
        getattr(m, "module", m).hardest_negatives = batch["step"] >= tcfg["triplet_warmup_steps"]
        # drawn for the global batch (gathered under torchrun, then this rank's slice), so a
        # sample's masking does not depend on the number of processes
        batch["frame_mask"] = distributed.local_slice(frame_masking(
            distributed.gather(batch["frame_mask"]).cpu(), tcfg["frame_mask_prob"],
            tcfg["frame_mask_max_ratio"], generator, tcfg["frame_mask_mode"])).to(batch["frame_mask"].device)
        return m(add_text_features(batch, store, batch["frame_mask"].device))

    loop.train(model, dataset, collate, loss_fn, out_dir, steps=tcfg["steps"],
               batch_size=tcfg["batch_size"], lr=tcfg["lr"], warmup_steps=tcfg["warmup_steps"],
               weight_decay=tcfg["weight_decay"], optimizer=tcfg["optimizer"],
               min_lr_ratio=tcfg["min_lr_ratio"], grad_clip=tcfg["grad_clip"], seed=seed,
               checkpoint_every=tcfg["checkpoint_every"], num_workers=tcfg["num_workers"],
               device=tcfg["device"], precision=tcfg["precision"], config={**config, "seed": seed},
               clip_lr_scale=tcfg["clip_lr_scale"], freeze_stem=tcfg["freeze_stem"],
               lr_schedule=tcfg["lr_schedule"], warmup_proportion=tcfg["warmup_proportion"])
    frame_errors = distributed.gather_objects(dataset.frame_errors)  # every rank's, in rank order
    final = out_dir / "final.pt"
    if distributed.is_main():  # rank 0 writes; the other ranks hold the same weights
        report = {"skipped_lines": skipped, "frame_errors": [e for errs in frame_errors for e in errs]}
        write_json(report, out_dir / "data_report.json")
        atomic_save({"model": model.cpu().state_dict(), "config": config, "seed": seed,
                     "text_dim": store.dim if store else None,
                     "provenance": provenance(config, seed)}, final)
    distributed.barrier()  # final.pt exists when any rank returns
    return final
