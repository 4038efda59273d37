"""Score tables joined by integer codes (sgmn.evaluate.scores, sgmn.evaluate.metrics).

`sgmn evaluate --scores` reads a Parquet table's ids as dictionaries and ranks by codes. Each
case here is one the code path could get wrong while a string path gets it right: ids that only
match once stripped, a dictionary order that differs from the id order (the tie-break is by id),
unused or empty dictionary entries, images outside the gallery, a query without scores. Expected
values are worked out by hand from the handwritten fixture (tests/fixtures/lpr4m_real_small,
EXPECTED.md), never by the code under test.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgmn.cli import main
from sgmn.data import lpr4m
from sgmn.evaluate.from_scores import metrics_from_scores
from sgmn.evaluate.metrics import Query, evaluate_scores, rank_queries
from sgmn.evaluate.scores import ScoreTableError, read_scores, validate_scores

FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"
L1, L2 = "5b0e4c8a-2f1d-4a6b-8c3e-9d7f1a2b3c4d", "c81d4e2f-6a3b-4f5c-b7d8-0e1f2a3b4c5d"
Q1, Q2, Q3 = f"{L1}-65000-74000", f"{L1}-130000-145000", f"{L2}-2710000-2719000"
G1a, G1b, G1c = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e", "c3d4e5f6-a7b8-4c9d-ae1f-2a3b4c5d6e7f"
G1d, G1e = "d4e5f6a7-b8c9-4dae-bf2a-3b4c5d6e7f80", "e5f6a7b8-c9da-4ebf-8a3b-4c5d6e7f8091"
G2a, G2b = "6f7a8b9c-0d1e-4f2a-9b3c-4d5e6f7a8b9c", "8091a2b3-c4d5-4e6f-a7b8-c9d0e1f2a3b4"   # G2c unscored

# Rows in an order whose first-seen (dictionary) order is NOT the id order: G1c before G1a and
# G2b before G2a, both pairs tied, so ranking by dictionary code instead of id would differ.
# Q1's ids carry whitespace in the file (they match only once stripped), and so does one image.
ROWS = [
    (f" {Q1} ", G1b, 0.9), (f" {Q1} ", G1c, 0.2), (f" {Q1} ", G1e, 0.5), (f" {Q1} ", G1a, 0.2),
    (f" {Q1} ", G1d, 0.1),
    (Q3, G2b, 0.7), (Q3, f"{G2a} ", 0.7), (Q3, "not-in-any-gallery", 5.0), (Q3, G1a, 9.0),
    ("stray-clip", G1a, 1.0),
]
STRIPPED = 6   # five " Q1 " cells and one "G2a "
# By hand (score desc, then image id asc):
# Q1: G1b .9, G1e .5, then the 0.2 tie G1a < G1c (a1b2... < c3d4...), G1d .1 -> GT G1a at rank 3.
# Q2: no score row at all -> a miss ("no scores"), rank inf, still counted in n.
# Q3: G2a = G2b = 0.7, G2a (6f7a...) < G2b (8091...) -> GT G2a at rank 1; G2c has no score
#     (ranked last, 1 missing gallery score); "not-in-any-gallery" and L1's G1a are not in its
#     gallery and change nothing.
RANKS = [3.0, math.inf, 1.0]
OVERALL = {"R@1": 33.3333, "R@5": 66.6667, "R@10": 66.6667, "R@mean": 55.5556, "n": 3}


def _table(rows, dictionary: bool) -> pa.Table:
    vids, imgs, scores = zip(*rows)
    cols = {"video_id": pa.array(vids, pa.string()), "image_id": pa.array(imgs, pa.string())}
    if dictionary:
        cols = {k: v.dictionary_encode() for k, v in cols.items()}
    return pa.table({**cols, "score": pa.array(scores, pa.float32())})


def _parquet(tmp_path, rows=ROWS, dictionary=True, name="s.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(_table(rows, dictionary), path)
    return path


def _check(metrics: dict, per_query: pd.DataFrame) -> None:
    per_query = per_query.set_index("video_id").loc[[Q1, Q2, Q3]]  # the split lists Q2 first (by id)
    assert per_query["rank"].tolist() == RANKS
    assert per_query["miss_reason"].tolist() == [None, "no scores", None]
    assert per_query["missing_gallery_scores"].tolist() == [0, 0, 1]
    assert metrics["overall"] == OVERALL
    assert metrics["n_misses"] == 1 and metrics["missing_gallery_scores"] == 1
    assert metrics["unknown_query_ids"] == ["stray-clip"] and metrics["unknown_query_rows"] == 1


# ---------------------------------------------------------------- reading
def test_dictionary_parquet_is_read_as_codes(tmp_path):
    path = _parquet(tmp_path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("video_id").type)
    clean, report = read_scores(path, categorical=True)
    assert report == {"stripped_ids": STRIPPED}
    assert isinstance(clean["video_id"].dtype, pd.CategoricalDtype)
    assert clean["score"].dtype == np.float64
    # " Q1 " and "G2a " stripped in the dictionary; every row keeps its (stripped) id
    assert clean["video_id"].astype(str).tolist() == [v.strip() for v, _, _ in ROWS]
    assert clean["image_id"].astype(str).tolist() == [i.strip() for _, i, _ in ROWS]
    assert clean["score"].tolist() == [np.float32(s).item() for _, _, s in ROWS]


@pytest.mark.parametrize("dictionary", [True, False])
def test_string_and_code_results_agree_by_hand(tmp_path, dictionary):
    path = _parquet(tmp_path, dictionary=dictionary)
    test = lpr4m.read_test(FIXTURE)
    for categorical in (True, False):
        clean, report = read_scores(path, categorical=categorical)
        assert report == {"stripped_ids": STRIPPED}
        metrics, per_query = metrics_from_scores(test, clean)
        _check(metrics, per_query)


def test_plain_string_parquet_gives_str_ids_by_default(tmp_path):
    path = _parquet(tmp_path, dictionary=False)
    assert pq.read_schema(path).field("video_id").type == pa.string()
    clean, _ = read_scores(path)
    assert pd.api.types.is_string_dtype(clean["video_id"]) and not isinstance(clean["video_id"].dtype, pd.CategoricalDtype)
    assert clean["video_id"].tolist()[:1] == [Q1]


def test_cli_on_a_dictionary_parquet(tmp_path):
    out, per_query = tmp_path / "m.json", tmp_path / "pq.csv"
    assert main(["evaluate", "--data", str(FIXTURE), "--scores", str(_parquet(tmp_path)), "--out", str(out),
                 "--per-query-out", str(per_query)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["score_table"]["stripped_ids"] == STRIPPED
    _check(metrics, pd.read_csv(per_query).replace({np.nan: None}))


def test_unused_empty_dictionary_entries_are_not_rows(tmp_path):
    # a dictionary may hold values no row uses: only the rows' ids are validated and counted
    vids = pa.DictionaryArray.from_arrays(pa.array([1, 1], pa.int32()), pa.array(["", Q3, " x "]))
    imgs = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array([G2a, G2b, "   "]))
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"video_id": vids, "image_id": imgs, "score": pa.array([0.5, 0.25])}), path)
    clean, report = read_scores(path, categorical=True)
    assert report == {"stripped_ids": 0}
    assert clean["video_id"].astype(str).tolist() == [Q3, Q3]


def test_unused_categories_are_not_unknown_queries():
    cats = pd.Categorical(["v", "v"], categories=["ghost", "v"])
    scores = pd.DataFrame({"video_id": cats, "image_id": pd.Categorical(["a", "b"]), "score": [0.1, 0.2]})
    metrics, table = evaluate_scores(scores, [Query("v", ("a", "b"), ("a",), None)])
    assert metrics["unknown_query_ids"] == [] and metrics["unknown_query_rows"] == 0
    assert table["rank"].tolist() == [2.0]


# ---------------------------------------------------------------- validation on the dictionary
def test_ids_equal_once_stripped_are_a_duplicate_naming_both_rows(tmp_path):
    path = _parquet(tmp_path, [(Q3, G2a, 0.1), (f" {Q3}", G2a, 0.2)])
    with pytest.raises(ScoreTableError, match=rf"s.parquet: row 2: duplicate score for \(video_id, image_id\) = "
                                              rf"\('{Q3}', '{G2a}'\), first at .*s.parquet: row 1"):
        read_scores(path, categorical=True)


@pytest.mark.parametrize("vid, col", [(None, "video_id"), ("  ", "video_id")])
def test_null_or_blank_dictionary_id_names_the_row(tmp_path, vid, col):
    path = _parquet(tmp_path, [(Q3, G2a, 0.1), (Q3, G2b, 0.2), (vid, G2a, 0.3)])
    with pytest.raises(ScoreTableError, match=rf"s.parquet: row 3: empty {col}"):
        read_scores(path, categorical=True)


def test_categorical_frame_validates_like_strings():
    df = pd.DataFrame({"video_id": pd.Categorical(["a", " a", "b"]), "image_id": pd.Categorical(["x", "y", "x"]),
                       "score": [1.0, 2.0, 3.0]})
    clean, report = validate_scores(df, categorical=True)
    assert report == {"stripped_ids": 1}
    assert clean["video_id"].astype(str).tolist() == ["a", "a", "b"]
    assert list(clean["video_id"].cat.categories) == ["a", "b"]   # " a" merged into "a"
    with pytest.raises(ScoreTableError, match=r"row 2: score inf is not finite"):
        validate_scores(df.assign(score=[1.0, np.inf, 0.0]), categorical=True)


def test_rows_in_any_order_are_checked_for_duplicates():
    # image-major order (keys not increasing): the sorted check must still find the repeat
    df = pd.DataFrame({"video_id": ["v2", "v1", "v2", "v1", "v2"], "image_id": ["a", "a", "b", "b", "a"],
                       "score": [0.0] * 5})
    with pytest.raises(ScoreTableError, match=r"row 5: duplicate .*\('v2', 'a'\), first at scores: row 1"):
        validate_scores(df, categorical=True)


# ---------------------------------------------------------------- ranking by codes
def test_ties_unscored_gallery_and_foreign_images_by_hand():
    gallery = ("d", "b", "c", "a")
    scores = pd.DataFrame({
        "video_id": pd.Categorical(["v1", "v1", "v1", "v1", "v2", "v3"]),
        # dictionary order c, b, z, e, a: neither the gallery order nor the id order
        "image_id": pd.Categorical(["c", "b", "z", "e", "z", "a"], categories=["c", "b", "z", "e", "a"]),
        "score": [0.5, 0.5, 9.0, 9.0, 1.0, 0.5],
    })
    queries = [
        # v1: b and c tied at 0.5 (b first by id), a and d unscored (-inf, a before d by id);
        #     z is in no gallery, e only in v3's: both ignored.
        Query("v1", gallery, ("c",), None), Query("v1b", gallery, ("a",), None),
        # v2: its only row is an image of no gallery -> a miss
        Query("v2", gallery, ("a",), None),
        # v3: "a" at 0.5, the rest unscored; its GT "e" is unscored and last by id among -inf
        Query("v3", ("e", "a", "b"), ("e",), None),
        # v4: no score row at all
        Query("v4", gallery, ("a",), None),
    ]
    table = rank_queries(scores, queries)
    # v1: b (.5), c (.5) -> 2.   v1b: no rows of its own -> "no scores".
    # v3: a (.5), then b, e tied at -inf with b < e -> e at 3.
    assert table["rank"].tolist() == [2.0, math.inf, math.inf, 3.0, math.inf]
    assert table["miss_reason"].tolist() == [None, "no scores", "no scores for any gallery image", None, "no scores"]
    assert table["missing_gallery_scores"].tolist() == [2, 0, 0, 2, 0]
    assert table.attrs["unknown_query_rows"] == 0
