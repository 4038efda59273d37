"""Cheap statistics of a generated (LPR-Synth) dataset, computed without training.

`sgmn data-stats` writes them to `results/{ds}/data_stats.json`; `DEFINITIONS` (also in the
JSON) says what each number means. Five groups:

motion       how much of the frame-to-frame change falls on the sold product's box, against
             the box's share of the frame ("motion concentration"; 1 = no more motion on the
             product than anywhere else), and the same for the distractor boxes.
visibility   share of frames in which the sold product is boxed, is the largest box, and is
             the frontmost object (generator v2's `depth_order`; null for v1 data).
near_twins   expected share of rows of a uniformly random training batch of B clips that share
             the batch with a clip of a different product of the same design family (exact,
             hypergeometric; the trainer's StepBatchSampler draws such batches).
text_only    R@1 of ranking each query's gallery by cosine(ASR feature, title feature).
chance       expected R@1 of a random ranking (sgmn.evaluate.metrics.chance_recall).

Which box is the sold one and which products are variants of one design come from
`synth_meta.json` (hidden truth of LPR-Synth), so a real dataset has no such statistics: the
command raises FileNotFoundError naming the missing file.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sgmn.data import lpr4m
from sgmn.data.frames import read_image
from sgmn.data.records import Clip, TestSet
from sgmn.evaluate.metrics import chance_recall, rank_queries

log = logging.getLogger(__name__)

FORMAT, VERSION = "sgmn-data-stats", 1
META_FILE = "synth_meta.json"
DEFAULT_MAX_CLIPS = 400

DEFINITIONS = {
    "energy": "E(t) = sum over pixels and RGB channels of (frame[t+1] - frame[t])^2, frames as "
              "float in 0..255; pairs are consecutive frames of a clip (test: consecutive annotated frames)",
    "inside": "a pixel is inside a box when its centre ((col+0.5)/W, (row+0.5)/H) lies in the "
              "normalised [x1,y1,x2,y2] (edges included); inside a pair = in the box at t OR at t+1",
    "motion.sold": "pairs where the sold product is boxed at t or t+1 (synth_meta target_box_index); "
                   "inside = union of its boxes at t and t+1",
    "motion.distractors": "pairs with at least one non-sold box at t or t+1; inside = union of every "
                          "non-sold box at t and t+1",
    "motion.energy_share": "per clip: inside energy / total energy, summed over its used pairs",
    "motion.area_share": "per clip: inside pixels / all pixels, summed over its used pairs",
    "motion.concentration_mean": "mean over clips of energy_share / area_share (1 = the box moves no "
                                 "more than the rest of the frame); clips without a used pair, with "
                                 "zero total energy or zero inside area are left out (counted)",
    "motion.concentration_pooled": "(sum of inside energy / sum of total energy) / (sum of inside "
                                   "pixels / sum of pixels), summed over every used pair of every clip",
    "motion.sample": "test: every query when there are at most max_clips, else a sample; train: a "
                     "sample of at most max_clips clips, uniform without replacement, numpy "
                     "default_rng(seed) over the clips sorted by video_id",
    "visibility.visible": "share of all frames in which the sold product has a box",
    "visibility.largest": "share of all frames in which the sold product's box has the largest area "
                          "(x2-x1)*(y2-y1) of the frame's boxes (ties count as largest)",
    "visibility.frontmost": "share of all frames in which the sold product's box index is the last "
                            "entry of synth_meta depth_order[t] (back to front); null when the data "
                            "has no depth_order (generator v1)",
    "visibility.*_when_visible": "the same shares among the frames in which the sold product is boxed",
    "near_twins.rate": "expected share of rows of a uniformly random batch of B training clips (without "
                       "replacement) that share the batch with a clip of a different product of the "
                       "same family; exact: mean over clips of 1 - C(N-1-K, B-1) / C(N-1, B-1), "
                       "N training clips, K = clips of the row's family but of another product",
    "near_twins.same_product_rate": "the same with K = other clips of the same product (a positive "
                                    "that the in-batch loss treats as a negative)",
    "near_twins.family": "synth_meta products[image_id].family_id (generator v2; null = a family of "
                         "one product), else the connected "
                         "components of the near_duplicate_of links between product_ids (v1); a "
                         "training clip's product is products[field 4 image_id].product_id",
    "text_only.R@1": "percent of test queries whose top-1 gallery image by cosine(ASR feature, title "
                     "feature) is a ground truth (LPR protocol, ties: score desc then image_id asc); "
                     "features from the text_features cache; untitled gallery images (second views) "
                     "score -inf; a query with empty ASR is a miss; misses stay in the denominator",
    "text_only.near_twin_gallery": "the same over queries whose gallery holds an image of another "
                                   "product of a ground truth's family (chance_R@1 over the same queries)",
    "chance.R@1": "percent: mean over test queries of chance_recall(gallery size, ground truths in "
                  "the gallery, 1) = m / g",
}


# --------------------------------------------------------------------------------------------
# boxes and masks
# --------------------------------------------------------------------------------------------

def box_area(box: Sequence[float]) -> float:
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def boxes_mask(boxes: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any of the normalised boxes (edges included)."""
    cx = (np.arange(width) + 0.5) / width
    cy = (np.arange(height) + 0.5) / height
    mask = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in boxes:
        mask |= ((cy >= y1) & (cy <= y2))[:, None] & ((cx >= x1) & (cx <= x2))[None, :]
    return mask


