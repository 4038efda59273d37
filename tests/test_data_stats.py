"""Data statistics (sgmn data-stats): hand-made inputs with hand-computed values, and one smoke run."""
import json
import math
import zlib

import numpy as np
import pytest

from sgmn.cli import main
from sgmn.data import lpr4m, records
from sgmn.data.records import Clip
from sgmn.evaluate import data_stats as ds
from sgmn.evaluate.metrics import Query
from sgmn.text.features import TextFeatures, collect_texts, write_text_features

# ------------------------------------------------------------------------------------- masks

def test_boxes_mask_takes_pixels_whose_centre_is_in_the_box():
    # 8 px: centres at 0.0625, 0.1875, ..., so [0.25, 0.5] holds columns/rows 2 and 3 only
    mask = ds.boxes_mask([[0.25, 0.25, 0.5, 0.5]], 8, 8)
    assert mask.sum() == 4 and mask[2:4, 2:4].all()
    union = ds.boxes_mask([[0.25, 0.25, 0.5, 0.5], [0.0, 0.0, 0.25, 0.25]], 8, 8)
    assert union.sum() == 8 and union[0:2, 0:2].all()
    assert ds.boxes_mask([], 8, 8).sum() == 0


# ------------------------------------------------------------------------------------ motion

def test_all_change_inside_the_sold_box_gives_share_one():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[2, 3] = 10  # inside [0.25,0.25,0.5,0.5]: energy 3 channels x 10^2 = 300
    box = [0.25, 0.25, 0.5, 0.5]
    res = ds.clip_motion([a, b], [[box], [box]], [0, 0])
    assert res["sold"] == {"pairs": 1, "e_in": 300.0, "e_all": 300.0, "a_in": 4, "a_all": 64}
    assert res["distractors"]["pairs"] == 0  # no non-sold box
    s = ds.summarise_motion([res["sold"]])
    assert s["energy_share_mean"] == 1.0 and s["area_share_mean"] == 4 / 64
    assert s["concentration_mean"] == 16.0 and s["concentration_pooled"] == 16.0


def test_pairs_without_the_sold_box_are_skipped_and_distractors_counted_apart():
    f0 = np.zeros((8, 8, 3), np.uint8)
    f1 = f0.copy()
    f1[0, 0] = 10  # changes in pair 0 (300) and back in pair 1 (300)
    f2 = f0.copy()
    d = [0.0, 0.0, 0.25, 0.25]   # distractor: rows/cols 0-1, 4 px, holds pixel (0, 0)
    s = [0.5, 0.5, 1.0, 1.0]     # sold: rows/cols 4-7, 16 px
    res = ds.clip_motion([f0, f1, f2], [[d], [d], [s, d]], [-1, -1, 0])
    # pair 0: no sold box at t or t+1 -> skipped; pair 1: sold only at t+1 -> its 16 px
    assert res["sold"] == {"pairs": 1, "e_in": 0.0, "e_all": 300.0, "a_in": 16, "a_all": 64}
    # distractors: box d in both pairs, all 600 of energy inside, 2 x 4 of 2 x 64 px
    assert res["distractors"] == {"pairs": 2, "e_in": 600.0, "e_all": 600.0, "a_in": 8, "a_all": 128}
    assert ds.summarise_motion([res["sold"]])["concentration_mean"] == 0.0
    assert ds.summarise_motion([res["distractors"]])["concentration_mean"] == 16.0


def test_motion_mean_over_clips_and_pooled_ratio():
    clip_a = {"pairs": 1, "e_in": 300.0, "e_all": 300.0, "a_in": 4, "a_all": 64}    # 1 / (1/16) = 16
    clip_b = {"pairs": 1, "e_in": 100.0, "e_all": 400.0, "a_in": 16, "a_all": 64}   # .25 / .25 = 1
    no_pair = {"pairs": 0, "e_in": 0.0, "e_all": 0.0, "a_in": 0, "a_all": 0}
    s = ds.summarise_motion([clip_a, clip_b, no_pair])
    assert s["clips"] == 2 and s["clips_without_pair"] == 1 and s["pairs"] == 2
    assert s["concentration_mean"] == pytest.approx(8.5)
    # (400 / 700) / (20 / 128) = (4/7) * (32/5) = 128/35
    assert s["concentration_pooled"] == pytest.approx(128 / 35, abs=1e-6)
    still = {"pairs": 1, "e_in": 0.0, "e_all": 0.0, "a_in": 4, "a_all": 64}
    s = ds.summarise_motion([still])
    assert s["clips_without_energy"] == 1 and s["concentration_mean"] is None
    assert s["concentration_pooled"] is None


