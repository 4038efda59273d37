"""LPR-Synth in LPR4M's layout (docs/data_formats.md): frames as JPEGs named by their ids, the
tab-separated training file, the test json / text files with their counts in their names."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from sgmn.data.subsets import subset_labels
from sgmn.data.synth import files
from sgmn.data.synth import text as T
from sgmn.data.synth.config import GENERATOR_VERSION, SynthConfig
from sgmn.data.synth.files import LiveResult
from sgmn.data.synth.scene import ClipTruth
from sgmn.data.synth.world import Shop


def emit_clip(res: LiveResult, cfg: SynthConfig, shop: Shop, truth: ClipTruth, rng,
              root: Path, test: bool, previous: int | None = None) -> None:
    """Write one clip's frames and record its annotations; `rng` is the clip's text stream and
    `previous` the product sold in the clip before (ASR sometimes names it)."""
    clip_dir = root / "frames" / truth.clip_id
    clip_dir.mkdir()
    for frame_id, img in zip(truth.frame_ids, truth.frames):
        files.save_jpeg(img, clip_dir / f"{frame_id}.jpg", cfg.jpeg_quality)
    product = shop.products[truth.target]
    text, mentions = T.asr(rng, product.attrs, [shop.products[i].attrs for i in truth.distractors],
                           empty_rate=cfg.asr_empty_rate, error_rate=cfg.asr_error_rate,
                           distractor_rate=cfg.asr_distractor_rate, n_attributes=cfg.asr_attributes,
                           synonym_rate=cfg.asr_synonym_rate, previous_rate=cfg.asr_previous_rate,
                           previous=None if previous is None else shop.products[previous].attrs)
    cat_id, cat_name = files.category_id(product.attrs.category), product.attrs.category
    res.meta_clips[truth.clip_id] = {
        "product_image_id": product.image_id, "target_box_index": truth.target_index,
        "distractor_image_ids": [shop.products[i].image_id for i in truth.distractors],
        "asr_mentions_distractor": mentions, "depth_order": truth.depth_order,
        "times_s": truth.times_s, "target_speed": truth.speed}
    if test:
        res.asr.append((truth.clip_id, text))
        res.gt[truth.clip_id] = [i for i in (product.image_id, product.second_image_id) if i]
        res.frame_boxes.update(zip(truth.frame_ids, truth.boxes))
        res.categories.append((truth.clip_id, cat_id, cat_name))
        return
    labels = subset_labels(truth.boxes)
    fields = [truth.clip_id, files.dumps(truth.frame_ids), files.dumps(truth.boxes), product.image_id,
              product.title, str(cat_id), cat_name, text,
              labels["scale"], labels["duration"], labels["count"]]
    res.train_lines.append("\t".join(fields))


def write_index(root: Path, cfg: SynthConfig, preset: str, seed: int, train: list[LiveResult],
                 test: list[LiveResult]) -> None:
    """The index files of LPR4M's layout (docs/data_formats.md), names carrying their counts."""
    lines = [line for r in train for line in r.train_lines]
    files.write_text(root / f"training_videoinfo_full_{len(lines)}.txt", lines)
    asr = [pair for r in test for pair in r.asr]
    n = len(asr)
    files.write_text(root / f"test_videoid_asr_{n}.txt", [f"{v}\t{t}" for v, t in asr])
    titles = [pair for r in test for pair in r.titles]
    files.write_text(root / f"test_image_title_{len(titles)}.txt", [f"{i}\t{t}" for i, t in titles])
    files.write_json(root / f"test_videoid_to_gtimage_{n}.json", {k: v for r in test for k, v in r.gt.items()})
    files.write_json(root / f"test_liveid_to_gallery_{len(test)}.json", dict(r.gallery for r in test))
    boxes = {k: v for r in test for k, v in r.frame_boxes.items()}
    files.write_json(root / f"test_frameid2gtbox_{n}_{len(boxes)}.json", boxes)
    cats = [c for r in test for c in r.categories]
    files.write_text(root / f"test_videoid_category_{n}.txt", [f"{v}\t{i}\t{name}" for v, i, name in cats])
    files.write_json(root / "synth_meta.json", {
        "generator": "lpr-synth", "version": GENERATOR_VERSION, "preset": preset, "seed": seed,
        "knobs": dataclasses.asdict(cfg),
        "products": {k: v for r in train + test for k, v in r.meta_products.items()},
        "clips": {k: v for r in train + test for k, v in r.meta_clips.items()}})
