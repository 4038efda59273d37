"""Scoring a trained model on a test split, and metrics from a saved score table.

Every method is scored the same way: encode each gallery image once and each query clip once,
then score each query against its own gallery (its livestream's for LPR4M, the global one for
MovingFashion). Scores are saved in long format (video_id, image_id, score), so every metric can
be recomputed from the table and the test annotations alone (`sgmn evaluate --scores`).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sgmn.data.datasets import ImageDataset, QueryDataset, collate, index_of, read_split
from sgmn.data.frame_store import open_store
from sgmn.data.gallery_unit import DEFAULT_UNIT, apply_gallery_unit
from sgmn.data.records import TestSet
from sgmn.evaluate.from_scores import build_queries, metrics_from_scores  # noqa: F401  (torch-free, re-exported)
from sgmn.models.device import autocast, resolve_precision

log = logging.getLogger(__name__)


def _progress(it, desc):
    return tqdm(it, desc=desc, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 15.0)


def _with_text(model, batch: dict, text_store, texts: list[str], key: str) -> dict:
    """The batch with `{key}_feat` / `{key}_present` added for a method that reads text."""
    if not model.uses_text:
        return batch
    if text_store is None:
        raise ValueError(f"this {model.name} model uses text (its te switch): pass the text features (--text-features)")
    feats, present = text_store.lookup(texts)
    device = next(iter(batch.values())).device
    batch[f"{key}_feat"], batch[f"{key}_present"] = feats.to(device), present.to(device)
    return batch


def _kept(batch: dict, ok: torch.Tensor, device) -> dict:
    """The readable rows of a batch's tensors, on the device (strings and lists are dropped)."""
    return {k: v[ok].to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "ok"}


@torch.no_grad()
def encode_gallery(model, test: TestSet, image_size: int, batch_size: int, device, text_store=None,
                   store=None):
    ids = sorted({i for ids in test.gallery.values() for i in ids})
    loader = DataLoader(ImageDataset(test.image_paths, ids, image_size, store), batch_size=batch_size,
                        collate_fn=collate)
    feats, kept, errors = [], [], {}
    for batch in _progress(loader, "gallery"):
        ok = batch["ok"]
        for image_id, good, err in zip(batch["image_id"], ok.tolist(), batch["error"]):
            if not good:
                errors[image_id] = err
        if ok.any():
            ids = [i for i, good in zip(batch["image_id"], ok.tolist()) if good]
            rows = _with_text(model, _kept(batch, ok, device), text_store,
                              [test.titles.get(i, "") for i in ids], "title")
            feats.append(model.encode_image(rows).float().cpu())
            kept += ids
    emb = torch.cat(feats) if feats else torch.zeros(0, 1)
    return kept, emb, errors


@torch.no_grad()
def encode_queries(model, test: TestSet, num_frames: int, image_size: int, batch_size: int, device,
                   text_store=None, store=None):
    loader = DataLoader(QueryDataset(test, num_frames, image_size, store), batch_size=batch_size,
                        collate_fn=collate)
    feats, kept, unreadable, frame_errors = [], [], {}, []
    for batch in _progress(loader, "queries"):
        ok = batch["ok"]
        for vid, good, err, ferr in zip(batch["video_id"], ok.tolist(), batch["error"], batch["frame_errors"]):
            frame_errors += ferr
            if not good:
                unreadable[vid] = err
        if ok.any():
            rows = _with_text(model, _kept(batch, ok, device), text_store,
                              [a for a, good in zip(batch["asr"], ok.tolist()) if good], "asr")
            feats.append(model.encode_clip(rows).float().cpu())
            kept += [v for v, good in zip(batch["video_id"], ok.tolist()) if good]
    emb = torch.cat(feats) if feats else torch.zeros(0, 1)
    return kept, emb, unreadable, frame_errors


def score_table(test: TestSet, query_ids, query_emb, image_ids, image_emb, score_fn) -> pd.DataFrame:
    """Long-format scores of each query against its own gallery (one matmul per gallery)."""
    qpos = {v: i for i, v in enumerate(query_ids)}
    ipos = {v: i for i, v in enumerate(image_ids)}
    by_gallery: dict[str, list[str]] = {}
    for clip in test.queries:
        if clip.video_id in qpos:
            by_gallery.setdefault(clip.live_id or "all", []).append(clip.video_id)
    frames = []
    for key, vids in by_gallery.items():
        gids = [g for g in test.gallery.get(key, []) if g in ipos]
        if not gids:
            continue
        with torch.no_grad():   # a learned pairwise score (AsymNet, SEAM) is a network
            s = score_fn(query_emb[[qpos[v] for v in vids]], image_emb[[ipos[g] for g in gids]])  # (Q, G)
        frames.append(pd.DataFrame({"video_id": np.repeat(vids, len(gids)),
                                    "image_id": np.tile(gids, len(vids)),
                                    "score": s.numpy().ravel()}))
    if not frames:
        return pd.DataFrame({"video_id": [], "image_id": [], "score": []})
    return pd.concat(frames, ignore_index=True)


def evaluate_model(model, config: dict, data_dir: str | Path, text_store=None, frame_store=None):
    """Encode and score the test split; returns (scores, metrics, per-query table).

    A model with a text branch scores with Eq. 23 and needs the text feature cache (text_store).
    frame_store: a directory built by `sgmn frame-store` for this data (decoded frames), or None.
    """
    # the gallery unit is applied before encoding, so only the images it keeps are scored
    test = apply_gallery_unit(read_split(data_dir, config["dataset"]["format"], "test",
                                         index=index_of(config["dataset"])),
                              config["evaluate"].get("gallery", DEFAULT_UNIT))
    store = open_store(frame_store, data_dir)
    device = next(model.parameters()).device
    model.eval()
    m, bs = config["model"], config["evaluate"]["batch_size"]
    precision, why = resolve_precision(config.get("train", {}).get("precision", "fp32"), device, model)
    log.info("encoding in %s (%s)", precision, why)
    with autocast(precision, device):      # the encoders as trained (embeddings come back as fp32)
        image_ids, image_emb, gallery_errors = encode_gallery(model, test, m["image_size"], bs, device,
                                                               text_store, store)
        query_ids, query_emb, unreadable, frame_errors = encode_queries(
            model, test, m["num_frames"], m["image_size"], bs, device, text_store, store)
    scores = score_table(test, query_ids, query_emb, image_ids, image_emb, model.score)
    metrics, per_query = metrics_from_scores(test, scores, unreadable)
    metrics["gallery_errors"] = gallery_errors
    metrics["frame_errors"] = frame_errors
    return scores, metrics, per_query