def _check_target(clip_id: str, frame_boxes, target: Sequence[int]) -> None:
    if len(target) != len(frame_boxes):
        raise ValueError(f"{META_FILE}: clip {clip_id}: target_box_index has {len(target)} entries "
                         f"for {len(frame_boxes)} annotated frames")
    for t, (i, boxes) in enumerate(zip(target, frame_boxes)):
        if not -1 <= i < len(boxes):
            raise ValueError(f"{META_FILE}: clip {clip_id}: target_box_index[{t}] = {i} but frame {t} "
                             f"has {len(boxes)} boxes")


# --------------------------------------------------------------------------------------------
# motion
# --------------------------------------------------------------------------------------------

_ZERO = {"pairs": 0, "e_in": 0.0, "e_all": 0.0, "a_in": 0, "a_all": 0}


def clip_motion(frames: Sequence[np.ndarray], frame_boxes, target: Sequence[int]) -> dict:
    """Inside/total energy and pixel sums of one clip, for the sold box and the distractors.

    frames: (H, W, 3) arrays, one per annotated frame; frame_boxes[t]: normalised boxes of frame
    t; target[t]: index of the sold product's box in frame t or -1. Returns {"sold": sums,
    "distractors": sums} with sums = pairs, e_in, e_all (energy), a_in, a_all (pixels).
    """
    out = {"sold": dict(_ZERO), "distractors": dict(_ZERO)}
    for t in range(len(frames) - 1):
        a = np.asarray(frames[t], dtype=np.float64)
        b = np.asarray(frames[t + 1], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"frames {t} and {t + 1} differ in size: {a.shape} vs {b.shape}")
        h, w = a.shape[:2]
        energy = ((b - a) ** 2).reshape(h, w, -1).sum(axis=2)
        sold = [frame_boxes[s][target[s]] for s in (t, t + 1) if target[s] >= 0]
        others = [box for s in (t, t + 1) for i, box in enumerate(frame_boxes[s]) if i != target[s]]
        for name, boxes in (("sold", sold), ("distractors", others)):
            if not boxes:
                continue
            mask = boxes_mask(boxes, h, w)
            acc = out[name]
            acc["pairs"] += 1
            acc["e_in"] += float(energy[mask].sum())
            acc["e_all"] += float(energy.sum())
            acc["a_in"] += int(mask.sum())
            acc["a_all"] += h * w
    return out


def summarise_motion(per_clip: Sequence[dict]) -> dict:
    """Mean over clips and pooled concentration of `clip_motion` sums (see DEFINITIONS)."""
    shares, areas, ratios = [], [], []
    total = dict(_ZERO)
    no_pair = no_energy = no_area = 0
    for acc in per_clip:
        if acc["pairs"] == 0:
            no_pair += 1
            continue
        for k in total:
            total[k] += acc[k]
        if acc["e_all"] <= 0:
            no_energy += 1
            continue
        if acc["a_in"] == 0:
            no_area += 1
            continue
        share, area = acc["e_in"] / acc["e_all"], acc["a_in"] / acc["a_all"]
        shares.append(share)
        areas.append(area)
        ratios.append(share / area)

    def mean(x):
        return round(float(np.mean(x)), 6) if x else None

    pooled = None
    if total["e_all"] > 0 and total["a_in"] > 0:
        pooled = round((total["e_in"] / total["e_all"]) / (total["a_in"] / total["a_all"]), 6)
    return {
        "clips": len(ratios), "pairs": total["pairs"],
        "energy_share_mean": mean(shares), "area_share_mean": mean(areas),
        "concentration_mean": mean(ratios), "concentration_pooled": pooled,
        "energy_share_pooled": round(total["e_in"] / total["e_all"], 6) if total["e_all"] > 0 else None,
        "area_share_pooled": round(total["a_in"] / total["a_all"], 6) if total["a_all"] > 0 else None,
        "clips_without_pair": no_pair, "clips_without_energy": no_energy, "clips_without_area": no_area,
    }