# -------------------------------------------------------------------------------- visibility

def test_visibility_shares():
    boxes = [[[0, 0, .5, .5], [0, 0, .2, .2]],   # sold (0) visible and largest
             [[0, 0, .1, .1], [0, 0, .5, .5]],   # sold (0) visible, not largest
             [],                                 # not visible
             [[0, 0, .3, .3], [.5, .5, .8, .8]]]  # sold (1) ties for largest: counts
    target = [0, 0, -1, 1]
    v = ds.visibility_stats([(boxes, target, None)])
    assert (v["frames"], v["visible_frames"]) == (4, 3)
    assert v["visible"] == 0.75 and v["largest"] == 0.5
    assert v["largest_when_visible"] == round(2 / 3, 6)
    assert v["frontmost"] is None and v["frontmost_when_visible"] is None and "v1" in v["frontmost_reason"]
    depth = [[1, 0], [0, 1], [], [1, 0]]  # back to front: frontmost 0, 1, -, 0
    v = ds.visibility_stats([(boxes, target, depth)])
    assert v["frontmost"] == 0.25 and v["frontmost_when_visible"] == round(1 / 3, 6)
    assert v["frontmost_reason"] is None
    # one clip without depth_order: frontmost is null for the split
    assert ds.visibility_stats([(boxes, target, depth), (boxes, target, None)])["frontmost"] is None


# -------------------------------------------------------------------------- families, twins

def test_families_from_near_duplicate_links_and_from_family_id():
    products = {"i1": {"product_id": "P1", "near_duplicate_of": None},
                "i2": {"product_id": "P2", "near_duplicate_of": "P1"},
                "i3": {"product_id": "P3", "near_duplicate_of": "P2"},   # a chain: one family
                "i4": {"product_id": "P4", "near_duplicate_of": None},
                "i5": {"product_id": "P1", "near_duplicate_of": None}}  # second view of P1
    fam, source = ds.families(products)
    assert source == "near_duplicate_of"
    assert fam["P1"] == fam["P2"] == fam["P3"] != fam["P4"]
    v2 = {k: {**p, "family_id": "F" if k in ("i1", "i4") else "G"} for k, p in products.items()}
    v2["i5"]["family_id"] = None  # a second view without it: still P1's family
    v2["i6"] = {"product_id": "P6", "near_duplicate_of": None, "family_id": None}  # a family of its own
    fam, source = ds.families(v2)  # family_id wins over the links
    assert source == "family_id" and fam == {"P1": "F", "P4": "F", "P2": "G", "P3": "G", "P6": "P6"}
    v2["i5"]["family_id"] = "G"
    with pytest.raises(ValueError, match="two family_ids"):
        ds.families(v2)


