"""sgmn.evaluate.diff and `sgmn diff`: the paper's cells and claims against hand-made runs whose
verdicts are known by hand, and against the committed LPR-Synth tables (no per-query files)."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sgmn.cli import main
from sgmn.evaluate.diff import (
    CELL_COLUMNS,
    VERDICTS,
    build_diff,
    tau_b,
    verdict,
    write_diff,
)
from sgmn.evaluate.tables import build_tables, write_tables

REPO = Path(__file__).parents[1]
N_Q = 200  # queries; even ones are small-scale, odd ones medium; all long-visible, few products
PROVENANCE = {"config": {"dataset": {"name": "lpr_synth", "path": None}}, "git": {"commit": "abc", "dirty": False}}


def per_query(hits) -> pd.DataFrame:
    """A per-query table of N_Q queries hitting (at 1, 5 and 10) the query indices in `hits`."""
    hit = np.zeros(N_Q, bool)
    hit[list(hits)] = True
    return pd.DataFrame({
        "video_id": [f"v{i:03d}" for i in range(N_Q)], "rank": np.where(hit, 1.0, 20.0), "hit@1": hit,
        "hit@5": hit, "hit@10": hit, "miss_reason": pd.Series([None] * N_Q, dtype=object),
        "scale": ["small" if i % 2 == 0 else "medium" for i in range(N_Q)], "duration": "long", "count": "few",
        "category": "hat"})


def write_runs(root: Path, hits_by_variant: dict, seeds_of: dict) -> Path:
    """metrics.json (overall and the subsets of per_query's labels) and per_query.parquet per run."""
    for variant, hits in hits_by_variant.items():
        table = per_query(hits)
        r1 = 100.0 * table["hit@1"].mean()
        subsets = {name: {label: {"R@1": 100.0 * g["hit@1"].mean(), "n": len(g)} for label, g in table.groupby(name)}
                   for name in ("scale", "duration", "count")}
        for seed in seeds_of[variant]:
            d = root / variant / f"seed{seed}"
            d.mkdir(parents=True)
            overall = {"R@1": r1, "R@5": r1, "R@10": r1, "R@mean": r1, "n": N_Q}
            (d / "metrics.json").write_text(json.dumps({"overall": overall, "subsets": subsets}))
            table.to_parquet(d / "per_query.parquet", index=False)
    return root


def make_tables(tmp_path: Path, variants: dict, hits: dict, seeds: dict) -> tuple[Path, Path]:
    runs = write_runs(tmp_path / "runs", hits, seeds)
    out = tmp_path / "tables"
    write_tables(build_tables(runs, variants, seeds), out, provenance=PROVENANCE)
    return out, runs


def by_id(diff: dict) -> dict:
    return {c["id"]: c for c in diff["claims"]}


def _strict(text: str):
    def fail(x):
        raise AssertionError(f"non-standard JSON constant {x}")
    return json.loads(text, parse_constant=fail)


# ---------------------------------------------------------------------------------------------
# Table 7 (two seeds) and Table 6 (one seed): a component that helps, one that hurts, identical
# runs, a variant that was never run


ABLATION_VARIANTS = {
    "gra_only": {"paper": [{"table": 7, "row": "A"}]}, "t7_te": {"paper": [{"table": 7, "row": "B"}]},
    "t7_te_tmc": {"paper": [{"table": 7, "row": "C"}]}, "t7_te_tmc_gci": {"paper": [{"table": 7, "row": "D"}]},
    "t6_no_graph": {"paper": [{"table": 6, "row": "A"}]}, "t6_i2i": {"paper": [{"table": 6, "row": "B"}]},
    "sgmn": {"paper": [{"table": 7, "row": "E"}, {"table": 6, "row": "H"}]},   # never run
}
ABLATION_HITS = {
    "gra_only": range(60),        # 30%
    "t7_te": range(120),          # 60%: TE helps, +30 on every seed
    "t7_te_tmc": range(20),       # 10%: TMC hurts, -50
    "t7_te_tmc_gci": range(20),   # identical to C: GCI changes nothing
    "t6_no_graph": range(100),    # 50%
    "t6_i2i": range(130),         # 65%: +15, 30 discordant pairs all one way
}
ABLATION_SEEDS = {"gra_only": [0, 1], "t7_te": [0, 1], "t7_te_tmc": [0, 1], "t7_te_tmc_gci": [0, 1],
                  "t6_no_graph": [0], "t6_i2i": [0], "sgmn": [0, 1]}


@pytest.fixture
def ablation(tmp_path):
    return make_tables(tmp_path, ABLATION_VARIANTS, ABLATION_HITS, ABLATION_SEEDS)


def test_component_verdicts_known_by_hand(ablation):
    tables, runs = ablation
    diff = build_diff(tables, runs=runs)
    c = by_id(diff)
    te = c["t7.te"]
    assert te["verdict"] == "held" and te["agree"] is True
    assert te["ours"]["value"] == pytest.approx(30.0) and te["ours"]["seeds"] == [0, 1]
    assert te["ours"]["ci_low"] > 0 and te["test"]["name"].startswith("two-level bootstrap")
    assert te["paper"]["value"] == pytest.approx(37.3 - 32.8) and te["paper"]["prose"] == 4.5
    tmc = c["t7.tmc"]
    assert tmc["verdict"] == "opposite" and tmc["agree"] is False and tmc["ours"]["value"] == pytest.approx(-50.0)
    gci = c["t7.gci"]  # identical runs: no difference at all
    assert gci["verdict"] == "n.s." and gci["ours"]["value"] == 0.0 and gci["agree"] is False
    assert gci["ours"]["ci_low"] == 0.0 == gci["ours"]["ci_high"]
    for cid in ("t7.smf", "t7.all", "t6.H"):  # E / H (sgmn) has no run
        assert c[cid]["verdict"] == "not run" and c[cid]["ours"]["value"] is None and "no run" in c[cid]["reason"]
    b = c["t6.B"]  # one seed: the exact McNemar test decides
    assert b["verdict"] == "held" and b["ours"]["value"] == pytest.approx(15.0)
    assert b["test"]["name"].startswith("exact McNemar") and b["test"]["p_mcnemar"] == pytest.approx(2.0 ** -29)
    # Table 3 absent: one claim per rival, not run
    assert c["t3.asymnet.None"]["verdict"] == "not run" == c["t3.seam.None"]["verdict"]
    assert diff["summary"] == {"held": 2, "n.s.": 1, "opposite": 1, "not run": 45, "total": 49}


def test_summary_markdown_counts_and_layout(ablation, tmp_path):
    tables, runs = ablation
    md_path, json_path = tmp_path / "diff.md", tmp_path / "diff.json"
    assert main(["diff", "--tables", str(tables), "--runs", str(runs), "--out-md", str(md_path),
                 "--out-json", str(json_path)]) == 0
    md = md_path.read_text()
    first_screen = "\n".join(md.splitlines()[:60])
    assert "**49 claims checked on LPR-Synth: 2 held · 1 n.s. · 1 opposite · 45 not run.**" in first_screen
    assert "| TE adds R@1 (Tab. 7 B - A)" in first_screen and "+30.0 [" in first_screen
    assert "10 not run" in first_screen  # Table 4 in one line per RICE
    for section in ("## Claims in full", "## Where the paper disagrees with itself", "## Every published cell"):
        assert section in md
    assert md.index("**49 claims") < md.index("## Claims in full") < md.index("## Every published cell")
    assert "LPR-Synth numbers, not LPR4M" in md
    assert _strict(json_path.read_text())["summary"]["held"] == 2


def test_speed_ratios_from_bench_files(ablation, tmp_path):
    """AsymNet 62x and SEAM 2x SGMN's time at one scale; 0.5x and 1x at the other."""
    def case(variant, scale, ms):
        return {"scale": scale, "variant": variant, "method": variant, "device": "cpu", "device_name": "x86_64",
                "threads": 2, "num_frames": 8, "image_size": 64, "gallery": 600, "per_query_ms": ms,
                "score_ms": None, "parameters": {"all": 2_000_000, "trainable": 2_000_000, "inference": 1_000_000}}
    bench = tmp_path / "bench"
    bench.mkdir()
    for scale, ms in (("tiny", {"asymnet": 620.0, "seam": 20.0, "sgmn": 10.0}),
                      ("vitb32", {"asymnet": 5.0, "seam": 10.0, "sgmn": 10.0})):
        (bench / f"methods_{scale}_cpu.json").write_text(
            json.dumps({"cases": {v: case(v, scale, t) for v, t in ms.items()}}))
    tables, _ = ablation
    diff = build_diff(tables, bench=bench)
    c = by_id(diff)
    assert c["t3.asymnet.tiny"]["ours"]["value"] == pytest.approx(62.0) and c["t3.asymnet.tiny"]["verdict"] == "held"
    assert c["t3.seam.tiny"]["ours"]["value"] == pytest.approx(2.0) and c["t3.seam.tiny"]["verdict"] == "n.s."
    assert c["t3.seam.tiny"]["agree"] is True  # faster, just not 30x
    assert c["t3.asymnet.vitb32"]["verdict"] == "opposite" and c["t3.asymnet.vitb32"]["agree"] is False
    assert c["t3.seam.vitb32"]["verdict"] == "opposite"  # as fast: not faster
    assert c["t3.seam.tiny"]["paper"]["value"] == pytest.approx(622.6 / 24.3)  # the paper's own ratio
    assert c["t3.seam.tiny"]["paper"]["prose"] == 30
    cells = pd.DataFrame(diff["cells"])
    sgmn_ms = cells[(cells["table"] == 3) & (cells["row_id"] == "sgmn") & (cells["metric"] == "time_ms")]
    assert sorted(zip(sgmn_ms["scale"], sgmn_ms["ours"])) == [("tiny", 10.0), ("vitb32", 10.0)]
    assert set(cells.loc[(cells["table"] == 3) & (cells["row_id"] == "timesformer") & (cells["metric"] == "time_ms"),
                         "status"]) == {"not run"}


# ---------------------------------------------------------------------------------------------
# Tables 1 and 4 (one seed), with and without the per-query files


METHOD_VARIANTS = {
    "sgmn": {"paper": [{"table": 1, "row": "sgmn"}, {"table": 4, "row": "sgmn"}]},
    "sgmn_wo_te": {"paper": [{"table": 1, "row": "sgmn_wo_te"}]},
    "rice_box": {"paper": [{"table": 1, "row": "rice"}, {"table": 4, "row": "rice_box"}]},
    "rice_patch": {"paper": [{"table": 4, "row": "rice_patch"}]},
}
METHOD_HITS = {"sgmn": range(120), "sgmn_wo_te": range(100), "rice_box": range(80),
               "rice_patch": range(160)}   # 60%, 50%, 40%, 80% overall and on each scale subset
METHOD_SEEDS = {v: [0] for v in METHOD_VARIANTS}
# subsets with queries: overall, scale/small, scale/medium, duration/long, count/few
WITH_QUERIES = ("overall", "scale/small", "scale/medium", "duration/long", "count/few")


@pytest.fixture
def methods(tmp_path):
    return make_tables(tmp_path, METHOD_VARIANTS, METHOD_HITS, METHOD_SEEDS)


def test_method_claims_with_per_query_files(methods):
    tables, runs = methods
    c = by_id(build_diff(tables, runs=runs))
    for sub in WITH_QUERIES:
        assert c[f"t4.rice_box.{sub}"]["verdict"] == "held", sub                   # +20
        assert c[f"t4.rice_box.{sub}"]["ours"]["value"] == pytest.approx(20.0), sub
        assert c[f"t4.rice_patch.{sub}"]["verdict"] == "opposite", sub             # -20
    for sub in ("scale/large", "duration/short", "count/abundant"):  # no query in the subset
        assert c[f"t4.rice_box.{sub}"]["verdict"] == "not run" == c[f"t4.rice_patch.{sub}"]["verdict"]
    for m in ("R@1", "R@5", "R@10"):
        assert c[f"t1.sgmn_vs_rice.{m}"]["verdict"] == "held", m
        assert c[f"t1.sgmn_vs_rice.{m}"]["ours"]["value"] == pytest.approx(20.0), m
    assert c["t1.wo_te_vs_rice"]["verdict"] == "held" and c["t1.wo_te_vs_rice"]["ours"]["value"] == pytest.approx(10.0)
    assert c["t1.wo_te_vs_rice"]["ours"]["from"] == "per_query.parquet"
    assert c["text.gain"]["verdict"] == "held" and c["text.gain"]["ours"]["from"] == "paired_tests.csv"
    # sgmn 60 > w/o TE 50 > RICE 40 in every resample of the (nested) hits: the paper's order
    order = c["t1.ordering"]
    assert order["ours"]["value"] == 1.0 and order["ours"]["ci_low"] == 1.0 == order["ours"]["ci_high"]
    assert order["verdict"] == "held" and order["test"]["name"].startswith("bootstrap over 200 queries")
    assert c["t1.sgmn_best"]["verdict"] == "not run"  # FashionNet, AsymNet, ... never run
    assert c["t2.sgmn_vs_rice"]["verdict"] == "not run"


def test_method_claims_without_per_query_files(methods):
    """Only the tests `sgmn tables` ran (paired_tests.csv) are available; the rest not run."""
    tables, _ = methods
    diff = build_diff(tables)
    c = by_id(diff)
    assert all(c[f"t4.rice_box.{sub}"]["verdict"] == "held" for sub in WITH_QUERIES)
    wo = c["t1.wo_te_vs_rice"]   # not in paired_tests.csv: the difference of the means, no CI
    assert wo["verdict"] == "not run" and wo["ours"]["value"] == pytest.approx(10.0) and wo["agree"] is True
    assert wo["ours"]["ci_low"] is None and "no paired test" in wo["reason"]
    patch = c["t4.rice_patch.overall"]
    assert patch["verdict"] == "not run" and patch["ours"]["value"] == pytest.approx(-20.0) and patch["agree"] is False
    assert c["t1.sgmn_vs_rice.R@5"]["verdict"] == "not run" and c["t1.sgmn_vs_rice.R@1"]["verdict"] == "held"
    # three rows in the paper's order: tau 1, but scipy's exact two-sided p for n = 3 is 2/6
    order = c["t1.ordering"]
    assert order["ours"]["value"] == 1.0 and order["p_kendall"] == pytest.approx(1 / 3)
    assert order["verdict"] == "n.s." and "Kendall" in order["test"]["name"]
    assert diff["summary"] == {"held": 7, "n.s.": 1, "opposite": 0, "not run": 41, "total": 49}


def test_cells_every_published_cell_beside_ours(methods):
    tables, runs = methods
    diff = build_diff(tables, runs=runs)
    cells = pd.DataFrame(diff["cells"])
    assert list(cells.columns) == CELL_COLUMNS
    paper = pd.concat([pd.read_csv(REPO / "workflow" / "paper" / f"table{n}.csv") for n in range(1, 8)])
    published = set(zip(paper["table"], paper["row_id"], paper["subset"], paper["metric"]))
    assert set(zip(cells["table"], cells["row_id"], cells["subset"], cells["metric"])) == published
    assert set(cells["status"]) == {"measured", "not run"}

    def cell(t, row, metric, subset="overall"):
        got = cells[(cells["table"] == t) & (cells["row_id"] == row) & (cells["metric"] == metric)
                    & (cells["subset"] == subset)]
        assert len(got) == 1, got
        return got.iloc[0]
    sg = cell(1, "sgmn", "R@1")
    assert sg["ours"] == pytest.approx(60.0) and sg["paper"] == 43.4 and sg["diff"] == pytest.approx(16.6)
    assert sg["status"] == "measured" and sg["ours_dataset"] == "LPR-Synth" and sg["variant"] == "sgmn"
    assert cell(1, "sgmn", "R@mean")["ours"] == pytest.approx(60.0)      # mean of R@1, R@5, R@10
    assert cell(3, "sgmn", "R@1")["ours"] == pytest.approx(60.0)         # Table 3 repeats Table 1's R@1
    assert cell(4, "rice_patch", "R@1", "scale/small")["ours"] == pytest.approx(80.0)
    for t, row, metric, sub in ((1, "fashionnet", "R@1", "overall"), (4, "sgmn", "R@1", "scale/large"),
                                (7, "E", "R@5", "overall"), (3, "seam", "time_ms", "overall")):
        got = cell(t, row, metric, sub)
        assert got["status"] == "not run" and math.isnan(got["ours"]) and math.isnan(got["diff"]), (t, row)
    t2 = cells[cells["table"] == 2]
    assert len(t2) == 28 and set(t2["status"]) == {"not run"} and set(t2["ours_dataset"]) == {"MF-Synth"}


def test_json_schema(methods, tmp_path):
    tables, runs = methods
    md, js = tmp_path / "d.md", tmp_path / "d.json"
    write_diff(build_diff(tables, runs=runs), md, js)
    d = _strict(js.read_text())
    assert set(d) == {"dataset", "datasets", "synthetic", "alpha", "summary", "claims", "cells", "inconsistencies",
                      "provenance"}
    assert d["dataset"] == "LPR-Synth" and d["datasets"] == {"lpr4m": "LPR-Synth", "movingfashion": "MF-Synth"}
    assert set(d["summary"]) == set(VERDICTS) | {"total"}
    assert sum(d["summary"][v] for v in VERDICTS) == d["summary"]["total"] == len(d["claims"])
    ids = [c["id"] for c in d["claims"]]
    assert len(ids) == len(set(ids))
    for c in d["claims"]:
        assert set(c) >= {"id", "family", "table", "statement", "source", "quote", "rows", "metric", "subset", "paper",
                          "ours", "agree", "test", "verdict", "reason"}
        assert set(c["paper"]) == {"value", "prose", "unit", "direction"}
        assert set(c["ours"]) == {"value", "ci_low", "ci_high", "seeds", "n_pairs", "variants", "from"}
        assert set(c["test"]) == {"name", "p_mcnemar", "supports"}
        assert c["verdict"] in VERDICTS and c["agree"] in (True, False, None)
        assert c["paper"]["unit"] in ("points", "x", "tau", "rows")
    assert all(set(cell) == set(CELL_COLUMNS) for cell in d["cells"])
    assert d["provenance"]["git"] and d["provenance"]["versions"]["python"]
    assert d["provenance"]["tables"] == str(tables) and d["provenance"]["runs"] == str(runs)


# ---------------------------------------------------------------------------------------------
# Pieces


@pytest.mark.parametrize("paper, ours, supports, expected", [
    (4.5, 2.0, True, "held"), (4.5, -2.0, True, "opposite"), (4.5, 2.0, False, "n.s."), (-2.3, -1.0, True, "held"),
    (4.5, 2.0, None, "not run"), (4.5, math.nan, None, "not run")])
def test_verdict(paper, ours, supports, expected):
    assert verdict(paper, ours, supports) == expected


def test_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 6)).astype(float)   # many ties
    p = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    want = [stats.kendalltau(row, p).statistic for row in x]
    np.testing.assert_allclose(tau_b(x, p), want, equal_nan=True)