def _normalised(clip: Clip, frame: np.ndarray):
    if clip.extra.get("pixel_boxes"):
        h, w = frame.shape[:2]
        return lpr4m.normalise_boxes(clip.frame_boxes, w, h)
    return clip.frame_boxes


def motion_stats(clips: Sequence[Clip], targets: dict[str, list[int]]) -> dict:
    """Motion concentration over `clips` (frames read from disk)."""
    per_clip = {"sold": [], "distractors": []}
    for clip in clips:
        frames = [read_image(p) for p in clip.frame_paths]
        if len(frames) != len(clip.frame_boxes):
            raise ValueError(f"clip {clip.video_id}: {len(frames)} frames on disk but "
                             f"{len(clip.frame_boxes)} annotated")
        boxes = _normalised(clip, frames[0]) if frames else clip.frame_boxes
        res = clip_motion(frames, boxes, targets[clip.video_id])
        for name, acc in per_clip.items():
            acc.append(res[name])
    return {name: summarise_motion(v) for name, v in per_clip.items()}


def sample_clips(clips: Sequence[Clip], max_clips: int, seed: int) -> list[Clip]:
    """All clips when there are at most max_clips, else a seeded uniform sample (sorted by id)."""
    ordered = sorted(clips, key=lambda c: c.video_id)
    if len(ordered) <= max_clips:
        return ordered
    idx = np.sort(np.random.default_rng(seed).choice(len(ordered), size=max_clips, replace=False))
    return [ordered[i] for i in idx]


# --------------------------------------------------------------------------------------------
# visibility
# --------------------------------------------------------------------------------------------

def visibility_stats(clips: Sequence[tuple[list, list[int], list | None]]) -> dict:
    """Shares of frames where the sold product is boxed, the largest box and the frontmost.

    clips: (frame_boxes, target_box_index, depth_order or None) per clip. frontmost is null
    unless every clip has a depth_order.
    """
    n = visible = largest = front = 0
    with_depth = all(depth is not None for _, _, depth in clips)
    for frame_boxes, target, depth in clips:
        for t, boxes in enumerate(frame_boxes):
            n += 1
            i = target[t]
            if i < 0:
                continue
            visible += 1
            areas = [box_area(b) for b in boxes]
            largest += areas[i] >= max(areas)
            if with_depth:
                order = depth[t]
                if sorted(order) != list(range(len(boxes))):
                    raise ValueError(f"depth_order[{t}] = {order} is not a permutation of the "
                                     f"{len(boxes)} box indices")
                front += order[-1] == i

    def share(k, d):
        return round(k / d, 6) if d else None

    return {
        "frames": n, "visible_frames": visible,
        "visible": share(visible, n), "largest": share(largest, n),
        "frontmost": share(front, n) if with_depth else None,
        "largest_when_visible": share(largest, visible),
        "frontmost_when_visible": share(front, visible) if with_depth else None,
        "frontmost_reason": None if with_depth else
        "no depth_order in synth_meta.json (generator v1)" if clips else "no clips",
    }


# --------------------------------------------------------------------------------------------
# families and in-batch near twins
# --------------------------------------------------------------------------------------------

def families(products: dict[str, dict]) -> tuple[dict[str, str], str]:
    """({product_id: family}, source) from synth_meta's products (keyed by image id).

    v2 (the key `family_id` present): the family_id, null = a product of its own (its product
    id names its family); v1: connected components of the `near_duplicate_of` links (product
    ids), each named by its smallest product id.
    """
    if any("family_id" in p for p in products.values()):
        out: dict[str, str | None] = {}
        for p in products.values():  # a view with a null family_id takes its product's other view's
            pid, fid = p["product_id"], p.get("family_id")
            if out.get(pid) is None:
                out[pid] = fid
            elif fid is not None and fid != out[pid]:
                raise ValueError(f"{META_FILE}: product {pid} has two family_ids ({out[pid]}, {fid})")
        return {pid: fid or pid for pid, fid in out.items()}, "family_id"
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in products.values():
        find(p["product_id"])
        if p.get("near_duplicate_of"):
            a, b = find(p["product_id"]), find(p["near_duplicate_of"])
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {pid: find(pid) for pid in list(parent)}, "near_duplicate_of"


