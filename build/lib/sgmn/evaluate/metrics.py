"""Retrieval metrics for livestreaming product retrieval (LPR4M / MovingFashion protocol).

Protocol (``shared/spec/lpr4m_format.md``, "Metrics"; public RICE / SGMN evaluation code):

- Each query clip is ranked against ITS OWN gallery (for LPR4M the shop images of its live, for
  MovingFashion the one global test gallery). Scores for images outside that gallery are ignored,
  so one global score table can be evaluated per live.
- A query's rank is the position of its BEST-ranked ground-truth image in that gallery;
  it is a hit at k when ``rank <= k``. R@k = percentage of queries that hit at k;
  R@mean = mean of R@1, R@5, R@10.
- Ties are broken by score descending, then image_id ascending: a stable order that does not depend
  on the content (image ids are random UUIDs, so it favours neither the ground truth nor the
  distractors). The output says so under ``"tie_break"``.
- A gallery image with no score for the query (e.g. an unreadable shop image) is ranked last
  (score ``-inf``) and counted in ``missing_gallery_scores``.
- Queries that cannot be ranked are misses, never dropped: they stay in every denominator
  (rank ``inf``) and are listed with a reason under ``"misses"``.

Everything is vectorised over a flat (query, gallery image) table: no per-query Python sorting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sgmn.data.subsets import THRESHOLDS
from sgmn.evaluate.scores import ScoreTableError

KS = (1, 5, 10)
TIE_BREAK = "score desc, then image_id asc"

# miss reasons (the GT one is completed with the ids)
REASON_EMPTY_GALLERY = "empty gallery"
REASON_NO_GT = "no ground truth"
REASON_GT_NOT_IN_GALLERY = "ground truth not in gallery"
REASON_NO_SCORES = "no scores"
REASON_NO_GALLERY_SCORES = "no scores for any gallery image"


@dataclass(frozen=True)
class Query:
    """One query clip and what it is ranked against."""

    video_id: str
    gallery: tuple[str, ...]  # image ids this query is ranked against
    gt: tuple[str, ...]  # ground-truth image ids (one or several)
    subsets: dict[str, str] | None  # e.g. {"scale": "small", ...}; None when no boxes are known
    category: str | None = None


def chance_recall(gallery_size: int, n_gt: int, k: int) -> float:
    """Exact expected R@k (as a fraction) of a uniformly random ranking.

    With ``m`` ground truths among ``g`` gallery images the top ``k`` misses every ground truth
    with probability ``C(g-m, k) / C(g, k)``, hence ``1 - C(g-m, k) / C(g, k)``
    (``k`` is capped at ``g``; ``math.comb`` is 0 when ``k > g - m``, giving 1; ``m = 0`` gives 0).
    """
    g, m, k = int(gallery_size), int(n_gt), int(k)
    if g < 0 or m < 0 or m > g:
        raise ValueError(f"need 0 <= n_gt <= gallery_size, got gallery_size={g}, n_gt={m}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if m == 0:
        return 0.0
    k = min(k, g)  # a top-k longer than the gallery is the whole gallery
    # big-int true division is correctly rounded, so this is exact up to the final float
    return 1.0 - math.comb(g - m, k) / math.comb(g, k)


# --------------------------------------------------------------------------------------------
# ranking
# --------------------------------------------------------------------------------------------


def _check_queries(queries: list[Query]) -> None:
    seen: set[str] = set()
    for q in queries:
        if q.video_id in seen:
            raise ValueError(f"duplicate query video_id {q.video_id!r}")
        seen.add(q.video_id)
        if q.subsets is not None:
            for name, (_, labels) in THRESHOLDS.items():
                if q.subsets.get(name) not in labels:
                    raise ValueError(
                        f"query {q.video_id!r}: subset {name!r} label {q.subsets.get(name)!r} "
                        f"not in {labels} (use subsets=None when boxes are unknown)"
                    )


def _gallery_table(
    queries: list[Query],
) -> tuple[np.ndarray, np.ndarray, dict[str, int], int, np.ndarray]:
    """Flatten the galleries into (query index, image code) rows.

    Image codes index ``vocab`` = every gallery image id, sorted, so comparing codes is comparing
    image ids (needed by the tie-break). Duplicate ids inside one gallery are kept once.
    Galleries are shared by all queries of a live, so each distinct gallery is encoded once.
    Returns (q_of_row, code_of_row, {image_id: code}, n_duplicate_gallery_entries, gallery sizes).
    """
    distinct: dict[tuple[str, ...], tuple[str, ...]] = {}
    n_dup = 0
    for q in queries:
        if q.gallery not in distinct:
            distinct[q.gallery] = tuple(dict.fromkeys(q.gallery))  # order-preserving dedup
        n_dup += len(q.gallery) - len(distinct[q.gallery])
    vocab = sorted(set().union(*distinct.values()))  # Python str order = the tie-break order
    code_of = {img: i for i, img in enumerate(vocab)}
    encoded = {
        g: np.fromiter((code_of[i] for i in d), dtype=np.int64, count=len(d)) for g, d in distinct.items()
    }

    per_query = [encoded[q.gallery] for q in queries]
    sizes = np.fromiter((len(c) for c in per_query), dtype=np.int64, count=len(queries))
    q_of_row = np.repeat(np.arange(len(queries), dtype=np.int64), sizes)
    code_of_row = np.concatenate(per_query) if per_query else np.zeros(0, dtype=np.int64)
    return q_of_row, code_of_row, code_of, n_dup, sizes


def _score_rows(scores: pd.DataFrame, qindex: pd.Index, vocab: list[str]) -> dict[str, Any]:
    """Validate the long score table and encode it as (query index, image code, score) arrays.

    Rows of unknown video_ids are dropped and counted; rows of images outside every gallery get
    image code -1 (they still show that the query has scores, but can never be ranked).
    """
    missing_cols = {"video_id", "image_id", "score"} - set(scores.columns)
    if missing_cols:
        raise ValueError(f"scores lacks columns {sorted(missing_cols)}")
    # factorize once; the mappings below then work on the (small) sets of distinct ids
    vcodes, vuniq = pd.factorize(scores["video_id"], sort=False)
    icodes, iuniq = pd.factorize(scores["image_id"], sort=False)
    pair = vcodes.astype(np.int64) * max(len(iuniq), 1) + icodes
    dup = pd.Series(pair).duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise ScoreTableError(
            f"duplicate score rows for (video_id, image_id) = "
            f"({vuniq[vcodes[r]]!r}, {iuniq[icodes[r]]!r})"
        )
    if (vcodes < 0).any() or (icodes < 0).any():  # factorize codes a missing id -1: never index with it
        r = int(np.flatnonzero((vcodes < 0) | (icodes < 0))[0])
        raise ScoreTableError(f"scores row {r + 1}: missing video_id or image_id")
    score = scores["score"].to_numpy(dtype=float)
    if not np.isfinite(score).all():
        r = int(np.flatnonzero(~np.isfinite(score))[0])
        raise ScoreTableError(f"score {score[r]} (not finite) for (video_id, image_id) = "
                              f"({vuniq[vcodes[r]]!r}, {iuniq[icodes[r]]!r})")

    q_of_uniq = qindex.get_indexer(pd.Index(vuniq))
    img_of_uniq = pd.Index(vocab, dtype=object).get_indexer(pd.Index(iuniq)) if vocab else np.full(len(iuniq), -1)
    q = q_of_uniq[vcodes]
    known = q >= 0
    if len(q) and len(qindex) and not known.any():
        raise ScoreTableError(f"no row of the score table matches a query of the test set "
                              f"(first video_ids: {[str(v) for v in vuniq[:5]]})")
    unknown_ids = sorted(str(v) for v in vuniq[q_of_uniq < 0])
    return {
        "q": q[known].astype(np.int64),
        "img": img_of_uniq[icodes][known].astype(np.int64),
        "score": score[known],
        "unknown_query_rows": int((~known).sum()),
        "unknown_query_ids": unknown_ids,
    }


def _lookup_scores(
    q_row: np.ndarray, code_row: np.ndarray, s: dict[str, Any], n_img: int
) -> tuple[np.ndarray, np.ndarray]:
    """Score of every gallery row (``-inf`` when absent) and a mask of rows that had a score."""
    in_vocab = s["img"] >= 0
    skey = s["q"][in_vocab] * n_img + s["img"][in_vocab]
    sval = s["score"][in_vocab]
    order = np.argsort(skey, kind="stable")
    skey, sval = skey[order], sval[order]
    gkey = q_row * n_img + code_row
    pos = np.searchsorted(skey, gkey)
    pos_c = np.minimum(pos, max(len(skey) - 1, 0))
    found = (pos < len(skey)) & (skey[pos_c] == gkey) if len(skey) else np.zeros(len(gkey), bool)
    val = np.where(found, sval[pos_c] if len(skey) else -np.inf, -np.inf)
    return val, found


def _best_gt_rank(q_row, code_row, score_row, is_gt, n_q) -> np.ndarray:
    """1-based rank of each query's best ground truth under (score desc, image_id asc); inf if none.

    The best GT is the first GT row in that order; its rank is 1 + the number of gallery rows that
    come strictly before it: higher score, or equal score and smaller image id (= smaller code).
    """
    gq, gc, gs = q_row[is_gt], code_row[is_gt], score_row[is_gt]
    order = np.lexsort((gc, -gs, gq))  # last key is primary: query, then score desc, then id asc
    gq, gc, gs = gq[order], gc[order], gs[order]
    first = np.ones(len(gq), bool)
    first[1:] = gq[1:] != gq[:-1]
    best_score = np.full(n_q, np.nan)
    best_code = np.full(n_q, -1, dtype=np.int64)
    best_score[gq[first]] = gs[first]
    best_code[gq[first]] = gc[first]

    bs, bc = best_score[q_row], best_code[q_row]
    before = (score_row > bs) | ((score_row == bs) & (code_row < bc))  # NaN (no GT) -> False
    rank = np.bincount(q_row, weights=before, minlength=n_q) + 1.0
    rank[best_code < 0] = np.inf
    return rank


def _rank(
    scores: pd.DataFrame, queries: list[Query], unreadable: dict[str, str] | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-query table plus the table-level counters used by :func:`compute_metrics`."""
    queries = list(queries)
    _check_queries(queries)
    unreadable = dict(unreadable or {})
    n_q = len(queries)
    qindex = pd.Index([q.video_id for q in queries])

    q_row, code_row, code_of, n_dup, gallery_size = _gallery_table(queries)
    n_img = max(len(code_of), 1)
    s = _score_rows(scores, qindex, list(code_of))  # dict order = code order

    # ground-truth flags on the gallery rows (GT ids outside the gallery cannot be ranked)
    gt_q, gt_code = [], []
    n_gt_outside = np.zeros(n_q, dtype=np.int64)
    gallery_sets: dict[tuple[str, ...], frozenset[str]] = {}
    for i, q in enumerate(queries):
        gset = gallery_sets.setdefault(q.gallery, frozenset(q.gallery))
        for g in dict.fromkeys(q.gt):
            if g in gset:
                gt_q.append(i)
                gt_code.append(code_of[g])
            else:
                n_gt_outside[i] += 1
    gt_key = np.asarray(gt_q, dtype=np.int64) * n_img + np.asarray(gt_code, dtype=np.int64)
    # hash lookup of 12M gallery keys in the few GT keys (faster than np.isin's sort)
    is_gt = pd.Index(gt_key).get_indexer(q_row * n_img + code_row) >= 0
    n_gt_in = np.bincount(q_row[is_gt], minlength=n_q)

    score_row, found = _lookup_scores(q_row, code_row, s, n_img)
    rank = _best_gt_rank(q_row, code_row, score_row, is_gt, n_q)

    n_score_rows = np.bincount(s["q"], minlength=n_q)
    n_scored = np.bincount(q_row[found], minlength=n_q)
    reason = _miss_reasons(queries, unreadable, gallery_size, n_gt_in, n_score_rows, n_scored)
    is_miss = np.array([r is not None for r in reason], dtype=bool)
    rank[is_miss] = np.inf
    n_missing = np.where(is_miss, 0, gallery_size - n_scored)  # only for ranked queries

    table = pd.DataFrame({"video_id": qindex.to_numpy(dtype=object), "rank": rank})
    for k in KS:
        table[f"hit@{k}"] = rank <= k
    table["miss_reason"] = pd.Series(reason, dtype=object)
    for name in THRESHOLDS:
        table[name] = pd.Series([q.subsets[name] if q.subsets else None for q in queries], dtype=object)
    table["category"] = pd.Series([q.category for q in queries], dtype=object)
    table["gallery_size"] = gallery_size
    table["n_gt_in_gallery"] = n_gt_in
    table["missing_gallery_scores"] = n_missing

    info = {
        "unknown_query_rows": s["unknown_query_rows"],
        "unknown_query_ids": s["unknown_query_ids"],
        "missing_gallery_scores": int(n_missing.sum()),
        "duplicate_gallery_entries": int(n_dup),
        "gt_outside_gallery": int(n_gt_outside[~is_miss].sum()),
        "tie_break": TIE_BREAK,
    }
    table.attrs.update(info)
    return table, info


