"""Hand-computed cases for the retrieval metrics (spec: lpr4m_format.md, Metrics)."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from sgmn.evaluate.metrics import KS, Query, chance_recall, compute_metrics, rank_queries

SUB = {"scale": "small", "duration": "long", "count": "few"}


def table(rows):
    """rows: iterable of (video_id, image_id, score)."""
    return pd.DataFrame(list(rows), columns=["video_id", "image_id", "score"])


def scored(video_id, mapping):
    return [(video_id, img, s) for img, s in mapping.items()]


def q(vid, gallery, gt, subsets=None, category=None):
    return Query(vid, tuple(gallery), tuple(gt), subsets, category)


GAL = ("a", "b", "c", "d", "e")


def rank_of(scores, query, **kw):
    return rank_queries(scores, [query], **kw).loc[0, "rank"]


# ---------------------------------------------------------------- ranks


def test_best_of_several_ground_truths_counts():
    s = table(scored("v", {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}))
    assert rank_of(s, q("v", GAL, ["d", "b"])) == 2.0
    assert rank_of(s, q("v", GAL, ["e"])) == 5.0
    assert rank_of(s, q("v", GAL, ["e", "a", "c"])) == 1.0


def test_ties_score_desc_then_image_id_asc():
    # order: a (0.9), then b, c, d tied at 0.5 by id, then e (0.1)
    s = table(scored("v", {"a": 0.9, "d": 0.5, "c": 0.5, "b": 0.5, "e": 0.1}))
    assert rank_of(s, q("v", GAL, ["b"])) == 2.0
    assert rank_of(s, q("v", GAL, ["c"])) == 3.0
    assert rank_of(s, q("v", GAL, ["d"])) == 4.0
    assert rank_of(s, q("v", GAL, ["d", "c"])) == 3.0  # best GT within the tie
    # everything tied: pure id order
    s = table(scored("v", dict.fromkeys(GAL, 0.0)))
    assert rank_of(s, q("v", GAL, ["e"])) == 5.0
    out = compute_metrics(s, [q("v", GAL, ["e"])])
    assert out["tie_break"] == "score desc, then image_id asc"


def test_tie_order_does_not_depend_on_row_order():
    rows = scored("v", {"a": 0.9, "d": 0.5, "c": 0.5, "b": 0.5, "e": 0.1})
    for perm in itertools.islice(itertools.permutations(rows), 0, None, 7):  # 18 of the 120 orders
        assert rank_of(table(perm), q("v", GAL, ["c"])) == 3.0


def test_per_live_gallery_ignores_other_lives():
    # one global score table; v1 belongs to live 1 (a, b, c), v2 to live 2 (x, y)
    s = table(
        scored("v1", {"a": 0.5, "b": 0.7, "c": 0.1, "x": 0.99, "y": 0.98})
        + scored("v2", {"a": 0.99, "b": 0.99, "c": 0.99, "x": 0.2, "y": 0.3})
    )
    qs = [q("v1", "abc", ["a"]), q("v2", "xy", ["x"])]
    t = rank_queries(s, qs)
    assert t["rank"].tolist() == [2.0, 2.0]
    assert t["missing_gallery_scores"].tolist() == [0, 0]
    assert t["gallery_size"].tolist() == [3, 2]


def test_missing_gallery_score_ranked_last_and_counted():
    # c has no score -> -inf: a (-5), b (-6), c
    s = table(scored("v", {"a": -5.0, "b": -6.0}))
    assert rank_of(s, q("v", "abc", ["b"])) == 2.0
    assert rank_of(s, q("v", "abc", ["c"])) == 3.0
    # several unscored images are tied at -inf and ordered by id: a, then b, c, d
    s = table(scored("v", {"a": -100.0}))
    assert rank_of(s, q("v", "abcd", ["c"])) == 3.0
    out = compute_metrics(s, [q("v", "abcd", ["c"])])
    assert out["missing_gallery_scores"] == 3
    assert out["n_misses"] == 0
    assert out["overall"]["R@1"] == 0.0 and out["overall"]["R@5"] == 100.0


def test_duplicate_gallery_entries_counted_once():
    s = table(scored("v", {"a": 0.1, "b": 0.9}))
    out = compute_metrics(s, [q("v", ["a", "b", "a"], ["a"])])
    assert out["duplicate_gallery_entries"] == 1
    assert out["mean_gallery_size"] == 2.0
    assert out["overall"]["R@1"] == 0.0 and out["overall"]["R@5"] == 100.0


# ---------------------------------------------------------------- misses and errors


def test_unreadable_query_is_a_listed_miss():
    s = table(scored("v1", {"a": 0.9, "b": 0.1}) + scored("v2", {"a": 0.9, "b": 0.1}))
    qs = [q("v1", "ab", ["a"]), q("v2", "ab", ["a"])]
    out = compute_metrics(s, qs, unreadable={"v2": "decode error"})
    assert out["overall"] == {"R@1": 50.0, "R@5": 50.0, "R@10": 50.0, "R@mean": 50.0, "n": 2}
    assert out["misses"] == [{"video_id": "v2", "reason": "unreadable: decode error"}]
    assert out["n_misses"] == 1
    t = rank_queries(s, qs, unreadable={"v2": "decode error"})
    assert t.loc[1, "rank"] == math.inf and not t.loc[1, "hit@10"]
    assert t.loc[0, "miss_reason"] is None


def test_gt_not_in_gallery_is_a_recorded_miss():
    s = table(scored("v", {"a": 0.9, "b": 0.1}))
    out = compute_metrics(s, [q("v", "ab", ["z", "y"])])
    assert out["misses"] == [{"video_id": "v", "reason": "ground truth not in gallery: z, y"}]
    assert out["overall"]["R@10"] == 0.0 and out["overall"]["n"] == 1
    assert out["chance"]["R@10"] == 0.0


def test_partial_gt_outside_gallery_is_not_a_miss():
    s = table(scored("v", {"a": 0.9, "b": 0.1}))
    out = compute_metrics(s, [q("v", "ab", ["z", "b"])])
    assert out["n_misses"] == 0 and out["gt_outside_gallery"] == 1
    assert out["overall"]["R@1"] == 0.0 and out["overall"]["R@5"] == 100.0


def test_empty_gallery_and_no_scores_are_misses():
    s = table(scored("v1", {"a": 0.9}) + scored("v3", {"x": 0.5}))
    qs = [q("v1", "a", ["a"]), q("v2", [], ["a"]), q("v3", "ab", ["a"]), q("v4", "ab", ["a"])]
    out = compute_metrics(s, qs)
    assert out["misses"] == [
        {"video_id": "v2", "reason": "empty gallery"},
        {"video_id": "v3", "reason": "no scores for any gallery image"},
        {"video_id": "v4", "reason": "no scores"},
    ]
    assert out["overall"]["R@1"] == 25.0 and out["overall"]["n"] == 4
    # missing scores are counted for ranked queries only
    assert out["missing_gallery_scores"] == 0


def test_duplicate_rows_raise_naming_the_pair():
    s = table([("v", "a", 0.1), ("v", "b", 0.2), ("v", "a", 0.3)])
    with pytest.raises(ValueError, match=r"'v'.*'a'"):
        rank_queries(s, [q("v", "ab", ["a"])])


def test_unknown_query_rows_ignored_and_counted():
    s = table(scored("v", {"a": 0.9, "b": 0.1}) + scored("ghost", {"a": 0.1, "b": 0.9, "c": 0.5}))
    out = compute_metrics(s, [q("v", "ab", ["a"])])
    assert out["unknown_query_rows"] == 3
    assert out["overall"]["R@1"] == 100.0


def test_nan_score_and_bad_subset_label_raise():
    with pytest.raises(ValueError, match="nan .not finite"):
        rank_queries(table([("v", "a", float("nan"))]), [q("v", "a", ["a"])])
    with pytest.raises(ValueError, match="subset"):
        rank_queries(table([("v", "a", 1.0)]), [q("v", "a", ["a"], {"scale": "tiny", "duration": "long", "count": "few"})])


# ---------------------------------------------------------------- aggregation


def _four_queries():
    """Ranks 1, 3, 7 and a miss (unreadable): R@1 25, R@5 50, R@10 75, R@mean 50."""
    gal = [f"i{j:02d}" for j in range(12)]
    ordered = {img: 1.0 - 0.01 * j for j, img in enumerate(gal)}  # i00 best ... i11 worst
    s = table(sum((scored(v, ordered) for v in ("q1", "q2", "q3", "q4")), []))
    qs = [
        q("q1", gal, ["i00"], {"scale": "small", "duration": "short", "count": "few"}, "shoes"),
        q("q2", gal, ["i02", "i09"], {"scale": "small", "duration": "long", "count": "few"}, "shoes"),
        q("q3", gal, ["i06"], {"scale": "large", "duration": "long", "count": "abundant"}, "bags"),
        q("q4", gal, ["i00"], None, None),
    ]
    return s, qs


def test_overall_recall_and_mean():
    s, qs = _four_queries()
    t = rank_queries(s, qs, unreadable={"q4": "missing frames"})
    assert t["rank"].tolist() == [1.0, 3.0, 7.0, math.inf]
    assert t[[f"hit@{k}" for k in KS]].values.tolist() == [
        [True, True, True], [False, True, True], [False, False, True], [False, False, False]
    ]
    out = compute_metrics(s, qs, unreadable={"q4": "missing frames"})
    assert out["overall"] == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "R@mean": 50.0, "n": 4}


def test_r_mean_rounding():
    # 3 queries, ranks 1, 2, 6 -> R@1 1/3, R@5 2/3, R@10 1 -> R@mean 2/3
    gal = [f"i{j:02d}" for j in range(8)]
    ordered = {img: -j for j, img in enumerate(gal)}
    s = table(sum((scored(v, ordered) for v in "xyz"), []))
    qs = [q("x", gal, ["i00"]), q("y", gal, ["i01"]), q("z", gal, ["i05"])]
    o = compute_metrics(s, qs)["overall"]
    assert o == {"R@1": 33.3333, "R@5": 66.6667, "R@10": 100.0, "R@mean": 66.6667, "n": 3}


def test_subsets_and_categories():
    s, qs = _four_queries()
    out = compute_metrics(s, qs, unreadable={"q4": "missing frames"})
    sub = out["subsets"]
    assert set(sub) == {"scale", "duration", "count"}
    assert set(sub["scale"]) == {"small", "medium", "large"}
    assert set(sub["duration"]) == {"short", "medium", "long"}
    assert set(sub["count"]) == {"few", "medium", "abundant"}
    assert sub["scale"]["small"] == {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@mean": 83.3333, "n": 2}
    assert sub["scale"]["large"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 100.0, "R@mean": 33.3333, "n": 1}
    assert sub["duration"]["long"]["n"] == 2 and sub["duration"]["long"]["R@5"] == 50.0
    assert sub["count"]["abundant"]["R@10"] == 100.0
    none_block = {"R@1": None, "R@5": None, "R@10": None, "R@mean": None, "n": 0}
    assert sub["scale"]["medium"] == none_block
    assert sub["duration"]["medium"] == none_block
    assert sub["count"]["medium"] == none_block
    assert out["subsets_unknown"] == 1  # q4 has no boxes
    assert out["categories"] == {
        "bags": {"R@1": 0.0, "R@5": 0.0, "R@10": 100.0, "R@mean": 33.3333, "n": 1},
        "shoes": {"R@1": 50.0, "R@5": 100.0, "R@10": 100.0, "R@mean": 83.3333, "n": 2},
    }
    assert out["categories_unknown"] == 1
    t = rank_queries(s, qs)
    assert t["scale"].tolist() == ["small", "small", "large", None]
    assert t["category"].tolist() == ["shoes", "shoes", "bags", None]


def test_every_subset_key_present_when_no_query_has_boxes():
    s = table(scored("v", {"a": 1.0}))
    out = compute_metrics(s, [q("v", "a", ["a"])])
    for name, labels in {"scale": ("small", "medium", "large"), "duration": ("short", "medium", "long"),
                         "count": ("few", "medium", "abundant")}.items():
        for lab in labels:
            assert out["subsets"][name][lab] == {"R@1": None, "R@5": None, "R@10": None, "R@mean": None, "n": 0}
    assert out["subsets_unknown"] == 1 and out["categories"] == {}


def test_output_is_json_ready():
    s, qs = _four_queries()
    out = compute_metrics(s, qs, unreadable={"q4": "x"})
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert set(out) >= {"overall", "subsets", "categories", "chance", "misses", "n_misses",
                        "missing_gallery_scores", "unknown_query_rows", "tie_break", "mean_gallery_size"}


def test_no_queries():
    out = compute_metrics(table([("v", "a", 1.0)]), [])
    assert out["overall"] == {"R@1": None, "R@5": None, "R@10": None, "R@mean": None, "n": 0}
    assert out["unknown_query_rows"] == 1


# ---------------------------------------------------------------- chance


def brute_chance(g, m, k):
    hits = total = 0
    for perm in itertools.permutations(range(g)):
        total += 1
        hits += any(i < m for i in perm[:k])  # images 0..m-1 are the ground truths
    return hits / total


@pytest.mark.parametrize("g, m, k", [(g, m, k) for g in range(1, 7) for m in range(0, g + 1) for k in (1, 2, 3, 5, 10)])
def test_chance_recall_matches_brute_force(g, m, k):
    assert chance_recall(g, m, k) == pytest.approx(brute_chance(g, m, k), abs=1e-12)


def test_chance_recall_values_and_errors():
    assert chance_recall(600, 1, 10) == pytest.approx(10 / 600)
    assert chance_recall(10, 2, 5) == pytest.approx(1 - 56 / 252)
    with pytest.raises(ValueError):
        chance_recall(3, 4, 1)
    with pytest.raises(ValueError):
        chance_recall(3, 1, 0)


def test_chance_block_in_metrics():
    # gallery 4 / 1 GT: 25, 100, 100; gallery 10 / 2 GT: 20, 77.7778, 100
    g4, g10 = "abcd", [f"i{j}" for j in range(10)]
    s = table(scored("u", dict.fromkeys(g4, 0.0)) + scored("w", dict.fromkeys(g10, 0.0)))
    out = compute_metrics(s, [q("u", g4, ["a"]), q("w", g10, ["i1", "i2"])])
    c = out["chance"]
    assert c["R@1"] == 22.5
    assert c["R@5"] == round(100 * (1 + 1 - 56 / 252) / 2, 4)
    assert c["R@10"] == 100.0
    assert c["R@mean"] == round(100 * (0.225 + (2 - 56 / 252) / 2 + 1) / 3, 4)
    assert out["mean_gallery_size"] == 7.0


# ---------------------------------------------------------------- cross-check against a naive loop


def naive_rank(sc, query):
    """Reference: sort the query's own gallery by (score desc, image_id asc) in plain Python.

    ``sc``: {(video_id, image_id): score}."""
    gal = sorted(set(query.gallery), key=lambda i: (-sc.get((query.video_id, i), -math.inf), i))
    pos = [gal.index(g) + 1 for g in query.gt if g in gal]
    return float(min(pos)) if pos else math.inf


def test_matches_naive_reference_on_random_tied_scores():
    rng = np.random.default_rng(0)
    images = [f"img{j:03d}" for j in range(40)]
    lives = [tuple(rng.choice(images, size=int(rng.integers(3, 15)), replace=False)) for _ in range(5)]
    rows, qs = [], []
    for n in range(200):
        gal = lives[n % 5]
        gt = tuple(rng.choice(gal, size=int(rng.integers(1, 3)), replace=False))
        qs.append(Query(f"v{n}", gal, gt, None))
        for img in images:  # global table; some gallery scores dropped; coarse scores -> many ties
            if rng.random() < 0.9:
                rows.append((f"v{n}", img, float(rng.integers(0, 4))))
    s = table(rows)
    t = rank_queries(s, qs)
    sc = {(v, i): x for v, i, x in rows}
    expected = [naive_rank(sc, qu) for qu in qs]
    assert t["rank"].tolist() == expected
    for k in KS:
        assert t[f"hit@{k}"].tolist() == [r <= k for r in expected]
