"""The paper's tables regenerated from the runs, side by side with the published numbers.

For SGMN Tables 1, 5, 6 and 7 (``workflow/paper/table{n}.csv``, :mod:`sgmn.paper`), every
published row that a variant reproduces (its ``paper`` list in ``sgmn/schemas/variants.yaml``)
gets the measured R@1/R@5/R@10 -- mean over seeds with a 95% t-interval half-width -- beside
the published value and ``delta = measured - published``. Published rows that no variant
reproduces are listed too, with NaN measurements, so every table is complete.

Paired tests (frame ``paired_tests``) compare two variants on the same queries and seeds:
Table 7 each row against the previous one (B vs A, C vs B, ...) and E vs A; Table 1 SGMN vs
SGMN w/o TE. Each gives the R@1 difference (B - A, in points), the difference on each seed
alone and their standard deviation, an exact McNemar p-value on the discordant pairs pooled over
seeds and a 95% CI from a two-level bootstrap: training seeds are resampled with replacement,
then each drawn seed's queries, so the interval counts how much a result moves from one training
seed to the next as well as which queries the test set happens to hold. That CI alone decides
each test's verdict (``direction``).

The numbers are measured on whatever dataset the runs used (LPR-Synth by default, not LPR4M):
only directions and orderings are comparable with the paper, not the values.

Usage::

    from sgmn.evaluate.tables import build_tables, write_tables
    tables = build_tables("results/lpr_synth/runs", variants, seeds_of)
    write_tables(tables, "results/lpr_synth/tables")
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sgmn.paper import SWITCH_COLUMNS, load_table

log = logging.getLogger(__name__)

TABLES: tuple[int, ...] = (1, 5, 6, 7)
METRICS: tuple[str, ...] = ("R@1", "R@5", "R@10")
# table -> [(row X, row Y)]: the paired test "X vs Y", difference X - Y.
PAIRED: dict[int, list[tuple[str, str]]] = {
    7: [("B", "A"), ("C", "B"), ("D", "C"), ("E", "D"), ("E", "A")],
    6: [("B", "A"), ("C", "A"), ("D", "A"), ("H", "A")],   # each graph alone, and all, vs none
}
# the method tables: this row against every other published row ("sgmn vs fashionnet", ...)
PAIRED_AGAINST: dict[int, str] = {1: "sgmn", 2: "sgmn"}
# the tables whose row ordering is compared with the paper's (Kendall tau on R@1)
ORDERED: tuple[int, ...] = (1, 2)
PAPER_DATASET: dict[int, str] = {2: "movingfashion"}   # the rest: lpr4m
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
# Table 4: R@1 by subset; SGMN against RICE_box on each subset's queries (the issue's test)
TABLE4_PAIRED: list[tuple[str, str]] = [("sgmn", "rice_box")]
PAIRED_COLUMNS = ["table", "comparison", "subset", "variant_a", "variant_b", "seeds", "n_pairs", "R@1_a", "R@1_b",
                  "diff", "ci_low", "ci_high", "p_mcnemar", "n_a_only", "n_b_only", "per_seed_diff",
                  "seed_sd", "paper_diff", "direction"]
CI_METHOD = "two-level bootstrap: seeds, then queries within seed"
_BOOT_CELLS = 4_000_000  # resampled queries held at once (bounds the bootstrap's memory)
# evaluate.gallery of a metrics.json that predates the key: every evaluation then ranked all images
LEGACY_GALLERY = "all_images"


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def seed_ci(values: Iterable[float]) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% t-interval (NaN with fewer than two
    values; ``(nan, nan)`` with none)."""
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, half


def _hits(table: pd.DataFrame, k: int) -> pd.Series:
    """hit@k per video_id; a recorded miss (miss_reason not null) is a non-hit."""
    hit = table[f"hit@{k}"].fillna(False).astype(bool).to_numpy()
    if "miss_reason" in table.columns:
        hit = hit & table["miss_reason"].isna().to_numpy()
    s = pd.Series(hit, index=table["video_id"].astype(str).to_numpy(), name="hit")
    if s.index.has_duplicates:
        raise ValueError("per-query table has duplicate video_ids")
    return s