def test_the_paper_disagrees_with_itself():
    """The three contradictions the issue names, from workflow/paper alone."""
    inc = build_diff_paper_only()
    titles = [t["title"] for t in inc["topics"]]
    assert titles[0].startswith("SMF") and titles[1].startswith("SGMN's R@1") and titles[2].startswith("SEAM")
    smf = inc["topics"][0]["checks"]
    assert len(smf) == 1 and smf[0]["claimed"] == 0.6 and smf[0]["observed"] == pytest.approx(43.4 - 40.9)
    assert len(inc["topics"][1]["checks"]) == 4   # Table 4's 41.5; prose 41.5, +2.9 and gains summing to 8.7
    seam = inc["topics"][2]["checks"]
    assert len(seam) == 1 and seam[0]["observed"] == pytest.approx(622.6 / 24.3, abs=1e-5)
    # the rest: Table 4 count/medium, where RICE_patch beats SGMN against the prose
    assert inc["topics"][3]["checks"][0]["cells"][0] == [4, "sgmn", "count/medium", "R@1"]
    flagged = {(c["table"], c["row_id"], c["subset"]) for c in inc["flagged_cells"]}
    assert flagged == {(3, "seam", "overall"), (4, "sgmn", "overall"), (4, "sgmn", "count/medium"),
                       (6, "H", "overall"), (7, "E", "overall")}


