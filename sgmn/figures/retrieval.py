"""Fig. 5 of the paper ("Ranking results of representative products"): query clips with the
top-3 shop images of two models, the ground truth marked, from the runs' saved score tables
(scores.parquet: video_id, image_id, score against the query's own gallery).

The paper shows SGMN alone on clips it "randomly" selected; here SGMN and GRA (Table 7 row A)
rank the same queries, picked without looking at the images: where exactly one of the two has
the right top-1, half of them each way round, each the first in a fixed pseudo-random order
(SHA-1 of the clip id). How many queries fall in each case is printed on the figure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from sgmn.figures.common import (
    NOT_RUN,
    RunRef,
    Written,
    label,
    not_run,
    pyplot,
    read_rgb,
    save,
    show_image,
    stable_order,
)

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import pandas as pd

TOP_K = 3
FRAMES = 3          # query frames shown, evenly spaced over the clip
HIT, MISS = "#1a9850", "#d73027"


def top_k(scores: pd.DataFrame, k: int = TOP_K) -> pd.DataFrame:
    """Each query's k best-scored images: video_id, rank (1..k), image_id, score (ties by id)."""
    s = scores.sort_values(["video_id", "score", "image_id"], ascending=[True, False, True])
    s = s.assign(rank=s.groupby("video_id", sort=False).cumcount() + 1)
    return s[s["rank"] <= k].reset_index(drop=True)


def gt_pairs(gt: dict[str, list[str]]) -> pd.DataFrame:
    """The ground truth as (video_id, image_id) rows."""
    import pandas as pd

    s = pd.Series(gt, dtype=object).explode().dropna()
    return pd.DataFrame({"video_id": s.index.astype(str), "image_id": s.to_numpy().astype(str)})


def mark_hits(top: pd.DataFrame, gt: pd.DataFrame) -> pd.DataFrame:
    """`top` with a boolean `hit` column (the image is a ground truth of the query)."""
    hits = gt.assign(hit=True).drop_duplicates(["video_id", "image_id"])
    out = top.merge(hits, on=["video_id", "image_id"], how="left")
    return out.assign(hit=out["hit"].fillna(False).astype(bool))


def hit_at_1(top: pd.DataFrame) -> pd.Series:
    """video_id -> whether the top-1 image is a ground truth (`top` from mark_hits)."""
    first = top[top["rank"] == 1]
    return first.set_index("video_id")["hit"]


def pick_queries(a: pd.Series | None, b: pd.Series | None, n: int, names=("A", "B"),
                 pool=None) -> tuple[list[str], str]:
    """`n` queries to show and how they were picked (module docstring): where exactly one model's
    top-1 is right, ceil(n/2) with A right and the rest with B right (a case with too few is
    filled from the other), each in stable_order; without one of the two, the first `n` of
    `pool` (the query ids) in stable_order."""
    if a is None or b is None:
        ids = stable_order(pool if pool is not None else (a if a is not None else b).index)[:n]
        return ids, f"{len(ids)} queries, the first in a fixed pseudo-random order (SHA-1 of the clip id)"
    both = a.to_frame("a").join(b.rename("b"), how="inner")
    only_a = stable_order(both.index[both["a"] & ~both["b"]])
    only_b = stable_order(both.index[~both["a"] & both["b"]])
    want_a = min(len(only_a), max(math.ceil(n / 2), n - len(only_b)))
    picked = only_a[:want_a] + only_b[:n - want_a]
    if len(picked) < n:   # the two never disagree that often: any other query
        rest = [q for q in stable_order(both.index) if q not in set(picked)]
        picked += rest[:n - len(picked)]
    how = (f"{want_a} of the {len(only_a)} queries where only {names[0]}'s top-1 is right and "
           f"{min(n - want_a, len(only_b))} of the {len(only_b)} where only {names[1]}'s is "
           f"(of {len(both)}), each the first in a fixed pseudo-random order (SHA-1 of the clip id)")
    return picked, how


def even_frames(paths: list, n: int = FRAMES) -> list:
    """`n` evenly spaced entries of `paths` (all of them when there are fewer)."""
    if len(paths) <= n:
        return list(paths)
    step = (len(paths) - 1) / (n - 1)
    return [paths[round(i * step)] for i in range(n)]


