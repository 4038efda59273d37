"""Fig. 7b of the paper: how two models score confusable clips against near-identical shop
images (near-twins), with and without SMF (Sec. 3.5, hard example mining; Table 7 rows E and D).

LPR-Synth marks near-twins in synth_meta.json: the variants of one design in one shop share a
`family_id`. A twin group is one livestream's gallery's main-view images of one family (two or
more products), each with test clips that sell it. For a few groups (the first ones with 3+
members in a fixed pseudo-random order of (live, family)), a heatmap shows each model's score of
one clip per product (the first in that order) against every image of the group, as the paper's
Fig. 7b does for three liquor bottles; a right-hand panel sums up every twin clip of the test
split: the margin of its own image's score over the best twin's (> 0: the right one wins).

The scores are the runs' saved retrieval scores (scores.parquet, Eq. 23: visual cosine plus
lambda times the text cosine when the model has TE), not re-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sgmn.figures.common import (
    RunRef,
    Written,
    best_view,
    label,
    not_run,
    pyplot,
    read_rgb,
    save,
    stable_key,
    stable_order,
)

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import numpy as np
    import pandas as pd

ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")


@dataclass(frozen=True)
class TwinGroup:
    live: str
    family: str
    images: tuple[str, ...]                 # main-view shop images of the family in the gallery
    clips: dict                             # image id -> test clips that sell it (stable order)


def twin_groups(products: dict, gallery: dict[str, list[str]], gt: dict[str, list[str]],
                min_size: int = 2) -> list[TwinGroup]:
    """The near-twin groups of a test split (module docstring), in stable order of (live,
    family). products: synth_meta.json's image id -> {family_id, view, ...}."""
    import pandas as pd

    gal = pd.Series(gallery, dtype=object).explode().dropna()
    gal = pd.DataFrame({"live": gal.index.astype(str), "image_id": gal.to_numpy().astype(str)})
    meta = pd.DataFrame.from_dict(products, orient="index")[["family_id", "view"]]
    gal = gal.join(meta, on="image_id")
    gal = gal[gal["family_id"].notna() & (gal["view"] == "main")].drop_duplicates(["live", "image_id"])
    sold = pd.Series(gt, dtype=object).explode().dropna()
    sold = pd.DataFrame({"video_id": sold.index.astype(str), "image_id": sold.to_numpy().astype(str)})
    pairs = gal.merge(sold, on="image_id")
    groups = []
    for (live, family), part in pairs.groupby(["live", "family_id"], sort=False):
        clips = {img: tuple(stable_order(g["video_id"])) for img, g in part.groupby("image_id")}
        if len(clips) >= min_size:
            groups.append(TwinGroup(live, family, tuple(sorted(clips)), clips))
    return sorted(groups, key=lambda g: stable_key(f"{g.live}/{g.family}"))


def score_matrix(scores: pd.DataFrame, clips: list[str], images: list[str]) -> np.ndarray:
    """(clips, images) scores from a long score table (NaN where a pair was not scored)."""
    import numpy as np

    sub = scores[scores["video_id"].isin(clips) & scores["image_id"].isin(images)]
    table = sub.pivot_table(index="video_id", columns="image_id", values="score", aggfunc="first")
    return table.reindex(index=clips, columns=images).to_numpy(dtype=np.float64)


def twin_margins(scores: pd.DataFrame, groups: list[TwinGroup]) -> pd.DataFrame:
    """One row per twin clip: video_id, group, own (its image's score), best_twin (the best
    score among the other images of its group), margin = own - best_twin."""
    import pandas as pd

    rows = [(vid, f"{g.live}/{g.family}", other == img, other)
            for g in groups for img, vids in g.clips.items() for vid in vids for other in g.images]
    pairs = pd.DataFrame(rows, columns=["video_id", "group", "is_own", "image_id"]).astype({"is_own": bool})
    scored = pairs.merge(scores[["video_id", "image_id", "score"]], on=["video_id", "image_id"], how="inner")
    per = scored.groupby(["video_id", "group", "is_own"])["score"].max().unstack("is_own")
    per = per.reindex(columns=[True, False]).rename(columns={True: "own", False: "best_twin"})
    per = per.dropna().reset_index()
    return per.assign(margin=per["own"] - per["best_twin"])[["video_id", "group", "own", "best_twin", "margin"]]


def _load_scores(run: RunRef):
    import pandas as pd

    path = run.file("scores.parquet")
    if path is None:
        return None
    return pd.read_parquet(path, columns=["video_id", "image_id", "score"]).astype({"video_id": str, "image_id": str})


def _strip(ax, rgbs: list, names: list[str], title: str) -> None:
    """Images side by side in one axes, each named below."""
    import numpy as np

    tiles = [r if r is not None else np.full((64, 64, 3), 200, np.uint8) for r in rgbs]
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles]
    ax.imshow(np.concatenate(tiles, axis=1), interpolation="nearest")
    w = tiles[0].shape[1]
    ax.set_xticks([w * (i + 0.5) - 2 for i in range(len(tiles))], names, fontsize=8)
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    for s in ax.spines.values():
        s.set_visible(False)


def _heatmap(ax, m, title: str, vmin: float, vmax: float, rows: list[str], cols: list[str]):
    """Scores with their values written in; the diagonal (clip vs its own image) boxed."""
    from matplotlib.patches import Rectangle

    im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
    for (i, j), v in _cells(m):
        best = v == max(m[i])
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="k" if v > (vmin + vmax) / 2 else "w", fontweight="bold" if best else "normal")
    for i in range(min(m.shape)):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d73027", lw=1.8))
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("shop image", fontsize=7)
    ax.set_title(title, fontsize=8)
    return im