def paired_test(a: Mapping[int, pd.DataFrame], b: Mapping[int, pd.DataFrame], k: int = 1, *,
                n_boot: int = N_BOOTSTRAP, rng_seed: int = BOOTSTRAP_SEED) -> dict:
    """Model B against model A on the (seed, video_id) pairs present in both.

    ``a`` and ``b`` map a seed to that run's per-query table (columns ``video_id``,
    ``hit@{k}``, optionally ``miss_reason``). Returns ``seeds``, ``n_pairs``, ``n_queries``,
    ``R@k_a``, ``R@k_b`` (pooled over the pairs, in %), ``diff`` (B - A, in points),
    ``ci_low``/``ci_high`` (the 95% CI of the difference, see below), ``ci_method``,
    ``p_mcnemar`` (exact two-sided binomial test on the discordant pairs pooled over seeds; 1.0
    with none), ``n_a_only``/``n_b_only`` (pairs only A / only B hits), ``per_seed_diff``
    (seed -> B - A in points on that seed's pairs) and ``seed_sd`` (sample standard deviation of
    the per-seed differences; NaN with fewer than two seeds).

    The CI is a two-level percentile bootstrap (``n_boot`` replicates, fixed ``rng_seed``): each
    replicate draws S seeds with replacement from the S seeds with pairs, then for each drawn
    seed resamples that seed's queries with replacement (independently for every draw), and
    takes B - A as the mean over all the replicate's (seed, query) pairs. It therefore widens
    with the seed-to-seed spread of the difference, not only with the query sampling; with a
    single seed it is the ordinary paired bootstrap over that seed's queries. With two or three
    seeds the seed level can only reshuffle those few seeds, so read the CI beside
    ``per_seed_diff``.
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    per_seed: dict[int, float] = {}
    deltas: list[np.ndarray] = []  # per seed with pairs: hit_b - hit_a per common query
    ha_all, hb_all, queries = [], [], set()
    for s in seeds:
        ha, hb = _hits(a[s], k), _hits(b[s], k)
        common = ha.index.intersection(hb.index, sort=False)
        if len(common) == 0:
            continue
        xa, xb = ha.loc[common].to_numpy(bool), hb.loc[common].to_numpy(bool)
        queries.update(common)
        ha_all.append(xa)
        hb_all.append(xb)
        deltas.append(xb.astype(float) - xa.astype(float))
        per_seed[s] = float(100.0 * (xb.mean() - xa.mean()))
    seed_sd = float(np.std(list(per_seed.values()), ddof=1)) if len(per_seed) >= 2 else math.nan
    out = {"seeds": list(per_seed), "n_pairs": 0, "n_queries": 0,
           f"R@{k}_a": math.nan, f"R@{k}_b": math.nan, "diff": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "ci_method": CI_METHOD, "p_mcnemar": math.nan, "n_a_only": 0, "n_b_only": 0,
           "per_seed_diff": per_seed, "seed_sd": seed_sd}
    if not deltas:
        return out
    ha, hb = np.concatenate(ha_all), np.concatenate(hb_all)
    n = ha.size
    a_only, b_only = int((ha & ~hb).sum()), int((~ha & hb).sum())
    n_disc = a_only + b_only
    p = float(stats.binomtest(b_only, n_disc, 0.5).pvalue) if n_disc else 1.0
    boot = _two_level_bootstrap(deltas, n_boot, rng_seed)
    lo, hi = np.percentile(100.0 * boot, [2.5, 97.5])
    out.update({"n_pairs": n, "n_queries": len(queries), f"R@{k}_a": 100.0 * ha.mean(),
                f"R@{k}_b": 100.0 * hb.mean(), "diff": 100.0 * (hb.mean() - ha.mean()),
                "ci_low": float(lo), "ci_high": float(hi), "p_mcnemar": p, "n_a_only": a_only,
                "n_b_only": b_only})
    return out


def _two_level_bootstrap(deltas: list[np.ndarray], n_boot: int, rng_seed: int) -> np.ndarray:
    """``n_boot`` replicates of the mean paired difference (fractions, not points): seeds drawn
    with replacement from ``deltas`` (one array of per-query differences per seed), then each
    drawn seed's queries with replacement. Loops over seeds and chunks of replicates only."""
    rng = np.random.default_rng(rng_seed)
    n_seeds = len(deltas)
    sizes = np.array([d.size for d in deltas], dtype=float)
    chunk = max(1, min(n_boot, _BOOT_CELLS // max(1, n_seeds * int(sizes.max()))))
    boot = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        r = min(n_boot, start + chunk) - start
        drawn = rng.integers(0, n_seeds, size=(r, n_seeds))          # level 1: seeds
        total = np.zeros(r)
        for j, d in enumerate(deltas):                                 # level 2: queries
            rep = np.nonzero(drawn == j)[0]  # one entry per draw of seed j, naming its replicate
            if rep.size == 0:
                continue
            idx = rng.integers(0, d.size, size=(rep.size, d.size))
            total += np.bincount(rep, weights=d[idx].sum(axis=1), minlength=r)
        boot[start:start + r] = total / sizes[drawn].sum(axis=1)
    return boot


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def direction(diff: float, ci_low: float, ci_high: float, paper_diff: float) -> str:
    """Does the measured effect go the paper's way? ``agrees`` / ``opposite`` when the 95% CI
    excludes 0, ``n.s.`` when it does not; ``–`` without a published difference (or a zero one)."""
    if math.isnan(diff) or math.isnan(paper_diff) or paper_diff == 0:
        return "–"
    if ci_low <= 0 <= ci_high:
        return "n.s."
    return "agrees" if (diff > 0) == (paper_diff > 0) else "opposite"


def _seeds(seeds_of: Callable | Mapping, variant: str) -> list[int]:
    if callable(seeds_of):
        return [int(s) for s in seeds_of(variant)]
    return [int(s) for s in seeds_of.get(variant, [])]


def _run_dir(runs_dir: Path, variant: str, seed: int) -> Path:
    return runs_dir / variant / f"seed{seed}"


def _overall(runs_dir: Path, variant: str, seeds: list[int]) -> dict[int, dict]:
    """seed -> metrics.json ``overall`` of the runs that exist (missing ones are logged)."""
    out = {}
    for s in seeds:
        path = _run_dir(runs_dir, variant, s) / "metrics.json"
        if not path.exists():
            log.warning("no run %s: %s seed %d left out", path, variant, s)
            continue
        m = json.loads(path.read_text())
        out[s] = {**m["overall"], **_gallery_of(m)}
    return out


def _gallery_of(metrics: dict) -> dict:
    """A run's gallery unit and mean gallery size per query (NaN when not recorded)."""
    size = metrics.get("mean_gallery_size")
    return {"gallery": metrics.get("gallery_unit", LEGACY_GALLERY),
            "mean_gallery_size": math.nan if size is None else float(size)}


def _gallery_cells(runs: Iterable[dict]) -> dict:
    """The ``gallery`` (units of the runs, comma-joined; None without runs) and
    ``mean_gallery_size`` (mean over the runs) cells of a table row."""
    runs = list(runs)
    sizes = [r["mean_gallery_size"] for r in runs if not math.isnan(r["mean_gallery_size"])]
    return {"gallery": ",".join(sorted({r["gallery"] for r in runs})) or None,
            "mean_gallery_size": float(np.mean(sizes)) if sizes else math.nan}


def _metrics(runs_dir: Path, variant: str, seeds: list[int]) -> dict[int, dict]:
    """seed -> the whole metrics.json of the runs that exist."""
    out = {}
    for s in seeds:
        path = _run_dir(runs_dir, variant, s) / "metrics.json"
        if path.exists():
            out[s] = json.loads(path.read_text())
    return out


def _subset_r1(metrics: dict, subset: str) -> float:
    """R@1 of one subset ("overall" or "scale/small") in a metrics.json (NaN when empty)."""
    if subset == "overall":
        return metrics["overall"]["R@1"]
    name, label = subset.split("/")
    value = metrics.get("subsets", {}).get(name, {}).get(label, {}).get("R@1")
    return math.nan if value is None else value


def _per_query(runs_dir: Path, variant: str, seeds: list[int]) -> dict[int, pd.DataFrame]:
    out = {}
    for s in seeds:
        path = _run_dir(runs_dir, variant, s) / "per_query.parquet"
        if path.exists():
            out[s] = pd.read_parquet(path)
        else:
            log.warning("no per-query table %s: %s seed %d left out of the paired tests", path, variant, s)
    return out


def reproducers(variants: Mapping[str, Mapping], table: int) -> dict[str, list[str]]:
    """row_id -> the variants whose ``paper`` list names (table, row_id), in variants' order."""
    out: dict[str, list[str]] = {}
    for vid, row in variants.items():
        for ref in (row or {}).get("paper") or []:
            if int(ref["table"]) == int(table):
                out.setdefault(str(ref["row"]), []).append(vid)
    return out


def _published(n: int, paper_dir) -> tuple[pd.DataFrame, list[str]]:
    """One row per published row of table n (LPR4M, or MovingFashion for Table 2; overall):
    method, switches, checks, ``{metric}_paper``."""
    df = load_table(n, paper_dir)
    df = df[(df["dataset"] == PAPER_DATASET.get(n, "lpr4m")) & (df["subset"] == "overall")]
    switches = list(SWITCH_COLUMNS.get(("sgmn", n), {}))
    rows = []
    for row_id, g in df.groupby("row_id", sort=False):
        rec = {"row_id": row_id, "method": g["method"].iloc[0]}
        rec.update({c: g[c].iloc[0] for c in switches})
        values = dict(zip(g["metric"], g["value"]))
        rec.update({f"{m}_paper": values.get(m, math.nan) for m in METRICS})
        rec["paper_checks"] = "; ".join(x for x in g["checks"] if x)
        rows.append(rec)
    return pd.DataFrame(rows), switches


def _method_table(n: int, runs_dir: Path, variants: Mapping[str, Mapping], seeds_of, paper_dir,
                  cache: dict, chosen: dict) -> pd.DataFrame:
    """Table n: one row per (published row, reproducing variant), measured beside published.
    Fills ``cache`` (variant -> seed -> overall metrics) and ``chosen`` ((n, row) -> the first
    variant of the row that has runs, the one the paired tests use)."""
    pub, switches = _published(n, paper_dir)
    by_row = reproducers(variants, n)
    unknown = set(by_row) - set(pub["row_id"])
    if unknown:
        log.warning("variants name rows %s that table %d does not publish", sorted(unknown), n)
    rows = []
    for p in pub.to_dict("records"):
        for vid in by_row.get(p["row_id"]) or [None]:
            rec = {"table": n, "row_id": p["row_id"], "method": p["method"], "variant": vid}
            rec.update({c: p[c] for c in switches})
            overall = {}
            if vid is not None:
                if vid not in cache:
                    cache[vid] = _overall(runs_dir, vid, _seeds(seeds_of, vid))
                overall = cache[vid]
                if overall and (n, p["row_id"]) not in chosen:
                    chosen[(n, p["row_id"])] = vid
            rec["n_seeds"] = len(overall)
            rec["seeds"] = ",".join(str(s) for s in sorted(overall))
            rec.update(_gallery_cells(overall.values()))
            for m in METRICS:
                mean, half = seed_ci(o[m] for o in overall.values()) if overall else (math.nan, math.nan)
                rec[m], rec[f"{m}_ci"], rec[f"{m}_paper"] = mean, half, p[f"{m}_paper"]
                rec[f"{m}_delta"] = mean - p[f"{m}_paper"]
            rec["paper_checks"] = p["paper_checks"]
            rows.append(rec)
    cols = (["table", "row_id", "method", "variant"] + switches + ["n_seeds", "seeds", "gallery", "mean_gallery_size"]
            + [f"{m}{s}" for m in METRICS for s in ("", "_ci", "_paper", "_delta")] + ["paper_checks"])
    return pd.DataFrame(rows, columns=cols)


def _pairs(n: int, table: pd.DataFrame) -> list[tuple[str, str]]:
    """Table n's paired comparisons: PAIRED's, or PAIRED_AGAINST's row against every other."""
    if n in PAIRED_AGAINST:
        first = PAIRED_AGAINST[n]
        return [(first, r) for r in dict.fromkeys(table["row_id"]) if r != first]
    return PAIRED.get(n, [])


def _paired_tests(n: int, table: pd.DataFrame, runs_dir: Path, cache: dict, chosen: dict) -> list[dict]:
    """Paired tests on per-query hits for table n's comparisons (rows without runs skipped)."""
    published = table.drop_duplicates("row_id").set_index("row_id")["R@1_paper"]
    tests = []
    for x, y in _pairs(n, table):
        vb, va = chosen.get((n, x)), chosen.get((n, y))
        if va is None or vb is None:
            log.info("table %d: no paired test %s vs %s (a row has no runs)", n, x, y)
            continue
        common = sorted(set(cache[va]) & set(cache[vb]))
        if not common:
            log.info("table %d: no paired test %s vs %s (no common seeds)", n, x, y)
            continue
        res = paired_test(_per_query(runs_dir, va, common), _per_query(runs_dir, vb, common), k=1)
        if res["n_pairs"] == 0:
            continue
        paper_diff = float(published.get(x, math.nan) - published.get(y, math.nan))
        tests.append(_test_record(n, f"{x} vs {y}", "overall", va, vb, res, paper_diff))
    return tests


ORDERING_COLUMNS = ["table", "n_rows", "kendall_tau", "p_value", "rows", "ours", "paper", "disagree"]


def ordering(table: pd.DataFrame) -> dict:
    """Kendall's tau (tau-b, scipy) between our R@1 and the paper's over the rows measured here,
    with both orders written out and the rows whose rank differs."""
    from scipy.stats import kendalltau

    n = int(table["table"].iloc[0]) if len(table) else math.nan
    done = table.dropna(subset=["R@1", "R@1_paper"]).drop_duplicates("row_id")
    ours = done.sort_values("R@1", ascending=False, kind="stable")["row_id"].tolist()
    paper = done.sort_values("R@1_paper", ascending=False, kind="stable")["row_id"].tolist()
    tau, p = (kendalltau(done["R@1"], done["R@1_paper"]) if len(done) >= 2 else (math.nan, math.nan))
    return {"table": n, "n_rows": len(done), "kendall_tau": float(tau), "p_value": float(p),
            "rows": ",".join(table["row_id"].drop_duplicates()), "ours": " > ".join(ours),
            "paper": " > ".join(paper),
            "disagree": ",".join(r for i, r in enumerate(ours) if paper[i] != r)}


def build_tables(runs_dir, variants: Mapping[str, Mapping], seeds_of: Callable | Mapping,
                 paper_dir=None, tables: Iterable[int] = TABLES, with_table4: bool = True
                 ) -> dict[str, pd.DataFrame]:
    """``{"table1", "table5", "table6", "table7", "table4", "paired_tests", "ordering"}`` frames
    (``tables`` picks the method/ablation tables: (2,) for Table 2 on its own dataset's runs,
    with ``with_table4=False``).

    ``runs_dir`` holds ``{variant}/seed{seed}/metrics.json`` (and ``per_query.parquet``);
    ``variants`` maps a variant id to its row of the variants file (its ``paper`` list);
    ``seeds_of`` gives a variant's seeds (callable, or a mapping; a variant missing from the
    mapping has none). A table row is one (published row, variant); columns: table, row_id,
    method, variant, the switch columns, n_seeds, seeds, then per metric ``{m}`` (mean over
    seeds), ``{m}_ci`` (95% half-width), ``{m}_paper`` and ``{m}_delta`` (measured - published),
    and paper_checks (the paper's own consistency notes). ``ordering`` has, for Tables 1 and 2,
    the Kendall tau of our row order against the paper's (``ordering``).
    """
    runs_dir = Path(runs_dir)
    out: dict[str, pd.DataFrame] = {}
    cache: dict[str, dict[int, dict]] = {}
    chosen: dict[tuple[int, str], str] = {}  # (table, row_id) -> the variant with runs used in tests
    tests, orders = [], []
    for n in tables:
        out[f"table{n}"] = _method_table(n, runs_dir, variants, seeds_of, paper_dir, cache, chosen)
        tests += _paired_tests(n, out[f"table{n}"], runs_dir, cache, chosen)
        if n in ORDERED:
            orders.append(ordering(out[f"table{n}"]))
    if with_table4:
        out["table4"], table4_tests = build_table4(runs_dir, variants, seeds_of, paper_dir)
        tests += table4_tests
    out["paired_tests"] = pd.DataFrame(tests, columns=PAIRED_COLUMNS)
    out["ordering"] = pd.DataFrame(orders, columns=ORDERING_COLUMNS)
    return out


def _test_record(n: int, comparison: str, subset: str, va: str, vb: str, res: dict, paper_diff: float) -> dict:
    """One row of paired_tests from a paired_test result (first = vb, second = va)."""
    return {"table": n, "comparison": comparison, "subset": subset, "variant_a": va, "variant_b": vb,
            "seeds": ",".join(str(s) for s in res["seeds"]), "n_pairs": res["n_pairs"],
            "R@1_a": res["R@1_a"], "R@1_b": res["R@1_b"], "diff": res["diff"],
            "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_mcnemar": res["p_mcnemar"],
            "n_a_only": res["n_a_only"], "n_b_only": res["n_b_only"],
            "per_seed_diff": json.dumps({str(s): round(d, 4) for s, d in res["per_seed_diff"].items()}),
            "seed_sd": res["seed_sd"], "paper_diff": paper_diff,
            "direction": direction(res["diff"], res["ci_low"], res["ci_high"], paper_diff)}


TABLE4_COLUMNS = ["table", "row_id", "method", "variant", "subset", "n_seeds", "seeds", "gallery",
                  "mean_gallery_size", "n_queries", "R@1", "R@1_ci", "R@1_paper", "R@1_delta"]


def build_table4(runs_dir, variants: Mapping[str, Mapping], seeds_of: Callable | Mapping,
                 paper_dir=None) -> tuple[pd.DataFrame, list[dict]]:
    """Table 4 (R@1 by product scale, visible duration and product count; RICE_patch, RICE_box,
    SGMN) in long form, one row per (published row, subset), and the paired tests of
    TABLE4_PAIRED on each subset's queries. Subset labels come from the test boxes
    (sgmn.data.subsets, LPR4M's thresholds)."""
    runs_dir = Path(runs_dir)
    pub = load_table(4, paper_dir)
    pub = pub[(pub["dataset"] == "lpr4m") & (pub["metric"] == "R@1")]
    by_row = reproducers(variants, 4)
    rows, chosen, cache = [], {}, {}
    for p in pub.to_dict("records"):
        for vid in by_row.get(p["row_id"]) or [None]:
            runs = {}
            if vid is not None:
                runs = cache.setdefault(vid, _metrics(runs_dir, vid, _seeds(seeds_of, vid)))
                if runs:
                    chosen.setdefault(p["row_id"], vid)
            values = [_subset_r1(m, p["subset"]) for m in runs.values()]
            values = [v for v in values if not math.isnan(v)]
            mean, half = seed_ci(values) if values else (math.nan, math.nan)
            n_q = [(m["overall"] if p["subset"] == "overall" else
                    m.get("subsets", {}).get(p["subset"].split("/")[0], {}).get(p["subset"].split("/")[-1], {})
                    ).get("n") for m in runs.values()]
            rows.append({"table": 4, "row_id": p["row_id"], "method": p["method"], "variant": vid,
                         "subset": p["subset"], "n_seeds": len(values),
                         "seeds": ",".join(str(s) for s in sorted(runs)),
                         **_gallery_cells(_gallery_of(m) for m in runs.values()),
                         "n_queries": n_q[0] if n_q else None, "R@1": mean, "R@1_ci": half,
                         "R@1_paper": p["value"], "R@1_delta": mean - p["value"]})
    table = pd.DataFrame(rows, columns=TABLE4_COLUMNS)
    tests = []
    published = table.drop_duplicates(["row_id", "subset"]).set_index(["row_id", "subset"])["R@1_paper"]
    for x, y in TABLE4_PAIRED:
        vb, va = chosen.get(x), chosen.get(y)
        if va is None or vb is None:
            log.info("table 4: no paired test %s vs %s (a row has no runs)", x, y)
            continue
        common = sorted(set(cache[va]) & set(cache[vb]))
        qa, qb = _per_query(runs_dir, va, common), _per_query(runs_dir, vb, common)
        for subset in table["subset"].drop_duplicates():
            if subset == "overall":
                sa, sb = qa, qb
            else:
                name, label = subset.split("/")
                if not all(name in t.columns for t in (*qa.values(), *qb.values())):
                    continue
                sa = {k: t[t[name] == label] for k, t in qa.items()}
                sb = {k: t[t[name] == label] for k, t in qb.items()}
            res = paired_test(sa, sb, k=1)
            if res["n_pairs"] == 0:
                continue
            paper_diff = float(published.get((x, subset), math.nan) - published.get((y, subset), math.nan))
            tests.append(_test_record(4, f"{x} vs {y}", subset, va, vb, res, paper_diff))
    return table, tests


TABLE3_COLUMNS = ["table", "row_id", "method", "variant", "in_paper", "scale", "device", "device_name",
                  "threads", "num_frames", "image_size", "gallery", "time_ms", "score_ms", "score_share",
                  "params_m", "params_all_m", "time_vs_sgmn", "time_ms_paper", "params_m_paper",
                  "time_vs_sgmn_paper"]


def build_table3(bench_files: Iterable, variants: Mapping[str, Mapping], paper_dir=None) -> pd.DataFrame:
    """Table 3 (inference time per query and parameters) from `sgmn bench --methods all` JSON
    files: one row per (method, bench scale), the published rows first, then every other benched
    method (`in_paper` False: FashionNet, NVAN, SwinB, MGH have no Table 3 cell). A bench case
    belongs to the Table 1 row its variant reproduces (Table 3 lists Table 1's methods), else to
    a row named after its variant. time_ms: encoding one query clip (batch 1, L frames) and
    scoring it against a gallery encoded once, median of repeats; score_ms: the scoring alone
    (median of its own repeats; a pairwise score runs a network per gallery image) and
    score_share its fraction of time_ms; params_m: parameters used at inference (training-only
    heads left out), in millions; time_vs_sgmn: the row's time over SGMN's at the same scale,
    ours and the paper's. Detection and tracking are not timed (the paper's two-stage rows
    include them)."""
    pub = load_table(3, paper_dir)
    pub = pub[pub["dataset"] == "lpr4m"]
    paper = {(r, m): v for r, m, v in zip(pub["row_id"], pub["metric"], pub["value"])}
    row_of = {v: row for row, vs in reproducers(variants, 1).items() for v in vs}
    cases = []
    for path in bench_files:
        data = json.loads(Path(path).read_text())
        for variant, c in data["cases"].items():
            cases.append({"row_id": row_of.get(variant, variant), "variant": variant, **c})
    published = list(dict.fromkeys(pub["row_id"]))
    methods = dict(zip(pub["row_id"], pub["method"]))
    extra = [r for r in dict.fromkeys(c["row_id"] for c in cases) if r not in published]
    rows = []
    scales = sorted({c["scale"] for c in cases}) or [None]
    for row_id in published + extra:
        for scale in scales:
            mine = [c for c in cases if c["row_id"] == row_id and c["scale"] == scale]
            sgmn = [c for c in cases if c["row_id"] == "sgmn" and c["scale"] == scale]
            c = mine[0] if mine else {}
            rows.append(_table3_row(row_id, methods.get(row_id, c.get("method")), row_id in published,
                                    scale, c, sgmn[0] if sgmn else None, paper))
    return pd.DataFrame(rows, columns=TABLE3_COLUMNS)


def _table3_row(row_id, method, in_paper, scale, c, sgmn, paper) -> dict:
    time_ms = c.get("per_query_ms", math.nan)
    score_ms = c.get("score_ms")
    score_ms = math.nan if score_ms is None else score_ms
    rec = {"table": 3, "row_id": row_id, "method": method, "variant": c.get("variant"),
           "in_paper": in_paper, "scale": scale, "device": c.get("device"),
           "device_name": c.get("device_name"), "threads": c.get("threads"),
           "num_frames": c.get("num_frames"), "image_size": c.get("image_size"),
           "gallery": c.get("gallery"), "time_ms": time_ms, "score_ms": score_ms,
           "score_share": score_ms / time_ms if time_ms and not math.isnan(score_ms) else math.nan,
           "params_m": c["parameters"]["inference"] / 1e6 if c else math.nan,
           "params_all_m": c["parameters"]["all"] / 1e6 if c else math.nan,
           "time_ms_paper": paper.get((row_id, "time_ms"), math.nan),
           "params_m_paper": paper.get((row_id, "params_m"), math.nan)}
    rec["time_vs_sgmn"] = time_ms / sgmn["per_query_ms"] if c and sgmn else math.nan
    rec["time_vs_sgmn_paper"] = rec["time_ms_paper"] / paper.get(("sgmn", "time_ms"), math.nan)
    return rec


def table3_markdown(df: pd.DataFrame) -> list[str]:
    shown = pd.DataFrame({
        "row": df["row_id"], "variant": df["variant"].fillna("–"), "scale": df["scale"].fillna("–"),
        "ms / query": df["time_ms"].map(lambda x: _num(x, ".2f")),
        "of it scoring": df["score_share"].map(lambda x: _num(100 * x, ".0f") + "%" if x == x else "–"),
        "x SGMN": df["time_vs_sgmn"].map(lambda x: _num(x, ".2f")),
        "params (M)": df["params_m"].map(lambda x: _num(x, ".2f")),
        "paper ms": df["time_ms_paper"].map(_num), "paper x SGMN": df["time_vs_sgmn_paper"].map(lambda x: _num(x, ".2f")),
        "paper params (M)": df["params_m_paper"].map(_num)})
    devices = ", ".join(sorted({f"{d} ({n}, {int(t)} threads)" for d, n, t in
                                zip(df["device"], df["device_name"], df["threads"]) if isinstance(d, str)}))
    return ["## Table 3", "", "Inference per query: one clip encoded (batch 1) and scored against a "
            "gallery encoded once; median of repeats, on " + (devices or "–") + ". Parameters: those "
            "used at inference. Detection and tracking are not timed (the paper's AsymNet and SEAM "
            "times include them); compare ratios, not milliseconds (the paper's: a Tesla T4). "
            "Scoring: the part of the time spent scoring the clip against the gallery (a pairwise "
            "network per image for AsymNet and SEAM, one matrix product otherwise). Rows without a "
            "paper value are methods the paper's Table 3 does not list.", "",
            shown.to_markdown(index=False, disable_numparse=True), ""]


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _num(x, fmt: str = ".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pm(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def _signed(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:+.1f}"


def _per_seed(per_seed) -> str:
    """``"+1.2 / -0.3 / +0.8"`` from a seed -> diff mapping (or its JSON, as in the CSV)."""
    if isinstance(per_seed, str):
        per_seed = json.loads(per_seed)
    if not isinstance(per_seed, Mapping) or not per_seed:
        return "–"
    return " / ".join(_signed(float(per_seed[s])) for s in sorted(per_seed, key=int))


def header(dataset: str = "LPR-Synth", synthetic: bool = True) -> str:
    if synthetic:
        return (f"These are {dataset} numbers, not LPR4M: only the directions and orderings of the "
                f"rows are comparable with the paper, not the values (the deltas are shown for "
                f"reference, not as a test of the published numbers).")
    return f"Measured on {dataset}; the paper's numbers are on LPR4M."


def gallery_line(tables: Mapping[str, pd.DataFrame]) -> str:
    """One line naming the gallery unit (evaluate.gallery) of the runs shown and the mean
    gallery size per query, from the tables' ``gallery`` / ``mean_gallery_size`` columns."""
    # Table 3's `gallery` is the bench's image count, not a unit: it has no mean_gallery_size
    frames = [df for key, df in tables.items()
              if key.startswith("table") and {"gallery", "mean_gallery_size"} <= set(df.columns)]
    units = sorted({u for df in frames for cell in df["gallery"].dropna() for u in str(cell).split(",")})
    sizes = [x for df in frames for x in df["mean_gallery_size"].dropna()]
    if not units:
        return "Gallery unit (evaluate.gallery): – (no runs)."
    which = (f"{units[0]} in every run shown" if len(units) == 1 else
             f"mixed across runs ({', '.join(units)}; the `gallery` column of each table's CSV names each row's)")
    size = "not recorded" if not sizes else (
        f"{min(sizes):.1f}" if round(min(sizes), 1) == round(max(sizes), 1) else f"{min(sizes):.1f}-{max(sizes):.1f}")
    return (f"Gallery unit (evaluate.gallery, docs/data_formats.md): {which}; mean gallery size per "
            f"query: {size}.")


def table4_markdown(df: pd.DataFrame) -> list[str]:
    """Table 4 as rows x subsets: measured mean ± CI over seeds, the published value below."""
    if df.empty:
        return ["## Table 4", "", "No published rows.", ""]
    order = list(dict.fromkeys(df["subset"]))
    cells = {(r["row_id"], r["subset"]): f"{_pm(r['R@1'], r['R@1_ci'])} ({_num(r['R@1_paper'])})"
             for r in df.to_dict("records")}
    shown = pd.DataFrame([{"row": row, "variant": g["variant"].fillna("–").iloc[0],
                           "n_seeds": str(g["n_seeds"].max()),
                           **{sub: cells.get((row, sub), "–") for sub in order}}
                          for row, g in df.groupby("row_id", sort=False)])
    sizes = df.dropna(subset=["n_queries"]).drop_duplicates("subset").set_index("subset")["n_queries"]
    queries = ", ".join(f"{sub} {int(sizes[sub])}" for sub in order if sub in sizes)
    return ["## Table 4", "", "R@1 by subset: measured mean ± 95% CI over seeds (published value "
            f"in brackets). Queries per subset: {queries or '–'}.", "",
            shown.to_markdown(index=False, disable_numparse=True), ""]


def ordering_markdown(df: pd.DataFrame | None) -> list[str]:
    """The method tables' row order (by R@1) beside the paper's, with Kendall's tau."""
    if df is None or df.empty:
        return []
    shown = pd.DataFrame({
        "table": df["table"].astype(str), "rows measured": df["n_rows"].astype(str),
        "Kendall tau": df["kendall_tau"].map(lambda t: _num(t, ".2f")),
        "p": df["p_value"].map(lambda p: _num(p, ".3g")), "ours (R@1, best first)": df["ours"],
        "paper": df["paper"], "rank differs": df["disagree"].replace("", "–")})
    return ["## Row ordering against the paper", "",
            "Kendall's tau-b between our R@1 and the published R@1 over the rows measured here "
            "(1: the same order; p: scipy's test of tau = 0).", "",
            shown.to_markdown(index=False, disable_numparse=True), ""]


def to_markdown(tables: Mapping[str, pd.DataFrame], dataset: str = "LPR-Synth", synthetic: bool = True) -> str:
    lines = ["# SGMN tables regenerated from the runs", "", header(dataset, synthetic), "", gallery_line(tables), "",
             "Measured: mean ± 95% t-interval half-width over seeds (no ± with one seed); "
             "paper: the published value; delta: measured - paper; – : none.", ""]
    for key in sorted((k for k in tables if k.startswith("table")), key=lambda k: int(k[5:])):
        df = tables[key]
        n = int(key[5:])
        if n == 4:
            lines += table4_markdown(df)
            continue
        if n == 3:
            lines += table3_markdown(df)
            continue
        switches = list(SWITCH_COLUMNS.get(("sgmn", n), {}))
        shown = pd.DataFrame({"row": df["row_id"], "variant": df["variant"].fillna("–")})
        for c in switches:
            shown[c] = df[c].map(lambda v: ("✓" if v else "") if isinstance(v, (bool, np.bool_)) else f"{v:g}")
        shown["n_seeds"] = df["n_seeds"].astype(str)
        for m in METRICS:
            if df[f"{m}_paper"].isna().all() and df[m].isna().all():
                continue
            shown[m] = [_pm(a, b) for a, b in zip(df[m], df[f"{m}_ci"])]
            shown[f"{m} paper"] = df[f"{m}_paper"].map(_num)
            shown[f"{m} delta"] = df[f"{m}_delta"].map(_signed)
        lines += [f"## Table {n}", "", shown.to_markdown(index=False, disable_numparse=True), ""]
    lines += ordering_markdown(tables.get("ordering"))
    tests = tables.get("paired_tests")
    lines += ["## Paired tests (R@1)", "",
              "diff = R@1 of the first minus the second, in points, on the (seed, query) pairs of "
              f"both; CI: 95% two-level paired bootstrap ({N_BOOTSTRAP} resamples: the seeds drawn "
              "with replacement, then each drawn seed's queries), so it counts the seed-to-seed "
              "training noise as well as the query sampling; per-seed: diff on each seed alone, in "
              "the order of seeds; p: exact McNemar test on the discordant pairs pooled over seeds "
              "(query noise only, for reference); paper: the published difference; direction: "
              "agrees / opposite when the CI excludes 0, n.s. when it does not.", ""]
    if tests is None or tests.empty:
        lines += ["No paired tests: no two compared rows have runs with common seeds.", ""]
    else:
        shown = pd.DataFrame({
            "table": tests["table"].astype(str), "comparison": tests["comparison"],
            "subset": tests["subset"],
            "variants": tests["variant_b"] + " vs " + tests["variant_a"], "seeds": tests["seeds"],
            "pairs": tests["n_pairs"].astype(str),
            "R@1 first": tests["R@1_b"].map(_num), "R@1 second": tests["R@1_a"].map(_num),
            "diff": tests["diff"].map(_signed),
            "95% CI": [f"[{lo:+.1f}, {hi:+.1f}]" for lo, hi in zip(tests["ci_low"], tests["ci_high"])],
            "per-seed": tests["per_seed_diff"].map(_per_seed),
            "p (McNemar)": tests["p_mcnemar"].map(lambda p: _num(p, ".3g")),
            "paper": tests["paper_diff"].map(_signed), "direction": tests["direction"],
        })
        lines += [shown.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir, *, dataset: str = "LPR-Synth",
                 synthetic: bool = True, provenance: dict | None = None) -> list[Path]:
    """``table{n}.csv``, ``paired_tests.csv``, ``tables.md`` (and ``provenance.json`` when
    given) in ``out_dir``, each written atomically. Returns the paths written."""
    from sgmn.io import atomic_path, write_json, write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, df in tables.items():
        path = out_dir / f"{key}.csv"
        write_table(df, path)
        written.append(path)
    md = out_dir / "tables.md"
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(tables, dataset, synthetic), encoding="utf-8")
    written.append(md)
    if provenance is not None:
        write_json(provenance, out_dir / "provenance.json")
        written.append(out_dir / "provenance.json")
    return written