def _p_at_least_one(n: int, k: int, b: int, cache: dict) -> float:
    """P(a uniform (b-1)-subset of the other n-1 items holds at least one of k marked ones)."""
    if (k, b) not in cache:
        cache[(k, b)] = 1.0 - math.comb(n - 1 - k, b - 1) / math.comb(n - 1, b - 1)
    return cache[(k, b)]


def near_twin_rate(clip_products: Sequence[str], family_of: dict[str, str], batch_size: int) -> dict:
    """Exact expected in-batch near-twin and same-product rates (see DEFINITIONS)."""
    n, b = len(clip_products), int(batch_size)
    if b < 2:
        raise ValueError(f"batch size must be >= 2, got {b}")
    if n < b:
        raise ValueError(f"batch size {b} exceeds the {n} training clips")
    fam = [family_of[p] for p in clip_products]
    per_product, per_family = Counter(clip_products), Counter(fam)
    cache: dict = {}
    twin = sum(_p_at_least_one(n, per_family[f] - per_product[p], b, cache)
               for p, f in zip(clip_products, fam))
    same = sum(_p_at_least_one(n, per_product[p] - 1, b, cache) for p in clip_products)
    products_of = defaultdict(set)
    for p, f in zip(clip_products, fam):
        products_of[f].add(p)
    return {
        "batch_size": b, "method": "exact (hypergeometric)",
        "rate": round(twin / n, 6), "same_product_rate": round(same / n, 6),
        "clips_with_twin_in_split": sum(per_family[f] > per_product[p] for p, f in zip(clip_products, fam)),
        "families_with_several_products": sum(len(v) > 1 for v in products_of.values()),
        "families": len(products_of), "products": len(per_product),
    }


# --------------------------------------------------------------------------------------------
# text-only and chance R@1
# --------------------------------------------------------------------------------------------

def _pct(x: float) -> float:
    return round(100.0 * float(x), 4)


def text_only_recall(test: TestSet, queries, text_store, product_of: dict[str, str],
                     family_of: dict[str, str]) -> dict:
    """R@1 of ranking each gallery by cosine(ASR, title) under the LPR protocol (rank_queries).

    queries: build_queries(test) (same order as test.queries); product_of: image id -> product
    id; family_of: product id -> family (for the near-twin-gallery subset).
    """
    qs = list(test.queries)
    asr_feat, asr_present = text_store.lookup([c.asr for c in qs])
    asr_feat, asr_present = asr_feat.numpy().astype(np.float64), asr_present.numpy()
    titled = sorted({i for q in queries for i in q.gallery if test.titles.get(i, "").strip()})
    title_feat, title_present = text_store.lookup([test.titles[i] for i in titled])
    title_feat = title_feat.numpy().astype(np.float64)
    keep = title_present.numpy()
    row_of = {img: r for r, img in enumerate(titled) if keep[r]}

    def unit(x):
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    asr_feat, title_feat = unit(asr_feat), unit(title_feat)
    rows = []
    for qi, (clip, q) in enumerate(zip(qs, queries)):
        if not asr_present[qi]:
            continue  # no score rows: a miss ("no scores")
        imgs = [i for i in dict.fromkeys(q.gallery) if i in row_of]
        if imgs:
            s = title_feat[[row_of[i] for i in imgs]] @ asr_feat[qi]
            rows.append(pd.DataFrame({"video_id": q.video_id, "image_id": imgs, "score": s}))
    scores = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        {"video_id": [], "image_id": [], "score": []})
    table = rank_queries(scores, queries)
    twin = np.array([has_twin_in_gallery(q.gt, q.gallery, product_of, family_of) for q in queries], dtype=bool)
    sub = table[twin]
    gallery_images = {i for q in queries for i in q.gallery}
    return {
        "R@1": _pct(table["hit@1"].mean()) if len(table) else None, "n": len(table),
        "n_misses": int(table["miss_reason"].notna().sum()),
        "n_empty_asr": int((~asr_present).sum()),
        "gallery_images": len(gallery_images),
        "untitled_gallery_images": len(gallery_images - set(row_of)),
        "near_twin_gallery": {
            "R@1": _pct(sub["hit@1"].mean()) if len(sub) else None, "n": len(sub),
            "chance_R@1": _chance_r1(sub) if len(sub) else None,
        },
        "text_features": {k: text_store.meta.get(k) for k in ("encoder", "model", "dim", "count")},
        "tie_break": "score desc, then image_id asc",
    }


def has_twin_in_gallery(gt: Sequence[str], gallery: Sequence[str], product_of: dict[str, str],
                        family_of: dict[str, str]) -> bool:
    """Does the gallery hold an image of another product of a ground truth's family?"""
    gt_products = {product_of[g] for g in gt if g in product_of}
    gt_families = {family_of[p] for p in gt_products}
    return any(img in product_of and product_of[img] not in gt_products
               and family_of[product_of[img]] in gt_families for img in gallery)


