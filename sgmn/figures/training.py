"""Training curves: the loss of every run against the step, from the runs' train_log.jsonl
(one JSON line per logged step: `loss`, the named `*_loss` terms of the method, e.g. SGMN's
similarity / text / graph / kl / matching terms of Eq. 22).

One panel per variant: the total loss of each seed (solid), and the named terms of its first
seed (thin, dashed). A run without a log is drawn as "not run" (no final.pt) or "no training"
(final.pt of a zero-step run, e.g. CLIP zero-shot, evaluated as initialised).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from sgmn.figures.common import NOT_RUN, Written, label, not_run, pyplot, save

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import pandas as pd

LOG = "train_log.jsonl"


def read_log(path: Path) -> pd.DataFrame:
    """A train_log.jsonl as a table (one row per logged step); empty when the file is."""
    import pandas as pd

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def run_of(run_dir: Path) -> tuple[str, int]:
    """(variant, seed) of `.../runs/{variant}/seed{seed}`."""
    return run_dir.parent.name, int(run_dir.name.removeprefix("seed"))


def collect(run_dirs: list[Path]) -> dict[str, dict[int, pd.DataFrame | str]]:
    """variant -> seed -> its log, or why there is none."""
    out: dict = {}
    for run in run_dirs:
        run = Path(run)
        variant, seed = run_of(run)
        log = run / LOG
        if log.is_file():
            out.setdefault(variant, {})[seed] = read_log(log)
        else:
            out.setdefault(variant, {})[seed] = ("no train_log.jsonl: evaluated as initialised (0 steps)"
                                                 if (run / "final.pt").is_file() else f"{NOT_RUN}: no final.pt")
    return dict(sorted(out.items()))


def _panel(ax, variant: str, seeds: dict) -> bool:
    """One variant's panel; False when none of its seeds has a log (a not-run panel)."""
    logs = {s: v for s, v in sorted(seeds.items()) if not isinstance(v, str)}
    if not logs:
        why = sorted({v for v in seeds.values() if isinstance(v, str)})
        trained = not any(w.startswith(NOT_RUN) for w in why)
        not_run(ax, label(variant), "; ".join(why), headline="no training" if trained else NOT_RUN)
        return False
    first = next(iter(logs.values()))
    for seed, log in logs.items():
        ax.plot(log["step"], log["loss"], lw=1.4, label=f"loss, seed {seed}")
    terms = [c for c in first.columns if c.endswith("_loss")]
    for i, term in enumerate(terms):
        ax.plot(first["step"], first[term], lw=0.7, ls="--", color=f"C{(len(logs) + i) % 10}",
                label=f"{term.removesuffix('_loss')} (seed {next(iter(logs))})")
    ax.set_title(f"{label(variant)}" + (f" ({variant})" if label(variant) != variant else ""), fontsize=8)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5, loc="upper right")
    return True


def plot_training(run_dirs: list[Path], out_base: str | Path, ncols: int = 6) -> Written:
    """Loss against step for every run (module docstring), PNG and PDF."""
    runs = collect(run_dirs)
    plt = pyplot()
    n = max(1, len(runs))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.3 * nrows + 0.6), squeeze=False,
                             constrained_layout=True)
    missing = []
    for ax, (variant, seeds) in zip(axes.flat, runs.items()):
        if not _panel(ax, variant, seeds):
            missing.append(variant)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    if not runs:
        not_run(axes.flat[0], "training curves", "no runs given")
        missing.append("all")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("training loss", fontsize=7)
    fig.suptitle("Training loss against step, per run (train_log.jsonl): total per seed (solid), "
                 "named terms of the first seed (dashed)", fontsize=10)
    return Written(save(fig, out_base, dpi=110), not_run=missing)
