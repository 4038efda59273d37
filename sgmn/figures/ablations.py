"""Tables 4, 5 and 6 of the paper as charts, from the tables rule's CSVs (sgmn.evaluate.tables):
our mean R@1 with its 95% CI over seeds (no bar with one seed) beside the published value.

- Table 4: R@1 of RICE_patch, RICE_box and SGMN on LPR4M's subsets (product scale, visible
  duration, product count), grouped bars.
- Table 5: R@1 against the loss weights beta1 (beta2 = 1 - beta1, Eq. 22), the beta curve.
- Table 6: R@1 of each combination of the spatiotemporal graphs guiding GCI (rows A-H).

A missing CSV, or a row without runs, is drawn as "not run"; the published values are always
shown (they come with the CSV when it exists).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sgmn.figures.common import NOT_RUN, Written, label, not_run, pyplot, save

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import numpy as np

OURS = "LPR-Synth (ours): mean, 95% CI over seeds"
PAPER = "paper (LPR4M)"


def _read(csv: str | Path | None):
    import pandas as pd

    if csv is None or not Path(csv).is_file():
        return None
    return pd.read_csv(csv)


def _ci(values) -> np.ndarray:
    """CI half-widths with NaN (one seed, or no run) as 0, for errorbar."""
    import numpy as np

    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)


def _figure(ncols: int, width: float, height: float = 3.8):
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), constrained_layout=True, squeeze=False)
    return fig, list(axes[0])


def _no_table(out_base, title: str, csv) -> Written:
    fig, (ax,) = _figure(1, 6, 3)
    not_run(ax, title, f"{csv or 'the table'} does not exist (rule tables has not run)")
    return Written(save(fig, out_base), not_run=[title])


# ---- Table 4 -------------------------------------------------------------------------------
def plot_table4(csv: str | Path | None, out_base: str | Path) -> Written:
    """Table 4 (paper Sec. 4.3, "Generalization and Robustness"): R@1 per subset, one bar per
    method with its 95% CI, the published value as a black diamond on each bar."""
    import numpy as np

    title = "Table 4: R@1 by subset"
    df = _read(csv)
    if df is None:
        return _no_table(out_base, title, csv)
    subsets = list(dict.fromkeys(df["subset"]))
    rows = list(dict.fromkeys(df["row_id"]))
    fig, (ax,) = _figure(1, 12, 4.2)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(subsets))
    missing = []
    for i, row in enumerate(rows):
        part = df[df["row_id"] == row].set_index("subset").reindex(subsets)
        xs = x + (i - (len(rows) - 1) / 2) * width
        ours = part["R@1"].to_numpy(float)
        name = label(str(part["variant"].dropna().iloc[0])) if part["variant"].notna().any() else row
        ax.bar(xs, np.nan_to_num(ours), width * 0.92, yerr=_ci(part["R@1_ci"]), capsize=2,
               color=f"C{i}", label=f"{name} ({_seeds(part)})", error_kw={"lw": 0.8})
        ax.scatter(xs, part["R@1_paper"].to_numpy(float), marker="D", s=14, color="k", zorder=3,
                   label=PAPER if i == 0 else None)
        for xi in xs[np.isnan(ours)]:
            ax.text(xi, 1, NOT_RUN, rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
        if np.isnan(ours).all():
            missing.append(f"table4 {row}")
    ax.set_xticks(x, [s.replace("/", "\n") for s in subsets], fontsize=8)
    for boundary in _group_boundaries(subsets):
        ax.axvline(boundary, color="0.8", lw=0.8)
    ax.set_ylabel("R@1 (%)")
    ax.set_title(f"{title}: bars {OURS}; diamonds {PAPER}", fontsize=10)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return Written(save(fig, out_base), not_run=missing)


def _seeds(part) -> str:
    n = int(part["n_seeds"].max()) if part["n_seeds"].notna().any() else 0
    return NOT_RUN if n == 0 else f"{n} seed{'s' * (n > 1)}"


def _group_boundaries(subsets: list[str]) -> list[float]:
    """x positions between subset families (overall | scale | duration | count)."""
    fams = [s.split("/")[0] for s in subsets]
    return [i + 0.5 for i in range(len(fams) - 1) if fams[i] != fams[i + 1]]


# ---- Table 5 -------------------------------------------------------------------------------
def plot_table5(csv: str | Path | None, out_base: str | Path) -> Written:
    """Table 5 (Sec. 4.4, "Loss Weights"): R@1 against beta1 of Eq. 22 (beta2 = 1 - beta1),
    ours with 95% CIs (left) and the paper's (right)."""
    title = "Table 5: R@1 against the loss weights"
    df = _read(csv)
    if df is None:
        return _no_table(out_base, title, csv)
    df = df.sort_values("beta1")
    fig, (ax, ax_paper) = _figure(2, 10)
    done = df[df["R@1"].notna()]
    missing = df[df["R@1"].isna()]
    if len(done):
        ax.errorbar(done["beta1"], done["R@1"], yerr=_ci(done["R@1_ci"]), marker="o", capsize=3,
                    color="C0", label="R@1 (n: seeds)")
        for b, r1, n in zip(done["beta1"], done["R@1"], done["n_seeds"]):
            ax.annotate(f"n={int(n)}", (b, r1), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=6, color="0.3")
        ax.legend(fontsize=7)
    else:
        not_run(ax, "", "no Table 5 row has runs")
    for b in missing["beta1"]:
        ax.axvline(b, color="0.85", ls=":", lw=0.8)
        ax.text(b, 0.02, NOT_RUN, rotation=90, fontsize=6, color="0.4", transform=ax.get_xaxis_transform())
    ax.set_title(OURS, fontsize=9)
    ax_paper.plot(df["beta1"], df["R@1_paper"], marker="s", color="k", label="R@1")
    ax_paper.set_title(PAPER, fontsize=9)
    for a in (ax, ax_paper):
        a.set_xlabel("beta1 (graph loss weight; beta2 = 1 - beta1)")
        a.set_ylabel("R@1 (%)")
        a.grid(alpha=0.3)
        a.set_xlim(-0.05, 1.05)
    fig.suptitle(title, fontsize=10)
    return Written(save(fig, out_base), not_run=[f"table5 {r}" for r in missing["row_id"]])