def _chance_r1(table: pd.DataFrame) -> float:
    vals = [chance_recall(g, m, 1) for g, m in zip(table["gallery_size"], table["n_gt_in_gallery"])]
    return _pct(np.mean(vals))


def chance_stats(test: TestSet, queries) -> dict:
    """Chance R@1 (percent): mean over queries of chance_recall(gallery size, GTs in it, 1)."""
    vals = []
    for q in queries:
        gallery = list(dict.fromkeys(q.gallery))
        m = len(set(q.gt) & set(gallery))
        vals.append(chance_recall(len(gallery), m, 1))
    return {"R@1": _pct(np.mean(vals)) if vals else None, "n": len(vals)}


# --------------------------------------------------------------------------------------------
# the whole dataset
# --------------------------------------------------------------------------------------------

def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; data statistics need LPR-Synth's hidden truth "
                                f"(which box is the sold product, which products are variants), "
                                f"so they are computed for synthetic LPR4M-layout datasets only")
    return json.loads(path.read_text(encoding="utf-8"))


def _clip_meta(meta: dict, clip_id: str) -> dict:
    try:
        return meta["clips"][clip_id]
    except KeyError:
        raise ValueError(f"{META_FILE}: no entry for clip {clip_id}; the file belongs to other data") from None


def compute_data_stats(data_dir: str | Path, text_dir: str | Path, batch_size: int,
                       max_clips: int = DEFAULT_MAX_CLIPS, seed: int = 0) -> dict:
    """Every statistic of the module docstring for the LPR-Synth dataset under `data_dir`."""
    from sgmn.evaluate.run import build_queries
    from sgmn.io import provenance
    from sgmn.text.features import TextFeatures

    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    text_store = TextFeatures.load(text_dir)
    train = lpr4m.read_training(data_dir)
    test = lpr4m.read_test(data_dir)
    if test.problems:
        raise ValueError(f"{data_dir}: test annotation problems: {test.problems[:3]}")
    queries = build_queries(test)

    targets, depth = {}, {}
    for clip in list(train) + list(test.queries):
        cm = _clip_meta(meta, clip.video_id)
        target = list(cm["target_box_index"])
        _check_target(clip.video_id, clip.frame_boxes or [], target)
        targets[clip.video_id] = target
        depth[clip.video_id] = cm.get("depth_order")

    visibility = {
        split: visibility_stats([(c.frame_boxes, targets[c.video_id], depth[c.video_id]) for c in clips])
        for split, clips in (("test", test.queries), ("train", train))}

    motion = {"max_clips": max_clips, "seed": seed}
    for split, clips in (("test", test.queries), ("train", train)):
        sample = sample_clips(clips, max_clips, seed)
        motion[split] = {"clips_available": len(clips), "clips_sampled": len(sample),
                         **motion_stats(sample, targets)}

    family_of, family_source = families(meta["products"])
    product_of = {image_id: p["product_id"] for image_id, p in meta["products"].items()}
    missing = sorted({c.image_id for c in train} - set(product_of))
    if missing:
        raise ValueError(f"{META_FILE}: training image {missing[0]} is not among its products")
    twins = near_twin_rate([product_of[c.image_id] for c in train], family_of, batch_size)
    twins["family_source"] = family_source
    text_only = text_only_recall(test, queries, text_store, product_of, family_of)

    n_train_frames = sum(len(c.frame_boxes) for c in train)
    n_test_frames = sum(len(c.frame_boxes or []) for c in test.queries)
    stats = {
        "format": FORMAT, "version": VERSION,
        "dataset": {"path": str(data_dir), "generator": meta.get("generator"),
                    "generator_version": meta.get("version"), "preset": meta.get("preset"),
                    "seed": meta.get("seed"), "knobs": meta.get("knobs")},
        "counts": {"train_clips": len(train), "train_frames": n_train_frames,
                   "train_shops": len({c.live_id for c in train}),
                   "train_products": len({product_of[c.image_id] for c in train}),
                   "test_queries": len(test.queries), "test_frames": n_test_frames,
                   "test_shops": len(test.gallery),
                   "test_gallery_images": len({i for g in test.gallery.values() for i in g})},
        "motion": motion,
        "visibility": visibility,
        "near_twins": twins,
        "text_only": text_only,
        "chance": chance_stats(test, queries),
        "definitions": DEFINITIONS,
        "provenance": {**provenance(None, None), "data": str(data_dir), "text_features": str(text_dir)},
    }
    return stats
