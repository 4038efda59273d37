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
from sgmn.evaluate.scores import ScoreTableError, first_duplicate

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


@dataclass
class _Galleries:
    """Every query's gallery as rows of one flat (query, image code) table.

    Image codes index ``vocab`` = every gallery image id, sorted, so comparing codes is comparing
    image ids (needed by the tie-break). Query ``i`` owns rows ``start[i] : start[i] + size[i]``.
    Galleries are shared by all queries of a live, so each distinct gallery is encoded once, and
    (distinct gallery, image code) -> position in it is a lookup over those few entries.
    """

    vocab: pd.Index  # sorted gallery image ids
    q_row: np.ndarray  # query index of each row
    code_row: np.ndarray  # image code of each row
    size: np.ndarray  # rows per query (its distinct gallery images)
    start: np.ndarray  # first row of each query
    gallery_of_q: np.ndarray  # distinct-gallery index of each query
    slot: pd.Index  # key gallery * len(vocab) + code of every distinct gallery entry ...
    slot_pos: np.ndarray  # ... and that entry's position in its gallery
    n_dup: int  # duplicate ids inside galleries (kept once)

    def position(self, q: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Row of image ``code`` in query ``q``'s gallery, -1 when it is not there (or code -1)."""
        if not len(self.slot_pos):
            return np.full(len(q), -1, dtype=np.int64)
        key = self.gallery_of_q[q]
        key *= max(len(self.vocab), 1)
        key += code
        hit = self.slot.get_indexer(key)
        del key
        hit[code < 0] = -1  # a code -1 key would alias the previous gallery's last entry
        row = self.slot_pos[hit]
        row += self.start[q]
        row[hit < 0] = -1
        return row


def _gallery_table(queries: list[Query]) -> _Galleries:
    """Flatten the galleries (see :class:`_Galleries`); duplicate ids inside one gallery are kept once."""
    distinct: dict[tuple[str, ...], int] = {}
    seen: dict[int, int] = {}  # id(gallery tuple) -> index: queries of a live share one tuple,
    for q in queries:          # so a 600-id tuple is hashed once per live, not once per query
        if id(q.gallery) not in seen:
            seen[id(q.gallery)] = distinct.setdefault(q.gallery, len(distinct))
    deduped = [tuple(dict.fromkeys(g)) for g in distinct]  # order-preserving dedup
    vocab = sorted(set().union(*deduped))  # Python str order = the tie-break order
    code_of = {img: i for i, img in enumerate(vocab)}
    encoded = [np.fromiter((code_of[i] for i in d), dtype=np.int64, count=len(d)) for d in deduped]
    gallery_of_q = np.fromiter((seen[id(q.gallery)] for q in queries), dtype=np.int64, count=len(queries))
    listed = np.fromiter((len(g) for g in distinct), dtype=np.int64, count=len(distinct))
    kept = np.fromiter((len(d) for d in deduped), dtype=np.int64, count=len(deduped))
    size = kept[gallery_of_q]
    n_rows = int(size.sum())
    q_row = np.repeat(np.arange(len(queries), dtype=np.int64), size)
    code_row = np.concatenate([encoded[g] for g in gallery_of_q]) if n_rows else np.zeros(0, np.int64)
    n_gal = np.repeat(np.arange(len(deduped), dtype=np.int64), kept)
    slot_code = np.concatenate(encoded) if encoded else np.zeros(0, np.int64)
    return _Galleries(
        vocab=pd.Index(vocab, dtype=object), q_row=q_row, code_row=code_row, size=size,
        start=np.cumsum(size) - size, gallery_of_q=gallery_of_q,
        slot=pd.Index(n_gal * max(len(vocab), 1) + slot_code),
        slot_pos=np.arange(len(slot_code), dtype=np.int64) - np.repeat(np.cumsum(kept) - kept, kept),
        n_dup=int((listed - kept)[gallery_of_q].sum()),
    )


def _id_codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """(code per row, -1 when missing; distinct ids): a Categorical's own codes, else factorized."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), col.cat.categories  # int8/16/32 as pandas keeps them
    codes, uniq = pd.factorize(col, sort=False)
    return codes, pd.Index(uniq)


def _score_rows(scores: pd.DataFrame, qindex: pd.Index, vocab: pd.Index) -> dict[str, Any]:
    """Validate the long score table and encode it as (query index, image code, score) arrays.

    Ids are joined by code: each distinct id of the table is looked up once, then every row takes
    its id's result. Rows of unknown video_ids are dropped and counted; rows of images outside every
    gallery get image code -1 (they still show that the query has scores, but can never be ranked).
    """
    missing_cols = {"video_id", "image_id", "score"} - set(scores.columns)
    if missing_cols:
        raise ValueError(f"scores lacks columns {sorted(missing_cols)}")
    vcodes, vuniq = _id_codes(scores["video_id"])
    icodes, iuniq = _id_codes(scores["image_id"])
    pair = vcodes.astype(np.int64) * max(len(iuniq), 1) + icodes
    r = first_duplicate(pair)
    if r is not None:
        raise ScoreTableError(
            f"duplicate score rows for (video_id, image_id) = "
            f"({vuniq[vcodes[r]]!r}, {iuniq[icodes[r]]!r})"
        )
    if (vcodes < 0).any() or (icodes < 0).any():  # a missing id is coded -1: never index with it
        r = int(np.flatnonzero((vcodes < 0) | (icodes < 0))[0])
        raise ScoreTableError(f"scores row {r + 1}: missing video_id or image_id")
    score = scores["score"].to_numpy(dtype=float)
    if not np.isfinite(score).all():
        r = int(np.flatnonzero(~np.isfinite(score))[0])
        raise ScoreTableError(f"score {score[r]} (not finite) for (video_id, image_id) = "
                              f"({vuniq[vcodes[r]]!r}, {iuniq[icodes[r]]!r})")

    q_of_uniq = qindex.get_indexer(pd.Index(vuniq))
    img_of_uniq = vocab.get_indexer(pd.Index(iuniq)) if len(vocab) else np.full(len(iuniq), -1)
    q = q_of_uniq[vcodes]
    known = q >= 0
    n_unknown = len(q) - int(np.count_nonzero(known))
    if len(q) and len(qindex) and n_unknown == len(q):
        seen = vuniq[pd.unique(vcodes)[:5]]  # in table order, as the file lists them
        raise ScoreTableError(f"no row of the score table matches a query of the test set "
                              f"(first video_ids: {[str(v) for v in seen]})")
    used = np.bincount(vcodes, minlength=len(vuniq)) > 0  # a Categorical may list unused ids
    unknown_ids = sorted(str(v) for v in vuniq[used & (q_of_uniq < 0)])
    img = img_of_uniq[icodes]
    if n_unknown:  # else no 12M-row copies
        q, img, score = q[known], img[known], score[known]
    return {"q": q, "img": img, "score": score, "unknown_query_rows": n_unknown, "unknown_query_ids": unknown_ids}


def _lookup_scores(gal: _Galleries, s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Score of every gallery row (``-inf`` when absent) and the query of each score row that is
    in its query's gallery (one per scored gallery row: the table has no duplicate pairs)."""
    row = gal.position(s["q"], s["img"])
    hit = row >= 0
    val = np.full(len(gal.q_row), -np.inf)
    if hit.all():  # every row in its query's gallery: no 12M-row copies
        val[row] = s["score"]
        return val, s["q"]
    val[row[hit]] = s["score"][hit]
    return val, s["q"][hit]


def _gt_rows(queries: list[Query], gal: _Galleries) -> tuple[np.ndarray, np.ndarray]:
    """Mask of the gallery rows that are a query's ground truth, and per query the number of its
    (distinct) ground-truth ids outside its gallery; GT ids are coded once against the vocab."""
    gts = [tuple(dict.fromkeys(q.gt)) for q in queries]
    n = np.fromiter((len(g) for g in gts), dtype=np.int64, count=len(gts))
    gt_q = np.repeat(np.arange(len(queries), dtype=np.int64), n)
    ids = [g for ids in gts for g in ids]
    code = gal.vocab.get_indexer(pd.Index(ids, dtype=object)) if ids and len(gal.vocab) else np.full(len(ids), -1)
    row = gal.position(gt_q, code.astype(np.int64)) if len(ids) else np.zeros(0, np.int64)
    is_gt = np.zeros(len(gal.q_row), bool)
    is_gt[row[row >= 0]] = True
    return is_gt, np.bincount(gt_q[row < 0], minlength=len(queries))


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

    # before = higher score, or the same score and a smaller id (NaN: no GT -> False); one
    # 12M-row gather at a time
    bs = best_score[q_row]
    before, tie = score_row > bs, score_row == bs
    del bs
    tie &= code_row < best_code[q_row]
    before |= tie
    rank = np.bincount(q_row[before], minlength=n_q) + 1.0  # integer counts: exact as floats
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

    gal = _gallery_table(queries)
    gallery_size = gal.size
    s = _score_rows(scores, qindex, gal.vocab)

    # ground-truth flags on the gallery rows (GT ids outside the gallery cannot be ranked)
    is_gt, n_gt_outside = _gt_rows(queries, gal)
    n_gt_in = np.bincount(gal.q_row[is_gt], minlength=n_q)

    score_row, q_scored = _lookup_scores(gal, s)
    rank = _best_gt_rank(gal.q_row, gal.code_row, score_row, is_gt, n_q)
    n_dup = gal.n_dup
    del score_row, gal  # the flat 12M-row arrays are not needed past here

    n_score_rows = np.bincount(s["q"], minlength=n_q)
    n_scored = np.bincount(q_scored, minlength=n_q)
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
        "duplicate_gallery_entries": n_dup,
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
    return evaluate_scores(scores, queries, unreadable)[0]


def evaluate_scores(
    scores: pd.DataFrame, queries: list[Query], unreadable: dict[str, str] | None = None
) -> tuple[dict, pd.DataFrame]:
    """(:func:`compute_metrics`, :func:`rank_queries`) from one ranking: a table of 12M score
    rows is joined and ranked once for both."""
    table, info = _rank(scores, queries, unreadable)
    return _aggregate(table, info), table


def _aggregate(table: pd.DataFrame, info: dict[str, Any]) -> dict:
    """The metrics of :func:`compute_metrics` from the per-query table and the counters."""
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
        "n_misses": len(miss_rows),
        "missing_gallery_scores": info["missing_gallery_scores"],
        "unknown_query_rows": info["unknown_query_rows"],
        # score rows of clips that are not queries (no ground-truth entry): listed, not counted in n
        "unknown_query_ids": info["unknown_query_ids"],
        "duplicate_gallery_entries": info["duplicate_gallery_entries"],
        "gt_outside_gallery": info["gt_outside_gallery"],
        "tie_break": TIE_BREAK,
        "mean_gallery_size": round(float(table["gallery_size"].mean()), 4) if len(table) else None,
    }