def _load(run: RunRef, gt: pd.DataFrame):
    """The run's top-k table with hits, or None when it has no score table."""
    import pandas as pd

    path = run.file("scores.parquet")
    if path is None:
        return None
    scores = pd.read_parquet(path, columns=["video_id", "image_id", "score"])
    scores = scores.astype({"video_id": str, "image_id": str})
    return mark_hits(top_k(scores), gt)


def _model_block(fig, gs, row: int, col: int, top, vid: str, images) -> None:
    """The top-k images of one query for one model: framed green when a ground truth."""
    mine = top[top["video_id"] == vid]
    for k in range(TOP_K):
        ax = fig.add_subplot(gs[row, col + k])
        if k >= len(mine):
            ax.set_axis_off()
            continue
        r = mine.iloc[k]
        show_image(ax, read_rgb(images[r["image_id"]]) if r["image_id"] in images else None,
                   HIT if r["hit"] else MISS)
        ax.set_title(f"{k + 1}. {r['score']:.2f}" + (" ✓" if r["hit"] else ""), fontsize=7,
                     color=HIT if r["hit"] else "0.2")


def plot_retrieval(data: str | Path, runs: list[RunRef], out_base: str | Path, n_queries: int = 4,
                   fmt: str = "lpr4m") -> Written:
    """Fig. 5 (module docstring): one row per query: FRAMES frames, each model's top-3, and the
    ground-truth image; a model without a score table is a "not run" column."""
    from sgmn.data.splits import read_split

    test = read_split(data, fmt, "test")
    gt = gt_pairs(test.gt)
    tops = [_load(r, gt) for r in runs]
    hits = [hit_at_1(t) if t is not None else None for t in tops]
    queries, how = pick_queries(hits[0], hits[1], n_queries, [label(r.variant) for r in runs],
                                pool=[q.video_id for q in test.queries])
    clips = {q.video_id: q for q in test.queries}
    plt = pyplot()
    ncols = FRAMES + TOP_K * len(runs) + 1
    fig = plt.figure(figsize=(1.25 * ncols + 0.5, 1.45 * len(queries) + 1.3))
    gs = fig.add_gridspec(len(queries), ncols, wspace=0.12, hspace=0.45,
                          width_ratios=[1] * FRAMES + [1] * (TOP_K * len(runs)) + [1])
    for row, vid in enumerate(queries):
        for j, path in enumerate(even_frames(clips[vid].frame_paths or [])):
            ax = fig.add_subplot(gs[row, j])
            show_image(ax, read_rgb(path))
            if j == 0:
                ax.set_ylabel(f"query {row + 1}", fontsize=8)
        for m, top in enumerate(tops):
            if top is not None:
                _model_block(fig, gs, row, FRAMES + TOP_K * m, top, vid, test.image_paths)
        ax = fig.add_subplot(gs[row, ncols - 1])
        first_gt = (test.gt.get(vid) or [None])[0]
        show_image(ax, read_rgb(test.image_paths[first_gt]) if first_gt in test.image_paths else None, HIT)
    missing = []
    for m, (run, top) in enumerate(zip(runs, tops)):
        col = FRAMES + TOP_K * m
        if top is None:
            not_run(fig.add_subplot(gs[:, col:col + TOP_K]), "", f"{label(run.variant)} ({run.variant}): "
                    f"no scores.parquet in {run.dir or 'this DAG'}")
            missing.append(run.variant)
        x = _column_centre(gs, col, TOP_K, fig)
        fig.text(x, 0.985, f"{label(run.variant)} top-{TOP_K}" + (f" ({NOT_RUN})" if top is None else ""),
                 ha="center", va="top", fontsize=10, fontweight="bold")
    fig.text(_column_centre(gs, 0, FRAMES, fig), 0.985, "query frames", ha="center", va="top", fontsize=10,
             fontweight="bold")
    fig.text(_column_centre(gs, ncols - 1, 1, fig), 0.985, "ground truth", ha="center", va="top", fontsize=10,
             fontweight="bold")
    fig.text(0.5, 0.01, f"Queries: {how}. Green frame and ✓: a ground-truth image; the number is the "
             "model's score.", ha="center", va="bottom", fontsize=7, wrap=True)
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.1)
    return Written(save(fig, out_base), not_run=missing, notes=[how, *queries])


def _column_centre(gs, col: int, span: int, fig) -> float:
    """Figure x of the centre of `span` grid columns starting at `col`."""
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=0.1)
    boxes = [gs[0, c].get_position(fig) for c in (col, col + span - 1)]
    return (boxes[0].x0 + boxes[1].x1) / 2
