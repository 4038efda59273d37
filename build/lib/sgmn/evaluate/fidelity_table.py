"""Table 7 under both recipes: the component ablation (rows A-E) with `fidelity: paper` and with
`fidelity: official`, side by side, with paired tests (`snakemake fidelity`).

The official code trains CLIP at 3e-7 (`train.clip_lr_scale` 0.001), so the new modules (TMC,
GCI) do most of the adapting; whether a component's effect depends on the recipe is what this
table shows. Each row's variants are ordinary rows of the variants file (the paper rows are the
default run's; the official rows are `*_official`, with `sgmn_official` for row E). Tests:
adjacent rows within each recipe (as Table 7's), E against A, and each row official against
paper, all with the two-level bootstrap of :func:`sgmn.evaluate.tables.paired_test`.

Only ``ROWS`` and :func:`fidelity_variants` are light at import (the Snakefile reads them).
"""
from __future__ import annotations

import math
from pathlib import Path

ROWS: list[tuple[str, str, str]] = [     # (Table 7 row, paper variant, official variant)
    ("A", "gra_only", "gra_only_official"),
    ("B", "t7_te", "t7_te_official"),
    ("C", "t7_te_tmc", "t7_te_tmc_official"),
    ("D", "t7_te_tmc_gci", "t7_te_tmc_gci_official"),
    ("E", "sgmn", "sgmn_official"),
]
MODES = ("paper", "official")
SEEDS = (0, 1, 2)
COMPARISONS = [("B", "A"), ("C", "B"), ("D", "C"), ("E", "D"), ("E", "A")]
METRICS = ("R@1", "R@5", "R@10")


def fidelity_variants() -> list[str]:
    """Every variant the fidelity table reads, paper rows first."""
    return [row[1] for row in ROWS] + [row[2] for row in ROWS]


def _variant(row: str, mode: str) -> str:
    return {r: (p, o) for r, p, o in ROWS}[row][MODES.index(mode)]


def build(runs_dir: str | Path, seeds=SEEDS) -> dict:
    """{"table": one row per (Table 7 row, mode), "tests": paired tests}. A run that is
    missing makes its row "not run" and leaves out the tests that need it."""
    import pandas as pd

    from sgmn.evaluate.tables import _overall, _per_query, paired_test, seed_ci

    runs_dir = Path(runs_dir)
    overall = {v: _overall(runs_dir, v, list(seeds)) for v in fidelity_variants()}
    table = []
    for row, *_ in ROWS:
        for mode in MODES:
            v = _variant(row, mode)
            got = overall[v]
            rec = {"row": row, "mode": mode, "variant": v, "n_seeds": len(got),
                   "seeds": ",".join(str(s) for s in sorted(got)),
                   "status": "ok" if len(got) == len(seeds) else ("not run" if not got else "partial")}
            for m in METRICS:
                mean, half = seed_ci(o[m] for o in got.values()) if got else (math.nan, math.nan)
                rec[m], rec[f"{m}_ci"] = mean, half
            table.append(rec)

    def test(kind, label, va, vb):
        common = sorted(set(overall[va]) & set(overall[vb]))
        if not common:
            return None
        # paired_test(x, y) measures y - x: here a - b
        res = paired_test(_per_query(runs_dir, vb, common), _per_query(runs_dir, va, common), k=1)
        return {"kind": kind, "comparison": label, "variant_a": va, "variant_b": vb,
                "seeds": ",".join(str(s) for s in res["seeds"]), "n_pairs": res["n_pairs"],
                "R@1_a": res["R@1_b"], "R@1_b": res["R@1_a"], "diff": res["diff"],
                "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_mcnemar": res["p_mcnemar"],
                "seed_sd": res["seed_sd"],
                "verdict": "n.s." if res["ci_low"] <= 0 <= res["ci_high"] else ("a > b" if res["diff"] > 0 else "a < b")}

    tests = []
    for mode in MODES:
        for a, b in COMPARISONS:
            tests.append(test(f"{mode}: component", f"{a} vs {b}", _variant(a, mode), _variant(b, mode)))
    for row, *_ in ROWS:
        tests.append(test("official vs paper", f"{row}: official vs paper", _variant(row, "official"),
                          _variant(row, "paper")))
    return {"table": pd.DataFrame(table), "tests": pd.DataFrame([t for t in tests if t is not None])}


def to_markdown(result: dict) -> str:
    """The two tables as Markdown, the row means with 95% CIs over seeds and the paired tests."""
    def num(x, fmt=".1f"):
        return "not run" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = ["# Table 7 under the paper's and the official code's recipe (LPR-Synth)", "",
             "Mean over seeds ± the 95% CI half-width; paired tests on per-query R@1 hits with a "
             "two-level bootstrap CI (seeds, then queries within a seed). A CI that spans 0 is n.s.",
             "", "| Row | Mode | Variant | Seeds | R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|"]
    for r in result["table"].to_dict("records"):
        cells = [f"{num(r[m])} ± {num(r[m + '_ci'])}" if r["status"] != "not run" else "not run" for m in METRICS]
        lines.append(f"| {r['row']} | {r['mode']} | `{r['variant']}` | {r['seeds'] or '-'} | " + " | ".join(cells) + " |")
    lines += ["", "| Test | Comparison | Seeds | R@1 a | R@1 b | Diff [95% CI] | McNemar p | Verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for t in result["tests"].to_dict("records"):
        lines.append(f"| {t['kind']} | {t['comparison']} | {t['seeds']} | {num(t['R@1_a'])} | {num(t['R@1_b'])} | "
                     f"{t['diff']:+.1f} [{t['ci_low']:+.1f}, {t['ci_high']:+.1f}] | {num(t['p_mcnemar'], '.3g')} | "
                     f"{t['verdict']} |")
    return "\n".join(lines) + "\n"


def write(runs_dir: str | Path, out_dir: str | Path, seeds=SEEDS) -> list[Path]:
    from sgmn.io import atomic_path, write_table

    result = build(runs_dir, seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "table7_fidelity.csv", out_dir / "paired_tests.csv", out_dir / "fidelity.md"]
    write_table(result["table"], paths[0])
    write_table(result["tests"], paths[1])
    with atomic_path(paths[2]) as tmp:
        Path(tmp).write_text(to_markdown(result), encoding="utf-8")
    return paths