def build_diff_paper_only():
    from sgmn.evaluate.diff import inconsistencies
    from sgmn.paper import load_all
    return inconsistencies(load_all())


def test_missing_tables_directory_is_an_error(tmp_path):
    assert main(["diff", "--tables", str(tmp_path / "none"), "--out-md", str(tmp_path / "d.md"),
                 "--out-json", str(tmp_path / "d.json")]) == 2


# ---------------------------------------------------------------------------------------------
# The committed LPR-Synth tables, as a fresh clone has them (no runs/)


def test_diff_on_the_committed_tables(tmp_path):
    tables = REPO / "results" / "lpr_synth" / "tables"
    md, js = tmp_path / "diff.md", tmp_path / "diff.json"
    assert main(["diff", "--tables", str(tables), "--runs", str(tmp_path / "no_runs"), "--out-md", str(md),
                 "--out-json", str(js)]) == 0
    d = _strict(js.read_text())
    s = d["summary"]
    assert sum(s[v] for v in VERDICTS) == s["total"] == len(d["claims"])
    assert f"**{s['total']} claims checked on LPR-Synth: {s['held']} held" in md.read_text()
    c = by_id(d)
    # the same verdict as `sgmn tables` where both decide by the two-level bootstrap CI
    pt = pd.read_csv(tables / "paired_tests.csv")
    as_verdict = {"agrees": "held", "opposite": "opposite", "n.s.": "n.s."}
    checked = 0
    for claim in d["claims"]:
        o = claim["ours"]
        aggregate = claim["id"] in ("t1.sgmn_best", "t2.sgmn_best", "t5.optimum")  # decided over several tests
        if aggregate or o["from"] != "paired_tests.csv" or len(o["seeds"]) < 2:
            continue
        x, y = claim["rows"][:2]
        row = pt[(pt["table"] == claim["table"]) & (pt["comparison"] == f"{x} vs {y}")
                 & (pt["subset"] == claim["subset"])]
        if claim["paper"]["value"] * (1 if claim["paper"]["direction"] == "+" else -1) > 0:
            assert as_verdict[row["direction"].item()] == claim["verdict"], claim["id"]
            checked += 1
    assert checked >= 5
    # a comparison `sgmn tables` does not run needs the per-query files: not run, but the means are there
    e = c["t6.E"]
    assert e["verdict"] == "not run" and e["ours"]["value"] is not None and e["ours"]["ci_low"] is None
    # every published cell is there, measured or not run
    assert len({(x["table"], x["row_id"], x["subset"], x["metric"]) for x in d["cells"]}) == 155
    assert {x["status"] for x in d["cells"]} <= {"measured", "not run"}