def _cells(m):
    import numpy as np

    return [((i, j), m[i, j]) for i, j in np.ndindex(m.shape) if np.isfinite(m[i, j])]


def _group_row(fig, gs, row: int, group: TwinGroup, tables: list, runs: list[RunRef], test, max_size: int):
    """Frames and images of one group, then one heatmap per model on a shared colour scale."""
    import numpy as np

    images = list(group.images[:max_size])
    clips = [group.clips[i][0] for i in images]
    by_id = {q.video_id: q for q in test.queries}
    frames = [read_rgb(best_view(by_id[c])) if best_view(by_id[c]) else None for c in clips]
    letters = [chr(ord("A") + i) for i in range(len(clips))]
    _strip(fig.add_subplot(gs[row, 0]), frames, letters, "clips (frame with the product largest)")
    _strip(fig.add_subplot(gs[row, 1]), [read_rgb(test.image_paths[i]) for i in images], list(ROMAN[:len(images)]),
           f"near-twin images (live {group.live[:8]})")
    mats = [score_matrix(t, clips, images) if t is not None else None for t in tables]
    finite = np.concatenate([m[np.isfinite(m)] for m in mats if m is not None] or [np.zeros(1)])
    vmin, vmax = float(finite.min()), float(finite.max()) + 1e-9
    for k, (run, m) in enumerate(zip(runs, mats)):
        ax = fig.add_subplot(gs[row, 2 + k])
        if m is None:
            not_run(ax, label(run.variant), f"no scores.parquet for {run.variant}")
        else:
            _heatmap(ax, m, f"{label(run.variant)}", vmin, vmax, letters, list(ROMAN[:len(images)]))


def paired_margin_gain(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float, int]:
    """Mean of b's margin - a's over the clips both scored, its 95% t-interval half-width, and
    the number of clips."""
    import numpy as np
    from scipy import stats

    d = b.set_index("video_id")["margin"].sub(a.set_index("video_id")["margin"]).dropna().to_numpy()
    if len(d) < 2:
        return float(d.mean()) if len(d) else float("nan"), float("nan"), len(d)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(half), len(d)


def _summary(ax, margins: list, runs: list[RunRef]) -> None:
    """ECDF of every twin clip's margin (own image - best twin) for each model, and the paired
    difference of the two models' margins."""
    import numpy as np

    for k, (run, m) in enumerate(zip(runs, margins)):
        if m is None or not len(m):
            continue
        x = np.sort(m["margin"].to_numpy())
        won = (x > 0).mean() * 100
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", color=f"C{k}", lw=1.2,
                label=f"{label(run.variant)}: own image first for {won:.1f}%, mean {x.mean():+.3f}")
    ax.axvline(0, color="0.4", lw=0.8)
    n = max((len(m) for m in margins if m is not None), default=0)
    title = f"all {n} twin clips:\nown image's score - best twin's score"
    if len(margins) == 2 and all(m is not None and len(m) for m in margins):
        gain, half, pairs = paired_margin_gain(*margins)
        title += (f"\npaired, {label(runs[1].variant)} - {label(runs[0].variant)}:\n{gain:+.4f} "
                  f"[{gain - half:+.4f}, {gain + half:+.4f}] (mean, 95% CI, {pairs} clips)")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("margin (> 0: the right image wins)", fontsize=7)
    ax.set_ylabel("fraction of clips", fontsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left")
    ax.grid(alpha=0.3)


def plot_twins(data: str | Path, runs: list[RunRef], out_base: str | Path, n_groups: int = 3,
               max_size: int = 4, fmt: str = "lpr4m") -> Written:
    """Fig. 7b (module docstring): per group the clips, the twin images and one heatmap per
    run; the margin summary over every twin clip in the last row."""
    from sgmn.data.jsonfile import read_json
    from sgmn.data.splits import read_split

    plt = pyplot()
    meta_path = Path(data) / "synth_meta.json"
    if not meta_path.is_file():
        fig, ax = plt.subplots(figsize=(7, 3))
        not_run(ax, "Fig. 7b", f"{meta_path} does not exist: near-twins are known on LPR-Synth only")
        return Written(save(fig, out_base), not_run=["near-twin annotation"])
    test = read_split(data, fmt, "test")
    groups = twin_groups(read_json(meta_path)["products"], test.gallery, test.gt)
    shown = ([g for g in groups if len(g.images) >= 3] or groups)[:n_groups]
    tables = [_load_scores(r) for r in runs]
    rows = max(1, len(shown))
    fig = plt.figure(figsize=(4.2 + 2.6 * len(runs) + 3.2, 2.7 * rows + 1.0), constrained_layout=True)
    gs = fig.add_gridspec(rows, 3 + len(runs), width_ratios=[1.6, 1.6] + [1.3] * len(runs) + [2.2])
    for row, group in enumerate(shown):
        _group_row(fig, gs, row, group, tables, runs, test, max_size)
    if not shown:
        not_run(fig.add_subplot(gs[0, :-1]), "", "no near-twin group with test clips in this test split")
    margins = [twin_margins(t, groups) if t is not None else None for t in tables]
    _summary(fig.add_subplot(gs[:, -1]), margins, runs)
    fig.suptitle(f"Fig. 7b: retrieval scores of near-twin clips (rows A, B, ...) against their shop images "
                 f"(columns I, II, ...; the right pair boxed in red), {' vs '.join(label(r.variant) for r in runs)}\n"
                 f"{len(shown)} of the {len(groups)} twin groups, the first with 3+ products in a fixed "
                 "pseudo-random order; one clip per product; bold: the row's best", fontsize=9)
    missing = [r.variant for r, t in zip(runs, tables) if t is None]
    return Written(save(fig, out_base), not_run=missing, notes=[f"{g.live}/{g.family}" for g in shown])