def test_near_twin_rate_matches_hand_formulas():
    family = {"a": "F", "a2": "F", "b": "b", "c": "c"}
    # 4 clips a, a2, b, c; B = 2: of the 6 equally likely pairs only {a, a2} puts a twin beside
    # a row, giving 2 of 12 rows = 1/6 (formula: a has K = 1: 1 - C(2,1)/C(3,1) = 1/3, a2 too)
    r = ds.near_twin_rate(["a", "a2", "b", "c"], family, 2)
    assert r["rate"] == round(1 / 6, 6) and r["same_product_rate"] == 0.0
    assert r["clips_with_twin_in_split"] == 2 and r["families_with_several_products"] == 1
    # clips a, a, a2, b; B = 2: pairs {a,a2} x2 give 4 twin rows of 12 = 1/3, {a,a} gives
    # 2 same-product rows of 12 = 1/6
    r = ds.near_twin_rate(["a", "a", "a2", "b"], family, 2)
    assert r["rate"] == round(1 / 3, 6) and r["same_product_rate"] == round(1 / 6, 6)
    # B = N: every clip with a twin in the split has it in the batch
    assert ds.near_twin_rate(["a", "a", "a2", "b"], family, 4)["rate"] == 0.75
    # a larger case against the product form of the hypergeometric: N = 10, B = 3, a family
    # of products x (2 clips) and y (3 clips), 5 singletons
    clips = ["x"] * 2 + ["y"] * 3 + [f"s{i}" for i in range(5)]
    fam = {"x": "F", "y": "F", **{f"s{i}": f"s{i}" for i in range(5)}}
    p_x = 1 - (6 / 9) * (5 / 8)   # K = 3 y-clips among the 9 others, 2 draws
    p_y = 1 - (7 / 9) * (6 / 8)   # K = 2 x-clips
    assert ds.near_twin_rate(clips, fam, 3)["rate"] == pytest.approx((2 * p_x + 3 * p_y) / 10, abs=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        ds.near_twin_rate(["a", "b"], family, 3)


def test_has_twin_in_gallery():
    product_of = {"g1": "P1", "g1b": "P1", "g2": "P2", "h": "P3"}
    family_of = {"P1": "F", "P2": "F", "P3": "H"}
    assert ds.has_twin_in_gallery(["g1"], ["g1", "g2", "h"], product_of, family_of)
    assert not ds.has_twin_in_gallery(["g1"], ["g1", "g1b", "h"], product_of, family_of)  # same product
    assert not ds.has_twin_in_gallery(["h"], ["h", "g1"], product_of, family_of)


# ------------------------------------------------------------------------ text-only, chance

LIVE_A = "aaaaaaaa-0000-0000-0000-000000000000"
LIVE_B = "bbbbbbbb-0000-0000-0000-000000000000"


def _hand_test_set():
    q = [Clip(video_id=f"{LIVE_A}-{i}000-{i}900", live_id=LIVE_A, asr=a)
         for i, a in enumerate(["red", "", "blue"], start=1)]
    q.append(Clip(video_id=f"{LIVE_B}-4000-4900", live_id=LIVE_B, asr="hat"))
    gallery = {LIVE_A: ["g1", "g1b", "g2"], LIVE_B: ["h1", "h2"]}
    gt = {c.video_id: ["g1", "g1b"] for c in q[:3]}
    gt[q[3].video_id] = ["h1"]
    titles = {"g1": "red cup", "g2": "blue cup", "h1": "green hat", "h2": "white vase"}  # g1b untitled
    test = records.TestSet(queries=q, gallery=gallery, gt=gt, image_paths={}, titles=titles)
    queries = [Query(video_id=c.video_id, gallery=tuple(gallery[c.live_id]), gt=tuple(gt[c.video_id]),
                     subsets=None) for c in q]
    return test, queries


def test_text_only_recall_and_chance_by_hand(tmp_path):
    test, queries = _hand_test_set()
    e = np.eye(4, dtype=np.float32)
    texts = ["red cup", "blue cup", "green hat", "white vase", "red", "blue", "hat"]
    feats = np.stack([e[0], e[1], e[2], e[3], e[0], e[1], 0.8 * e[2] + 0.6 * e[3]])
    write_text_features(tmp_path / "text", texts, feats)
    store = TextFeatures.load(tmp_path / "text")
    product_of = {"g1": "P1", "g1b": "P1", "g2": "P2", "h1": "P3", "h2": "P4"}
    family_of = {"P1": "F", "P2": "F", "P3": "P3", "P4": "P4"}
    r = ds.text_only_recall(test, queries, store, product_of, family_of)
    # q1 "red" -> g1 (hit); q2 empty ASR (miss); q3 "blue" -> g2 (miss); q4 "hat" -> h1 (.8 > .6, hit)
    assert r["R@1"] == 50.0 and r["n"] == 4 and r["n_empty_asr"] == 1 and r["n_misses"] == 1
    assert r["untitled_gallery_images"] == 1 and r["gallery_images"] == 5
    # live A's galleries hold P2, a variant of the ground truth P1: q1-q3, 1 hit of 3
    tw = r["near_twin_gallery"]
    assert tw["n"] == 3 and tw["R@1"] == round(100 / 3, 4)
    assert tw["chance_R@1"] == round(100 * 2 / 3, 4)  # 2 ground truths in a gallery of 3
    # chance: (3 x 2/3 + 1/2) / 4 = 62.5 %
    assert ds.chance_stats(test, queries) == {"R@1": 62.5, "n": 4}


# -------------------------------------------------------------------------- the smoke dataset

def _bag_of_words_cache(data, out):
    """A text feature cache of hashed word counts (no encoder needed; cosine = word overlap)."""
    texts = collect_texts(data, "lpr4m")
    feats = np.zeros((len(texts), 64), np.float32)
    for i, t in enumerate(texts):
        for w in t.split():
            feats[i, zlib.crc32(w.encode()) % 64] += 1
    norm = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.divide(feats, norm, out=np.zeros_like(feats), where=norm > 0)
    write_text_features(out, texts, feats, {"encoder": "test-bag-of-words"})
    return out


def test_data_stats_on_the_smoke_dataset(smoke_data, tmp_path):
    text = _bag_of_words_cache(smoke_data, tmp_path / "text")
    out = tmp_path / "stats" / "data_stats.json"
    assert main(["data-stats", "--data", str(smoke_data), "--text-features", str(text),
                 "--batch-size", "8", "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    meta = json.loads((smoke_data / "synth_meta.json").read_text())
    train, test = lpr4m.read_training(smoke_data), lpr4m.read_test(smoke_data)

    assert s["format"] == "sgmn-data-stats" and s["dataset"]["knobs"] == meta["knobs"]
    assert s["dataset"]["generator_version"] == meta["version"]
    c = s["counts"]
    assert (c["train_clips"], c["test_queries"], c["test_shops"]) == (len(train), len(test.queries), len(test.gallery))
    assert set(s["definitions"]) >= {"motion.concentration_mean", "near_twins.rate", "text_only.R@1", "chance.R@1"}

    for split in ("test", "train"):
        m = s["motion"][split]
        assert m["clips_sampled"] == m["clips_available"] <= 400
        for who in ("sold", "distractors"):
            assert m[who]["clips"] > 0 and m[who]["concentration_pooled"] > 0
            assert 0 <= m[who]["energy_share_mean"] <= 1 and 0 < m[who]["area_share_mean"] <= 1
        v = s["visibility"][split]
        clips = test.queries if split == "test" else train
        targets = [i for cl in clips for i in meta["clips"][cl.video_id]["target_box_index"]]
        assert v["frames"] == len(targets) and v["visible_frames"] == sum(i >= 0 for i in targets)
        assert 0 < v["largest"] <= v["visible"] <= 1
        if any("depth_order" in meta["clips"][cl.video_id] for cl in clips):
            assert 0 <= v["frontmost"] <= v["visible"]
        else:
            assert v["frontmost"] is None and v["frontmost_reason"]

    t = s["near_twins"]
    assert t["batch_size"] == 8 and 0 <= t["rate"] <= 1 and 0 <= t["same_product_rate"] <= 1
    has_family_id = any("family_id" in p for p in meta["products"].values())
    assert t["family_source"] == ("family_id" if has_family_id else "near_duplicate_of")
    if not has_family_id and any(p["near_duplicate_of"] for p in meta["products"].values()):
        assert t["families_with_several_products"] > 0
    x = s["text_only"]
    assert x["n"] == len(test.queries) and 0 <= x["R@1"] <= 100
    assert x["n_empty_asr"] == sum(not cl.asr.strip() for cl in test.queries)
    assert 0 <= x["near_twin_gallery"]["n"] <= x["n"]
    chance = np.mean([len(set(test.gt[q.video_id]) & set(test.gallery_of(q))) / len(test.gallery_of(q))
                      for q in test.queries])
    assert s["chance"]["R@1"] == pytest.approx(100 * chance, abs=1e-3)
    assert math.isfinite(s["motion"]["test"]["sold"]["concentration_mean"])


def test_missing_synth_meta_is_an_error_naming_the_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="synth_meta.json"):
        ds.compute_data_stats(tmp_path, tmp_path / "text", 8)
    assert main(["data-stats", "--data", str(tmp_path), "--text-features", str(tmp_path / "text"),
                 "--batch-size", "8", "--out", str(tmp_path / "s.json")]) == 2
    assert "synth_meta.json" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