# ---- Table 6 -------------------------------------------------------------------------------
GRAPHS = (("g_i2i", "I2I"), ("g_v2v", "V2V"), ("g_cross", "I2V+V2I"))


def graph_label(row) -> str:
    """'B: I2I' from a Table 6 row's switches ('A: none' without a graph)."""
    on = [name for key, name in GRAPHS if str(row[key]).lower() in ("true", "1", "1.0")]
    return f"{row['row_id']}: {' + '.join(on) or 'no graph'}"


def plot_table6(csv: str | Path | None, out_base: str | Path) -> Written:
    """Table 6 (Sec. 4.4, "Different Spatiotemporal Graphs"): R@1 of each graph combination
    guiding GCI, ours with 95% CIs (left) and the paper's (right), rows A-H top to bottom."""
    import numpy as np

    title = "Table 6: R@1 by the graphs guiding GCI"
    df = _read(csv)
    if df is None:
        return _no_table(out_base, title, csv)
    df = df.drop_duplicates("row_id").reset_index(drop=True)
    names = [graph_label(r) for r in df.to_dict("records")]
    y = np.arange(len(df))[::-1]
    fig, (ax, ax_paper) = _figure(2, 10, 0.5 * len(df) + 1.6)
    ours = df["R@1"].to_numpy(float)
    ok = ~np.isnan(ours)
    ax.errorbar(ours[ok], y[ok], xerr=_ci(df["R@1_ci"])[ok], fmt="o", capsize=3, color="C0")
    for xi, yi, n in zip(ours[ok], y[ok], df["n_seeds"][ok]):
        ax.annotate(f"n={int(n)}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=6, color="0.3")
    for yi in y[~ok]:
        ax.text(0.5, yi, NOT_RUN, transform=ax.get_yaxis_transform(), ha="center", va="center",
                fontsize=7, color="0.4")
    ax_paper.plot(df["R@1_paper"].to_numpy(float), y, "s", color="k")
    for a, t in ((ax, OURS), (ax_paper, PAPER)):
        a.set_yticks(y, names, fontsize=8)
        a.set_xlabel("R@1 (%)")
        a.set_title(t, fontsize=9)
        a.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return Written(save(fig, out_base), not_run=[f"table6 {r}" for r in df["row_id"][~ok]])
