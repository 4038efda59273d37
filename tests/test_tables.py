"""sgmn.evaluate.tables: seed CIs, paired tests, the regenerated paper tables, `sgmn tables`."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sgmn.evaluate.tables import (
    PAIRED_COLUMNS,
    build_table3,
    build_tables,
    direction,
    paired_test,
    seed_ci,
    table3_markdown,
    to_markdown,
    write_tables,
)

N_Q = 10
VIDS = [f"v{i}" for i in range(N_Q)]


def per_query(hits, misses=()):
    """A per-query table of N_Q queries; `hits` the indices with a hit at 1 (and 5, 10)."""
    hit = np.zeros(N_Q, bool)
    hit[list(hits)] = True
    reason = [("unreadable video" if i in misses else None) for i in range(N_Q)]
    return pd.DataFrame({
        "video_id": VIDS, "rank": np.where(hit, 1.0, 20.0), "hit@1": hit, "hit@5": hit, "hit@10": hit,
        "miss_reason": pd.Series(reason, dtype=object), "scale": "small", "duration": "short",
        "count": "few", "category": "hat",
    })


# ---------------------------------------------------------------------------------------------
# seed_ci


def test_seed_ci_matches_a_hand_computed_t_interval():
    mean, half = seed_ci([1.0, 2.0, 3.0, 4.0])
    # s = sqrt(5/3), t(0.975, df=3) = 3.182446305284263 (tables), half = t * s / sqrt(4)
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-9)
    mean, half = seed_ci([30.0, 32.0])
    # s = sqrt(2), t(0.975, df=1) = 12.706204736174707, half = t * s / sqrt(2) = t
    assert (mean, half) == (pytest.approx(31.0), pytest.approx(12.706204736174707))


def test_seed_ci_one_seed_has_no_interval():
    mean, half = seed_ci([41.5])
    assert mean == 41.5 and math.isnan(half)
    assert all(math.isnan(x) for x in seed_ci([]))


# ---------------------------------------------------------------------------------------------
# paired_test

# seed 0: A hits q0-q4, B hits q0-q2 and q5-q8 -> A only: q3, q4 (2); B only: q5-q8 (4)
# seed 1: A hits q0-q5, B hits q0-q6           -> B only: q6 (1)
A = {0: per_query(range(0, 5)), 1: per_query(range(0, 6))}
B = {0: per_query([0, 1, 2, 5, 6, 7, 8]), 1: per_query(range(0, 7))}


def test_paired_test_handmade_case():
    res = paired_test(A, B, k=1)
    assert res["seeds"] == [0, 1] and res["n_pairs"] == 20 and res["n_queries"] == 10
    assert res["R@1_a"] == pytest.approx(55.0) and res["R@1_b"] == pytest.approx(70.0)
    assert res["diff"] == pytest.approx(15.0)
    assert (res["n_a_only"], res["n_b_only"]) == (2, 5)
    # exact McNemar: 5 of 7 discordant pairs favour B; two-sided 2 * P(X >= 5 | 7, 1/2) = 58/128
    assert res["p_mcnemar"] == pytest.approx(58 / 128)
    assert res["p_mcnemar"] == pytest.approx(stats.binomtest(5, 7, 0.5).pvalue)
    assert res["per_seed_diff"] == {0: pytest.approx(20.0), 1: pytest.approx(10.0)}
    # sample SD of {20, 10}: sqrt((5^2 + 5^2) / 1)
    assert res["seed_sd"] == pytest.approx(math.sqrt(50.0))
    assert res["ci_method"].startswith("two-level bootstrap")
    assert res["ci_low"] <= res["diff"] <= res["ci_high"]
    assert res["ci_low"] < res["ci_high"]
    again = paired_test(A, B, k=1)
    assert (again["ci_low"], again["ci_high"]) == (res["ci_low"], res["ci_high"])  # fixed RNG


def test_paired_test_is_antisymmetric_and_pairs_only_common_rows():
    rev = paired_test(B, A)
    assert rev["diff"] == pytest.approx(-15.0)
    assert rev["p_mcnemar"] == pytest.approx(58 / 128)
    # a seed only A has and queries only B has are left out
    a = {**A, 2: per_query(range(10))}
    b = {0: B[0].iloc[:8], 1: B[1]}
    res = paired_test(a, b)
    assert res["seeds"] == [0, 1] and res["n_pairs"] == 18
    # seed 0 on q0-q7: A 5/8, B 6/8; seed 1: A 6/10, B 7/10
    assert res["R@1_a"] == pytest.approx(100 * 11 / 18) and res["R@1_b"] == pytest.approx(100 * 13 / 18)


def test_paired_test_counts_a_recorded_miss_as_a_non_hit():
    b = {0: per_query(range(0, 5), misses=[0, 1])}  # hit@1 set, but both queries missed
    res = paired_test({0: per_query(range(0, 5))}, b)
    assert res["R@1_b"] == pytest.approx(30.0) and res["diff"] == pytest.approx(-20.0)
    assert (res["n_a_only"], res["n_b_only"]) == (2, 0)


def test_paired_test_without_discordant_pairs():
    res = paired_test({0: A[0]}, {0: A[0]})
    assert res["diff"] == 0 and res["p_mcnemar"] == 1.0 and res["ci_low"] == res["ci_high"] == 0
    assert res["per_seed_diff"] == {0: 0.0} and math.isnan(res["seed_sd"])  # one seed: no SD


def test_paired_test_without_common_pairs():
    res = paired_test({0: A[0]}, {1: B[1]})
    assert res["seeds"] == [] and res["n_pairs"] == 0 and res["per_seed_diff"] == {}
    assert math.isnan(res["diff"]) and math.isnan(res["ci_low"]) and math.isnan(res["seed_sd"])


# ---------------------------------------------------------------------------------------------
# build_tables

VARIANTS = {
    "gra_only": {"paper": [{"table": 7, "row": "A"}]},
    "t7_te": {"paper": [{"table": 7, "row": "B"}]},
    "sgmn": {"paper": [{"table": 7, "row": "E"}, {"table": 6, "row": "H"},
                       {"table": 5, "row": "beta_0.7_0.3"}, {"table": 1, "row": "sgmn"}]},
    "sgmn_wo_te": {"paper": [{"table": 1, "row": "sgmn_wo_te"}]},
    "clip_zeroshot": {},  # no published row
}
SEEDS = {"gra_only": [0, 1], "t7_te": [0, 1], "sgmn": [0, 1], "sgmn_wo_te": [0], "clip_zeroshot": [0]}
HITS = {  # variant -> seed -> per-query table (R@1 = 10 x the number of hits)
    "gra_only": A,
    "t7_te": B,
    "sgmn": {0: per_query(range(0, 8)), 1: per_query(range(0, 9))},
    "sgmn_wo_te": {0: per_query(range(0, 6))},
    "clip_zeroshot": {0: per_query([0])},
}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for variant, by_seed in HITS.items():
        for seed, table in by_seed.items():
            d = root / variant / f"seed{seed}"
            d.mkdir(parents=True)
            r1 = 100.0 * table["hit@1"].mean()
            overall = {"R@1": r1, "R@5": min(100.0, r1 + 20 + seed), "R@10": 100.0, "R@mean": 0.0, "n": N_Q}
            (d / "metrics.json").write_text(json.dumps({"overall": overall}))
            table.to_parquet(d / "per_query.parquet", index=False)
    return root


def _row(df, row_id):
    rows = df[df["row_id"] == row_id]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_build_tables_measured_published_and_deltas(runs):
    tables = build_tables(runs, VARIANTS, SEEDS)
    assert set(tables) == {"table1", "table4", "table5", "table6", "table7", "paired_tests", "ordering"}
    t7 = tables["table7"]
    assert list(t7["row_id"]) == ["A", "B", "C", "D", "E"]
    a = _row(t7, "A")
    assert a["variant"] == "gra_only" and a["n_seeds"] == 2 and a["seeds"] == "0,1"
    assert not a["te"] and not a["smf"]
    assert a["R@1"] == pytest.approx(55.0)  # seeds: 50, 60
    assert a["R@1_ci"] == pytest.approx(seed_ci([50.0, 60.0])[1])
    assert a["R@1_paper"] == pytest.approx(32.8) and a["R@1_delta"] == pytest.approx(55.0 - 32.8)
    assert a["R@5"] == pytest.approx(75.5) and a["R@5_paper"] == pytest.approx(58.7)
    assert a["R@5_delta"] == pytest.approx(75.5 - 58.7)
    assert a["R@10_delta"] == pytest.approx(100.0 - 72.7)
    e = _row(t7, "E")
    assert e["variant"] == "sgmn" and e["R@1"] == pytest.approx(85.0) and e["te"] and e["smf"]
    # a published row no variant reproduces: listed, measurements NaN
    c = _row(t7, "C")
    assert pd.isna(c["variant"]) and c["n_seeds"] == 0
    assert math.isnan(c["R@1"]) and math.isnan(c["R@1_delta"]) and c["R@1_paper"] == pytest.approx(38.2)

    t5 = tables["table5"]
    assert len(t5) == 7
    b = _row(t5, "beta_0.7_0.3")
    assert b["variant"] == "sgmn" and b["beta1"] == pytest.approx(0.7)
    assert b["R@1_paper"] == pytest.approx(43.4) and b["R@1_delta"] == pytest.approx(85.0 - 43.4)
    assert math.isnan(b["R@5_paper"]) and math.isnan(b["R@5_delta"]) and b["R@5"] == pytest.approx(100.0)
    assert pd.isna(_row(t5, "beta_0_1")["variant"])

    t6 = tables["table6"]
    assert _row(t6, "H")["variant"] == "sgmn" and _row(t6, "H")["g_cross"]
    assert _row(t6, "A")["n_seeds"] == 0

    t1 = tables["table1"]
    assert len(t1) == 9  # every published method of Table 1
    wo = _row(t1, "sgmn_wo_te")
    assert wo["n_seeds"] == 1 and wo["R@1"] == pytest.approx(60.0) and math.isnan(wo["R@1_ci"])
    assert wo["R@1_delta"] == pytest.approx(60.0 - 38.7)
    assert pd.isna(_row(t1, "rice")["variant"]) and math.isnan(_row(t1, "rice")["R@1"])
    # a variant without a published row appears nowhere
    assert not any((t["variant"] == "clip_zeroshot").any() for k, t in tables.items()
                   if k not in ("paired_tests", "ordering"))


def test_build_tables_paired_tests(runs):
    tests = build_tables(runs, VARIANTS, SEEDS)["paired_tests"].set_index("comparison")
    # Table 7: B vs A and E vs A (C and D have no variant, so C vs B, D vs C, E vs D are absent)
    assert sorted(tests.index) == ["B vs A", "E vs A", "sgmn vs sgmn_wo_te"]
    ba = tests.loc["B vs A"]
    assert (ba["table"], ba["variant_a"], ba["variant_b"], ba["seeds"]) == (7, "gra_only", "t7_te", "0,1")
    assert ba["n_pairs"] == 20 and ba["diff"] == pytest.approx(15.0)
    assert ba["p_mcnemar"] == pytest.approx(58 / 128)
    assert ba["ci_low"] <= 15.0 <= ba["ci_high"]
    assert json.loads(ba["per_seed_diff"]) == {"0": 20.0, "1": 10.0}
    assert ba["seed_sd"] == pytest.approx(math.sqrt(50.0))
    assert ba["paper_diff"] == pytest.approx(37.3 - 32.8)  # Table 7: B 37.3, A 32.8
    # Not significant, by hand: in the two-level bootstrap a replicate draws 2 seeds out of {0, 1}
    # (4 equally likely orders), then 10 queries of each. Per query, hit_b - hit_a is, on seed 0,
    # -1 (q3, q4), +1 (q5-q8) or 0 (the 4 others), and on seed 1 +1 (q6) or 0. Exact enumeration
    # of the 20 draws gives P(replicate diff < 0) = 0.0655 (seed 1 drawn twice alone puts
    # 0.25 * 0.9**20 = 0.030 at exactly 0), so the 2.5% point is below 0 and the CI holds 0.
    assert ba["ci_low"] < 0 < ba["ci_high"]
    assert ba["direction"] == "n.s."
    ea = tests.loc["E vs A"]
    assert ea["R@1_a"] == pytest.approx(55.0) and ea["R@1_b"] == pytest.approx(85.0)
    # E - A per query: +1 on 3 of 10 queries of each seed, never -1; a replicate's diff is 0 only
    # if none of its 20 draws hits one of those, P = 0.7**20 = 8e-4 << 2.5%, so the CI excludes 0
    assert ea["ci_low"] > 0 and ea["direction"] == "agrees"
    # Table 1: only the seeds both have (sgmn_wo_te has seed 0 only)
    t1 = tests.loc["sgmn vs sgmn_wo_te"]
    assert (t1["table"], t1["variant_a"], t1["variant_b"], t1["seeds"]) == (1, "sgmn_wo_te", "sgmn", "0")
    assert t1["n_pairs"] == 10 and t1["diff"] == pytest.approx(20.0)
    assert t1["p_mcnemar"] == pytest.approx(stats.binomtest(2, 2, 0.5).pvalue)


# Table 1 with more rows: sgmn against every row with runs, and the ordering against the paper.
# Paper R@1 (workflow/paper/table1.csv): fashionnet 13.4 < asymnet 22.0 < rice 33.0 < sgmn 43.4.
T1_VARIANTS = {"fashionnet": {"paper": [{"table": 1, "row": "fashionnet"}]},
               "asymnet": {"paper": [{"table": 1, "row": "asymnet"}]},
               "rice_box": {"paper": [{"table": 1, "row": "rice"}]},
               "sgmn": {"paper": [{"table": 1, "row": "sgmn"}]}}
T1_HITS = {"fashionnet": range(0, 3), "asymnet": range(0, 2), "rice_box": range(0, 5), "sgmn": range(0, 8)}


def _write_runs(root, hits_by_variant, seeds=(0,)):
    for variant, hits in hits_by_variant.items():
        for seed in seeds:
            d = root / variant / f"seed{seed}"
            d.mkdir(parents=True)
            table = per_query(hits)
            r1 = 100.0 * table["hit@1"].mean()
            (d / "metrics.json").write_text(json.dumps({"overall": {"R@1": r1, "R@5": r1, "R@10": r1, "n": N_Q}}))
            table.to_parquet(d / "per_query.parquet", index=False)
    return root


def test_table1_tests_sgmn_against_every_row_and_orders_the_rows(tmp_path):
    runs = _write_runs(tmp_path / "runs", T1_HITS, seeds=(0, 1))
    tables = build_tables(runs, T1_VARIANTS, lambda v: [0, 1], tables=(1,), with_table4=False)
    assert set(tables) == {"table1", "paired_tests", "ordering"}
    tests = tables["paired_tests"].set_index("comparison")
    assert sorted(tests.index) == ["sgmn vs asymnet", "sgmn vs fashionnet", "sgmn vs rice"]
    assert tests.loc["sgmn vs rice", "diff"] == pytest.approx(30.0)   # 80% - 50% on both seeds
    assert tests.loc["sgmn vs asymnet", "paper_diff"] == pytest.approx(43.4 - 22.0)
    order = tables["ordering"].iloc[0]
    # ours: sgmn 80 > rice 50 > fashionnet 30 > asymnet 20; the paper swaps fashionnet and asymnet.
    # Kendall tau over 4 rows with one discordant pair of 6: (5 - 1) / 6
    assert order["table"] == 1 and order["n_rows"] == 4
    assert order["kendall_tau"] == pytest.approx(4 / 6)
    assert order["ours"] == "sgmn > rice > fashionnet > asymnet"
    assert order["paper"] == "sgmn > rice > asymnet > fashionnet"
    assert order["disagree"] == "fashionnet,asymnet"
    assert "## Row ordering against the paper" in to_markdown(tables)


def test_table2_reads_the_movingfashion_rows(tmp_path):
    variants = {"nvan": {"paper": [{"table": 2, "row": "nvan"}]},
                "sgmn_wo_finetune": {"paper": [{"table": 2, "row": "sgmn_wo_finetune"}]},
                "sgmn": {"paper": [{"table": 2, "row": "sgmn"}]}}
    runs = _write_runs(tmp_path / "runs", {"nvan": range(0, 4), "sgmn_wo_finetune": range(0, 2), "sgmn": range(0, 9)})
    tables = build_tables(runs, variants, lambda v: [0], tables=(2,), with_table4=False)
    t2 = tables["table2"]
    # every MovingFashion row of workflow/paper/table2.csv, none of Table 1's LPR4M rows
    assert list(t2["row_id"]) == ["nvan", "mgh", "asymnet", "seam", "rice", "sgmn_wo_finetune", "sgmn"]
    assert _row(t2, "sgmn")["R@1_paper"] == pytest.approx(77.8) and _row(t2, "sgmn")["R@1"] == pytest.approx(90.0)
    assert _row(t2, "nvan")["R@1_paper"] == pytest.approx(38.0)
    assert sorted(tables["paired_tests"]["comparison"]) == ["sgmn vs nvan", "sgmn vs sgmn_wo_finetune"]
    order = tables["ordering"].iloc[0]
    # ours sgmn 90 > nvan 40 > wo_finetune 20; paper sgmn 77.8 > wo_finetune 43.1 > nvan 38.0: tau 1/3
    assert order["kendall_tau"] == pytest.approx(1 / 3) and order["disagree"] == "nvan,sgmn_wo_finetune"


@pytest.mark.parametrize("diff, lo, hi, paper, expected", [
    (3.0, 1.0, 5.0, 2.0, "agrees"), (-3.0, -5.0, -1.0, 2.0, "opposite"), (1.0, -1.0, 3.0, 2.0, "n.s."),
    (-2.0, -3.0, -1.0, -0.5, "agrees"), (1.0, 0.5, 2.0, math.nan, "–"), (1.0, 0.5, 2.0, 0.0, "–")])
def test_direction_against_the_paper(diff, lo, hi, paper, expected):
    assert direction(diff, lo, hi, paper) == expected


def test_build_tables_with_missing_runs_and_callable_seeds(tmp_path, runs):
    # seeds given by a callable; sgmn_wo_te asked for a seed that was never run
    tables = build_tables(runs, VARIANTS, lambda v: [0, 1])
    wo = _row(tables["table1"], "sgmn_wo_te")
    assert wo["n_seeds"] == 1 and wo["seeds"] == "0"
    # no runs at all: complete tables, all measurements NaN, no paired tests
    empty = build_tables(tmp_path / "nothing", VARIANTS, SEEDS)
    assert empty["table7"]["R@1"].isna().all() and len(empty["table7"]) == 5
    assert empty["paired_tests"].empty


def test_write_tables_and_cli(tmp_path, runs):
    from sgmn.cli import main

    out = tmp_path / "tables"
    write_tables(build_tables(runs, VARIANTS, SEEDS), out)
    assert {p.name for p in out.iterdir()} == {"table1.csv", "table4.csv", "table5.csv", "table6.csv", "table7.csv",
                                               "paired_tests.csv", "ordering.csv", "tables.md"}
    md = (out / "tables.md").read_text()
    assert "LPR-Synth numbers, not LPR4M" in md and "orderings" in md
    assert "## Table 7" in md and "## Paired tests" in md and "55.0 ± " in md and "B vs A" in md
    assert "two-level paired bootstrap" in md and "per-seed" in md
    assert "| +20.0 / +10.0 |" in md  # B vs A on seeds 0 and 1
    tests_csv = pd.read_csv(out / "paired_tests.csv")
    assert list(tests_csv.columns) == PAIRED_COLUMNS
    assert tests_csv.set_index("comparison").loc["B vs A", "seed_sd"] == pytest.approx(math.sqrt(50.0))
    t7 = pd.read_csv(out / "table7.csv")
    assert t7.loc[t7["row_id"] == "A", "R@1_delta"].item() == pytest.approx(55.0 - 32.8)

    config = tmp_path / "config.yaml"
    config.write_text("dataset: {name: fake}\nseeds: [0, 1]\nseeds_by_variant: {sgmn_wo_te: [0]}\n"
                      "variants: [gra_only, t7_te, sgmn, sgmn_wo_te]\n")
    cli_out = tmp_path / "cli"
    assert main(["tables", "--runs", str(runs), "--config", str(config), "--out", str(cli_out)]) == 0
    tests = pd.read_csv(cli_out / "paired_tests.csv")
    assert sorted(tests["comparison"]) == ["B vs A", "E vs A", "sgmn vs sgmn_wo_te"]
    assert json.loads((cli_out / "provenance.json").read_text())["seeds"]["sgmn_wo_te"] == [0]
    # the same config as JSON (as the DAG passes it)
    as_json = json.dumps({"dataset": {"name": "fake"}, "seeds": [0, 1], "variants": ["gra_only", "t7_te"]})
    assert main(["tables", "--runs", str(runs), "--config-json", as_json, "--out", str(tmp_path / "j")]) == 0
    assert sorted(pd.read_csv(tmp_path / "j" / "paired_tests.csv")["comparison"]) == ["B vs A"]
    # an unknown variant is a config error (exit 2)
    bad = json.dumps({"seeds": [0], "variants": ["no_such_variant"]})
    assert main(["tables", "--runs", str(runs), "--config-json", bad, "--out", str(tmp_path / "bad")]) == 2


def test_table4_by_subset_with_paired_tests_on_each_subsets_queries(tmp_path):
    """Queries 0-4 are small-scale, 5-9 large; SGMN hits 0-7, RICE_box 0-2 and 5-6 (both seeds)."""
    scale = np.array(["small"] * 5 + ["large"] * 5)
    variants = {"sgmn": {"paper": [{"table": 4, "row": "sgmn"}]},
                "rice_box": {"paper": [{"table": 4, "row": "rice_box"}]}}
    hits = {"sgmn": range(0, 8), "rice_box": [0, 1, 2, 5, 6]}
    for variant, idx in hits.items():
        for seed in (0, 1):
            d = tmp_path / variant / f"seed{seed}"
            d.mkdir(parents=True)
            table = per_query(idx).assign(scale=scale)
            table.to_parquet(d / "per_query.parquet", index=False)
            hit = table["hit@1"].to_numpy()
            block = lambda m: {"R@1": 100.0 * hit[m].mean(), "n": int(m.sum())}  # noqa: E731
            metrics = {"overall": {"R@1": 100.0 * hit.mean(), "R@5": 0.0, "R@10": 0.0, "n": N_Q},
                       "subsets": {"scale": {"small": block(scale == "small"), "large": block(scale == "large"),
                                             "medium": {"R@1": None, "n": 0}}}}
            (d / "metrics.json").write_text(json.dumps(metrics))
    tables = build_tables(tmp_path, variants, {"sgmn": [0, 1], "rice_box": [0, 1]})
    t4 = tables["table4"].set_index(["row_id", "subset"])
    assert t4.loc[("sgmn", "scale/small"), "R@1"] == pytest.approx(100.0)
    assert t4.loc[("sgmn", "scale/large"), "R@1"] == pytest.approx(60.0)
    assert t4.loc[("rice_box", "scale/small"), "R@1"] == pytest.approx(60.0)
    assert t4.loc[("rice_box", "overall"), "R@1"] == pytest.approx(50.0)
    assert t4.loc[("rice_box", "scale/small"), "n_queries"] == 5
    assert t4.loc[("sgmn", "scale/small"), "R@1_paper"] == pytest.approx(38.3)   # published
    assert math.isnan(t4.loc[("sgmn", "scale/medium"), "R@1"])                  # no such queries
    assert pd.isna(t4.loc[("rice_patch", "overall"), "variant"])                 # not run: listed
    tests = tables["paired_tests"]
    tests = tests[tests["table"] == 4].set_index("subset")
    # every query is duration/short and count/few (per_query's constants); no scale/medium query
    assert set(tests.index) == {"overall", "scale/small", "scale/large", "duration/short", "count/few"}
    assert tests.loc["scale/small", "diff"] == pytest.approx(40.0)               # 100 - 60
    assert tests.loc["scale/small", "n_pairs"] == 10                             # 5 queries x 2 seeds
    assert tests.loc["overall", "diff"] == pytest.approx(30.0)
    assert tests.loc["scale/small", "paper_diff"] == pytest.approx(38.3 - 32.7)
    md = to_markdown(tables)
    assert "## Table 4" in md and "scale/small" in md


def test_table3_from_bench_files_with_ratios_to_sgmn(tmp_path):
    """Hand-made bench cases: RICE_box 6 ms, SGMN 12 ms per query at one scale."""
    def case(variant, method, ms, params, score_ms=None):
        return {"scale": "tiny", "variant": variant, "method": method, "device": "cpu", "device_name": "x86_64",
                "threads": 2, "num_frames": 8, "image_size": 64, "gallery": 600, "per_query_ms": ms,
                "score_ms": score_ms, "parameters": {"all": params * 2, "trainable": params * 2, "inference": params}}
    path = tmp_path / "methods_tiny_cpu.json"
    path.write_text(json.dumps({"cases": {"rice_box": case("rice_box", "rice", 6.0, 1_000_000, 1.0),
                                          "sgmn": case("sgmn", "sgmn", 12.0, 1_500_000),
                                          "mgh": case("mgh", "mgh", 3.0, 200_000, 1.0)}}))
    variants = {"sgmn": {"paper": [{"table": 1, "row": "sgmn"}]},
                "rice_box": {"paper": [{"table": 1, "row": "rice"}, {"table": 4, "row": "rice_box"}]}}
    t3 = build_table3([path], variants).set_index("row_id")
    assert t3.loc["rice", "time_ms"] == pytest.approx(6.0) and t3.loc["rice", "time_vs_sgmn"] == pytest.approx(0.5)
    assert t3.loc["rice", "params_m"] == pytest.approx(1.0) and t3.loc["rice", "params_all_m"] == pytest.approx(2.0)
    assert t3.loc["sgmn", "time_vs_sgmn"] == pytest.approx(1.0)
    # scoring: 1 of RICE's 6 ms; unknown for a bench file without it
    assert t3.loc["rice", "score_ms"] == pytest.approx(1.0) and t3.loc["rice", "score_share"] == pytest.approx(1 / 6)
    assert math.isnan(t3.loc["sgmn", "score_ms"])
    # a benched method the paper's Table 3 does not list: its own row, after the published ones
    assert list(t3.index)[-1] == "mgh" and not t3.loc["mgh", "in_paper"] and t3.loc["rice", "in_paper"]
    assert t3.loc["mgh", "time_vs_sgmn"] == pytest.approx(0.25) and math.isnan(t3.loc["mgh", "time_ms_paper"])
    assert t3.loc["seam", "time_vs_sgmn_paper"] == pytest.approx(622.6 / 24.3)      # published ratio
    assert pd.isna(t3.loc["asymnet", "variant"]) and math.isnan(t3.loc["asymnet", "time_ms"])  # not run
    assert "## Table 3" in "\n".join(table3_markdown(build_table3([path], variants)))
    # no bench files: every published row, nothing measured
    assert build_table3([], variants)["time_ms"].isna().all()
