"""Generate a whole dataset: one job per livestream (in worker processes if asked), then the
index files of the chosen format, built in a hidden sibling directory and renamed at the end."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgmn.data.synth import files, lpr4m_writer, mf_writer
from sgmn.data.synth import render as R
from sgmn.data.synth.config import FORMATS, SynthConfig, make_config
from sgmn.data.synth.files import LiveResult
from sgmn.data.synth.scene import ClipStreams, shop_images, simulate_clip
from sgmn.data.synth.world import TEST, TRAIN, design_pool, make_shop, seeded

TRAIN_FRAME_MS, TEST_FRAME_MS = 1000, 3000  # LPR4M: 1 fps training frames, 1 frame / 3 s test
CLIP_SLOT_MS = 120_000    # clip k of a live starts in [k * slot, k * slot + slot / 4)


@dataclass
class LiveJob:
    cfg: SynthConfig
    seed: int
    split: int
    index: int
    fmt: str
    root: str


def clips_per_live(cfg: SynthConfig, split: int, mf: bool) -> int:
    if split == TEST:
        return cfg.test_clips_per_live
    return cfg.mf_train_clips_per_live if mf else cfg.train_clips_per_live


def run_live(job: LiveJob, tick=None) -> LiveResult:
    """Generate one livestream: its shop images, its clips (frames or videos), its annotations."""
    cfg, root, mf = job.cfg, Path(job.root), job.fmt == "movingfashion"
    shop_rng = seeded(job.seed, job.split, job.index, 0)
    # MovingFashion has one image per product; LPR4M test shops have several per product
    categories = R.GARMENTS if mf else R.CATEGORIES
    shop = make_shop(cfg, shop_rng, job.split, categories, second_views=job.split == TEST and not mf,
                     pool=design_pool(cfg, job.seed, job.split, categories))
    sprites = [R.make_sprite(p.attrs, 2 * cfg.image_size) for p in shop.products]
    backs: dict[int, R.Sprite] = {}

    def back_sprite(i: int) -> R.Sprite:  # seen from behind: the badge on the front is hidden
        if i not in backs:
            backs[i] = R.make_sprite(dataclasses.replace(shop.products[i].attrs, badge="none"), 2 * cfg.image_size)
        return backs[i]

    test = job.split == TEST
    n_clips = clips_per_live(cfg, job.split, mf)
    res = LiveResult(n_clips)
    hard = [bool(shop_rng.random() < cfg.mf_hard_rate) for _ in shop.products] if mf else None

    for image_id, img in shop_images(cfg, shop, sprites, shop_rng):
        if mf:  # MovingFashion names shop images by product id; MF-Synth has no second views
            image_id = next(p.product_id for p in shop.products if p.image_id == image_id)
        files.save_jpeg(img, root / ("imgs" if mf else "images") / f"{image_id}.jpg", cfg.jpeg_quality)
    for i, p in enumerate(shop.products):
        if mf:
            res.mf_products[p.product_id] = {"img_path": f"imgs/{p.product_id}.jpg", "video_paths": [],
                                             "source": 2 if hard[i] else 1, "tracklets": {}}
            continue
        cat = files.category_id(p.attrs.category)
        for view, image_id in (("main", p.image_id), ("second", p.second_image_id)):
            if image_id:
                res.meta_products[image_id] = {
                    "product_id": p.product_id, "attributes": p.attrs.as_dict(), "category_id": cat,
                    "near_duplicate_of": p.near_duplicate_of, "family_id": p.family_id, "view": view}
        if test:
            res.titles.append((p.image_id, p.title))
    if test and not mf:
        gallery = [i for p in shop.products for i in (p.image_id, p.second_image_id) if i]
        res.gallery = (shop.live_id, [gallery[i] for i in shop_rng.permutation(len(gallery))])

    # which product each clip sells: the live's own stream, so the previous clip's is known
    targets = seeded(job.seed, job.split, job.index, 2).integers(len(shop.products), size=n_clips)
    for c in range(n_clips):
        rng = seeded(job.seed, job.split, job.index, 1, c)
        streams = ClipStreams(*(seeded(job.seed, job.split, job.index, 1, c, k) for k in range(1, 7)))
        target = int(targets[c])
        if mf:
            n_frames = int(rng.integers(cfg.mf_frames[0], cfg.mf_frames[1] + 1))
        else:
            n_frames = cfg.test_frames if test else int(rng.integers(*cfg.train_frames, endpoint=True))
        start = shop.base_ms + c * CLIP_SLOT_MS + int(rng.integers(0, CLIP_SLOT_MS // 4))
        frame_ms = 1000 // mf_writer.MF_FPS if mf else TEST_FRAME_MS if test else TRAIN_FRAME_MS
        end = start + n_frames * frame_ms
        clip_id = f"{shop.live_id}-{start}-{end}"
        truth = simulate_clip(cfg, shop, sprites, back_sprite, streams, clip_id, n_frames, frame_ms / 1000,
                              target, hard=bool(mf and hard[target]))
        if mf:
            mf_writer.emit_clip(res, cfg, shop, truth, streams.text, root, test)
        else:
            lpr4m_writer.emit_clip(res, cfg, shop, truth, streams.text, root, test,
                                   previous=int(targets[c - 1]) if c else None)
        if tick is not None:
            tick()
    return res


def generate(out_dir: str | Path, preset: str = "default", seed: int = 0, fmt: str = "lpr4m",
             overrides: dict[str, str | int | float] | None = None, progress: bool = True,
             workers: int = 1) -> Path:
    """Write LPR-Synth (`fmt="lpr4m"`) or MF-Synth (`fmt="movingfashion"`) to `out_dir`.

    The dataset is built in a temporary sibling directory and renamed onto `out_dir` at the end,
    so an interrupted run leaves no partial dataset. `out_dir` must not exist or be empty
    (FileExistsError otherwise). `workers` > 1 renders livestreams in parallel processes; the
    output is byte-identical for any number of workers.
    """
    cfg = make_config(preset, overrides)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        _build(cfg, preset, int(seed), fmt, tmp, progress, workers)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} was filled by someone else while generating")
        os.replace(tmp, out)  # atomic; replaces an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(cfg: SynthConfig, preset: str, seed: int, fmt: str, root: Path, progress: bool,
           workers: int) -> None:
    from tqdm import tqdm

    mf = fmt == "movingfashion"
    for d in ("imgs", "videos") if mf else ("images", "frames"):
        (root / d).mkdir()
    jobs = [LiveJob(cfg, seed, TRAIN, i, fmt, str(root)) for i in range(cfg.train_lives)]
    jobs += [LiveJob(cfg, seed, TEST, i, fmt, str(root)) for i in range(cfg.test_lives)]
    total = sum(clips_per_live(cfg, job.split, mf) for job in jobs)
    desc = f"{'MF' if mf else 'LPR'}-Synth {preset} seed {seed}"
    with tqdm(total=total, unit="clip", desc=desc, file=sys.stderr, disable=not progress) as bar:
        if workers <= 1:
            results = [run_live(job, tick=lambda: bar.update(1)) for job in jobs]
        else:
            results = []
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for r in pool.map(run_live, jobs):  # map keeps job order: output stays deterministic
                    bar.update(r.n_clips)
                    results.append(r)
    train = [r for job, r in zip(jobs, results) if job.split == TRAIN]
    test = [r for job, r in zip(jobs, results) if job.split == TEST]
    if mf:
        mf_writer.write_index(root, train, test)
    else:
        lpr4m_writer.write_index(root, cfg, preset, seed, train, test)