def _miss_reasons(queries, unreadable, gallery_size, n_gt_in, n_score_rows, n_scored) -> list[str | None]:
    """Why each query cannot be ranked (None when it can). First matching reason wins."""
    reasons: list[str | None] = []
    for i, q in enumerate(queries):
        if q.video_id in unreadable:
            r = f"unreadable: {unreadable[q.video_id]}"
        elif gallery_size[i] == 0:
            r = REASON_EMPTY_GALLERY
        elif len(q.gt) == 0:
            r = REASON_NO_GT
        elif n_gt_in[i] == 0:
            r = f"{REASON_GT_NOT_IN_GALLERY}: {', '.join(dict.fromkeys(q.gt))}"
        elif n_score_rows[i] == 0:
            r = REASON_NO_SCORES
        elif n_scored[i] == 0:
            # scores exist but only for images of other galleries: ranking would be by id alone
            r = REASON_NO_GALLERY_SCORES
        else:
            r = None
        reasons.append(r)
    return reasons


def rank_queries(
    scores: pd.DataFrame, queries: list[Query], unreadable: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per query (in ``queries`` order) with its rank under the LPR protocol.

    ``scores``: long table ``video_id, image_id, score`` (higher = more similar).
    Columns: ``video_id``, ``rank`` (float, 1-based position of the best-ranked ground truth in the
    query's own gallery; ``inf`` for a miss), ``hit@1``, ``hit@5``, ``hit@10`` (bool),
    ``miss_reason`` (str or None), the subset labels ``scale``, ``duration``, ``count`` and
    ``category`` (None when unknown), plus ``gallery_size``, ``n_gt_in_gallery`` and
    ``missing_gallery_scores``. Ties: score desc, then image_id asc. Table-level counters
    (``unknown_query_rows``, ...) are in ``table.attrs``.

    Misses (kept, rank inf): query in ``unreadable`` (video_id -> reason), empty gallery, no ground
    truth, no ground truth in the gallery, no score rows, or no score for any of its gallery images.
    Raises ``ValueError`` on duplicate (video_id, image_id) rows, NaN scores, duplicate query ids
    or subset labels outside :data:`sgmn.data.subsets.THRESHOLDS`.
    """
    return _rank(scores, queries, unreadable)[0]


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * float(x), 4)


def _recall_block(table: pd.DataFrame) -> dict[str, Any]:
    """{"R@1","R@5","R@10","R@mean","n"} in percent; R values null when n = 0."""
    n = len(table)
    rec = {k: (float(table[f"hit@{k}"].mean()) if n else None) for k in KS}
    out: dict[str, Any] = {f"R@{k}": _pct(rec[k]) for k in KS}
    out["R@mean"] = _pct(float(np.mean([rec[k] for k in KS]))) if n else None
    out["n"] = int(n)
    return out


def _chance_block(table: pd.DataFrame) -> dict[str, Any]:
    """Expected R@k of a random ranking, averaged over queries (each with its own g and m)."""
    if len(table) == 0:
        return {**{f"R@{k}": None for k in KS}, "R@mean": None}
    pairs = table.groupby(["gallery_size", "n_gt_in_gallery"]).size()  # few distinct (g, m)
    rec = {}
    for k in KS:
        vals = np.array([chance_recall(g, m, k) for g, m in pairs.index])
        rec[k] = float((vals * pairs.to_numpy()).sum() / len(table))
    out = {f"R@{k}": _pct(rec[k]) for k in KS}
    out["R@mean"] = _pct(float(np.mean(list(rec.values()))))
    return out


def compute_metrics(
    scores: pd.DataFrame, queries: list[Query], unreadable: dict[str, str] | None = None
) -> dict:
    """JSON-ready retrieval metrics (percent, 4 decimals) under the LPR protocol.

    Keys: ``overall`` {R@1, R@5, R@10, R@mean, n}; ``subsets`` {scale|duration|count: {label: same
    keys}} with every label present (R values null when n = 0), queries with ``subsets=None`` left
    out and counted in ``subsets_unknown``; ``categories`` {name: same keys} (queries without a
    category counted in ``categories_unknown``); ``chance`` (expected R@k of a random ranking with
    each query's gallery size and number of ground truths in the gallery); ``misses``
    [{video_id, reason}], ``n_misses``, ``missing_gallery_scores``, ``unknown_query_rows``,
    ``duplicate_gallery_entries``, ``gt_outside_gallery`` (GT ids outside the gallery of a query
    that still has one inside), ``tie_break`` and ``mean_gallery_size``.
    See :func:`rank_queries` for ranks, ties and misses.
    """
    table, info = _rank(scores, queries, unreadable)

    subsets: dict[str, dict[str, Any]] = {}
    known = table[table["scale"].notna()]  # subsets are all-or-nothing per query (_check_queries)
    for name, (_, labels) in THRESHOLDS.items():
        subsets[name] = {lab: _recall_block(known[known[name] == lab]) for lab in labels}

    with_cat = table[table["category"].notna()]
    categories = {str(cat): _recall_block(group) for cat, group in with_cat.groupby("category", sort=True)}
    miss_rows = table[table["miss_reason"].notna()]
    return {
        "overall": _recall_block(table),
        "subsets": subsets,
        "subsets_unknown": int(len(table) - len(known)),
        "categories": categories,
        "categories_unknown": int(table["category"].isna().sum()),
        "chance": _chance_block(table),
        "misses": [
            {"video_id": v, "reason": r} for v, r in zip(miss_rows["video_id"], miss_rows["miss_reason"])
        ],
        "n_misses": int(len(miss_rows)),
        "missing_gallery_scores": info["missing_gallery_scores"],
        "unknown_query_rows": info["unknown_query_rows"],
        # score rows of clips that are not queries (no ground-truth entry): listed, not counted in n
        "unknown_query_ids": info["unknown_query_ids"],
        "duplicate_gallery_entries": info["duplicate_gallery_entries"],
        "gt_outside_gallery": info["gt_outside_gallery"],
        "tie_break": TIE_BREAK,
        "mean_gallery_size": round(float(table["gallery_size"].mean()), 4) if len(table) else None,
    }
