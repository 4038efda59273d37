"""`snakemake fidelity`'s table: Table 7's rows under both recipes, with paired tests, from a
runs tree in which some runs are missing."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sgmn.cli import main
from sgmn.config import load_variants
from sgmn.evaluate.fidelity_table import ROWS, build, fidelity_variants

N_Q = 40


def per_query(n_hits: int, offset: int = 0) -> pd.DataFrame:
    hit = np.zeros(N_Q, bool)
    hit[offset:offset + n_hits] = True
    return pd.DataFrame({"video_id": [f"v{i}" for i in range(N_Q)], "rank": np.where(hit, 1.0, 9.0),
                         "hit@1": hit, "hit@5": hit, "hit@10": hit, "miss_reason": pd.Series([None] * N_Q, dtype=object)})


def write_run(root, variant, seed, n_hits):
    d = root / variant / f"seed{seed}"
    d.mkdir(parents=True)
    r1 = 100.0 * n_hits / N_Q
    (d / "metrics.json").write_text(json.dumps({"overall": {"R@1": r1, "R@5": r1, "R@10": r1, "n": N_Q}}))
    per_query(n_hits).to_parquet(d / "per_query.parquet", index=False)


def test_every_fidelity_variant_is_a_row_of_the_variants_file_with_its_recipe():
    variants = load_variants()
    for row, paper, official in ROWS:
        assert paper in variants and official in variants, row
        assert variants[official]["overrides"].get("fidelity") == "official"
        # the same switches as the paper row: only the recipe differs
        assert variants[official]["overrides"].get("sgmn", {}) == variants[paper]["overrides"].get("sgmn", {})
    assert fidelity_variants()[:5] == [r[1] for r in ROWS]


def test_table_and_tests_with_a_missing_row(tmp_path):
    runs = tmp_path / "runs"
    hits = {"A": 10, "B": 20, "C": 20, "D": 21, "E": 22}
    for row, paper, official in ROWS:
        for seed in (0, 1, 2):
            write_run(runs, paper, seed, hits[row])
            if row != "D":                                   # official row D has not run
                write_run(runs, official, seed, hits[row] - 5)
    result = build(runs)
    table = result["table"].set_index(["row", "mode"])
    assert len(table) == 10
    assert table.loc[("B", "paper"), "R@1"] == pytest.approx(50.0)
    assert table.loc[("B", "official"), "R@1"] == pytest.approx(37.5)
    assert table.loc[("D", "official"), "status"] == "not run" and np.isnan(table.loc[("D", "official"), "R@1"])
    tests = result["tests"].set_index("comparison")
    paper_tests = result["tests"][result["tests"]["kind"] == "paper: component"].set_index("comparison")
    # B vs A in paper mode: 10 more hits of 40 in every seed -> +25 points, significant
    assert paper_tests.loc["B vs A", "diff"] == pytest.approx(25.0)
    assert paper_tests.loc["B vs A", "verdict"] == "a > b"
    assert paper_tests.loc["C vs B", "diff"] == 0 and paper_tests.loc["C vs B", "verdict"] == "n.s."
    official_tests = result["tests"][result["tests"]["kind"] == "official: component"]["comparison"].tolist()
    assert official_tests == ["B vs A", "C vs B", "E vs A"]    # those that need official D are left out
    assert tests.loc["A: official vs paper", "diff"] == pytest.approx(-12.5)
    assert "D: official vs paper" not in tests.index
    out = tmp_path / "fidelity"
    assert main(["fidelity-table", "--runs", str(runs), "--out", str(out)]) == 0
    md = (out / "fidelity.md").read_text()
    assert "not run" in md and "| A | paper | `gra_only` | 0,1,2 | 25.0 ± 0.0" in md
    assert len(pd.read_csv(out / "paired_tests.csv")) == len(result["tests"])
