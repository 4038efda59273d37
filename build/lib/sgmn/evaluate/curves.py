"""Learning curves: R@1 against the number of training steps, to choose ``train.steps``.

The top-level config block ``curves`` (``workflow/config/curves.yaml``) names variants of the
ablation matrix, the in-batch negatives of their triplet losses (``all``: the hinge averaged over
every in-batch negative for the whole run; ``hardest``: VSE++'s hardest negative from the first
step, the paper's recipe), step counts and seeds. Each (variant, negatives, steps) is a run of its
own with its own warm-up and cosine schedule - the run one would make with that ``train.steps``,
not a snapshot of a longer run - named ``curve_{variant}_{negatives}_s{steps}`` and trained and
evaluated by the main DAG's rules into ``results/{dataset}/runs/``.

Only :func:`curve_variants` is light at import (the Snakefile calls it).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from sgmn import config as cfg

NEGATIVES: tuple[str, ...] = ("all", "hardest")


def curve_name(variant: str, negatives: str, steps: int) -> str:
    return f"curve_{variant}_{negatives}_s{steps}"


def curve_variants(config: dict, variants: dict[str, dict], variants_path) -> dict[str, dict]:
    """name -> resolved config of every run of the ``curves`` block (empty without one)."""
    spec = config.get("curves") or {}
    out = {}
    for variant in spec.get("variants", []):
        base = cfg.resolve_variant(config, variant, variants, variants_path)
        for negatives in spec.get("negatives", []):
            for steps in spec.get("steps", []):
                run = copy.deepcopy(base)
                run["train"]["steps"] = int(steps)
                # all negatives for every step, or the hardest one from the first step
                run["train"]["triplet_warmup_steps"] = int(steps) if negatives == "all" else 0
                run["train"]["warmup_steps"] = min(run["train"]["warmup_steps"], int(steps))
                name = curve_name(variant, negatives, int(steps))
                run["variant"] = name
                out[name] = run
    return out


def collect(runs_dir: str | Path, spec: dict) -> "pd.DataFrame":
    """One row per (variant, negatives, steps, seed): R@1/R@5/R@10 of its metrics.json (NaN and
    status ``not run`` when missing)."""
    import pandas as pd

    rows = []
    for variant in spec["variants"]:
        for negatives in spec["negatives"]:
            for steps in spec["steps"]:
                for seed in spec["seeds"]:
                    path = Path(runs_dir) / curve_name(variant, negatives, int(steps)) / f"seed{seed}" / "metrics.json"
                    row = {"variant": variant, "negatives": negatives, "steps": int(steps), "seed": int(seed),
                           "R@1": math.nan, "R@5": math.nan, "R@10": math.nan,
                           "similarity_loss_end": math.nan, "chance_R@1": math.nan, "status": "not run"}
                    if path.exists():
                        metrics = json.loads(path.read_text())
                        overall = metrics["overall"]
                        row.update({k: float(overall[k]) for k in ("R@1", "R@5", "R@10")}, status="ok")
                        row["chance_R@1"] = float(metrics.get("chance", {}).get("R@1", math.nan))
                        row["similarity_loss_end"] = _final_loss(path.parent / "train_log.jsonl",
                                                                 _anchors_summed(path.parent / "params.json"))
                    rows.append(row)
    return pd.DataFrame(rows)


def _anchors_summed(params_path: Path) -> int:
    """How many anchors the run's triplet sums over: the global batch under `sgmn.triplet_reduction`
    sum, 1 under mean (and for runs made before the key existed, which averaged)."""
    if not params_path.exists():
        return 1
    config = json.loads(params_path.read_text()).get("config", {})
    if config.get("sgmn", {}).get("triplet_reduction", "mean") != "sum":
        return 1
    return int(config["train"]["batch_size"])


def _final_loss(log_path: Path, anchors: int = 1, last: int = 3) -> float:
    """Mean GRA similarity (triplet) loss per anchor (the logged loss / `anchors`) of the last
    `last` logged steps; NaN without a log. A hardest-negative triplet that has collapsed sits at
    2 x margin per anchor (every similarity equal)."""
    if not log_path.exists():
        return math.nan
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    values = [r["similarity_loss"] for r in rows if "similarity_loss" in r][-last:]
    return sum(values) / len(values) / anchors if values else math.nan


def plot(table: "pd.DataFrame", out_base: str | Path, margin: float | None = None) -> list[Path]:
    """R@1 against steps, one line per (variant, negatives), mean over seeds with each seed's
    point, and the end-of-training triplet loss beside it (2 x `margin` marks a collapse);
    PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    done = table[table["status"] == "ok"]
    for (variant, negatives), part in done.groupby(["variant", "negatives"], sort=True):
        style = dict(marker="o", linestyle="-" if negatives == "all" else "--")
        mean = part.groupby("steps")["R@1"].mean()
        line, = ax.plot(mean.index, mean.to_numpy(), label=f"{variant}, {negatives} negatives", **style)
        ax.scatter(part["steps"], part["R@1"], s=10, color=line.get_color(), alpha=0.5)
        loss = part.groupby("steps")["similarity_loss_end"].mean()
        ax_loss.plot(loss.index, loss.to_numpy(), color=line.get_color(), **style)
    if "chance_R@1" in table and table["chance_R@1"].notna().any():
        ax.axhline(table["chance_R@1"].mean(), color="grey", linewidth=0.8, linestyle=":", label="chance")
    if margin is not None:
        ax_loss.axhline(2 * margin, color="grey", linewidth=0.8, linestyle=":", label="2 x margin (collapse)")
        ax_loss.legend(fontsize=7)
    steps = sorted(done["steps"].unique()) if len(done) else []
    for a in (ax, ax_loss):
        a.set_xlabel("training steps (each its own warm-up + cosine run)")
        a.set_xscale("log", base=2)
        if steps:
            a.set_xticks(steps, [str(s) for s in steps])
            a.minorticks_off()
        a.grid(alpha=0.3)
    ax.set_ylabel("R@1 (%)")
    ax_loss.set_ylabel("GRA triplet loss per anchor, last logged steps")
    if len(done):
        ax.legend(fontsize=7)
    ax.set_title("R@1 on the test queries")
    ax_loss.set_title("end-of-training loss")
    fig.tight_layout()
    from sgmn.io import atomic_path

    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_suffix(".png"), out_base.with_suffix(".pdf")]
    for p in paths:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=p.suffix[1:], dpi=150)
    plt.close(fig)
    return paths


def write_curves(runs_dir: str | Path, spec: dict, out_csv: str | Path, figure_base: str | Path,
                 margin: float | None = None) -> list[Path]:
    from sgmn.io import write_table

    table = collect(runs_dir, spec)
    write_table(table, out_csv)
    return [Path(out_csv), *plot(table, figure_base, margin)]
