"""The paper's published numbers (workflow/paper/*.csv) load, are complete, and carry the
consistency findings computed by sgmn.paper (see workflow/paper/README.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sgmn import paper
from sgmn.paper import (
    BASE_COLUMNS,
    CLAIMS,
    PaperTableError,
    check_claims,
    compute_checks,
    load_all,
    load_table,
    rmean_check,
)

# table -> (rows, distinct row_ids, metrics)
SHAPES = {
    1: (36, 9, {"R@1", "R@5", "R@10", "R@mean"}),
    2: (28, 7, {"R@1", "R@5", "R@10", "R@mean"}),
    3: (15, 5, {"time_ms", "params_m", "R@1"}),
    4: (30, 3, {"R@1"}),
    5: (7, 7, {"R@1"}),
    6: (24, 8, {"R@1", "R@5", "R@10"}),
    7: (15, 5, {"R@1", "R@5", "R@10"}),
}
RICE_SHAPES = {1: (24, 2), 2: (6, 2), 3: (6, 2)}


def cell(df: pd.DataFrame, table: int, row_id: str, metric: str, subset: str = "overall") -> float:
    sel = df[(df.table == table) & (df.row_id == row_id) & (df.metric == metric) & (df.subset == subset)]
    assert len(sel) == 1, (table, row_id, metric, subset)
    return float(sel["value"].iloc[0])


@pytest.fixture(scope="module")
def allt() -> pd.DataFrame:
    return load_all()


@pytest.mark.parametrize("n", sorted(SHAPES))
def test_table_loads_with_expected_shape(n):
    df = load_table(n)
    rows, ids, metrics = SHAPES[n]
    assert len(df) == rows
    assert df["row_id"].nunique() == ids
    assert set(df["metric"]) == metrics
    assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert (df["table"] == n).all()
    assert df["value"].dtype == "float64" and df["table"].dtype == "int64"
    # every row_id has every metric of its table (a full grid of published cells)
    assert df.groupby(["row_id", "subset"]).size().nunique() == 1


@pytest.mark.parametrize("n", sorted(RICE_SHAPES))
def test_rice_supplementary_tables_load(n):
    df = load_table(n, source="rice")
    rows, ids = RICE_SHAPES[n]
    assert len(df) == rows and df["row_id"].nunique() == ids
    assert (df["checks"] == "").all()


def test_load_all_and_explicit_directory(tmp_path, allt):
    assert len(allt) == sum(r for r, _, _ in SHAPES.values())
    assert str(allt["te"].dtype) == "boolean" and allt["te"].isna().sum() == len(allt) - 15
    assert allt["beta1"].dtype == "float64"
    for f in paper.DEFAULT_DIR.glob("*.csv"):
        shutil.copy(f, tmp_path / f.name)
    pd.testing.assert_frame_equal(load_all(tmp_path), allt)
    with pytest.raises(FileNotFoundError):
        load_table(1, tmp_path / "missing")
    with pytest.raises(ValueError, match="no table 8"):
        load_table(8)


def test_spot_values(allt):
    assert cell(allt, 1, "fashionnet", "R@1") == 13.4
    assert cell(allt, 1, "rice", "R@mean") == 58.6
    assert cell(allt, 1, "sgmn_wo_te", "R@10") == 76.2
    assert cell(allt, 2, "sgmn_wo_finetune", "R@mean") == 59.1
    assert cell(allt, 2, "mgh", "R@5") == 59.0
    assert cell(allt, 3, "asymnet", "time_ms") == 910.4
    assert cell(allt, 3, "seam", "params_m") == 52
    assert cell(allt, 4, "rice_box", "R@1", "count/abundant") == 17.6
    assert cell(allt, 4, "sgmn", "R@1", "scale/large") == 54.9
    assert cell(allt, 5, "beta_0.7_0.3", "R@1") == 43.4
    assert cell(allt, 6, "D", "R@10") == 77.8
    assert cell(allt, 7, "C", "R@5") == 65.2
    rice = load_all(source="rice")
    assert cell(rice, 1, "md", "AP50", "scale/large") == 72.7
    assert cell(rice, 3, "pmd_hard", "R@1") == 29.4


def test_method_slugs(allt):
    t1 = set(load_table(1)["method"])
    assert t1 == {"fashionnet", "asymnet", "seam", "timesformer", "nvan", "swinb", "rice", "sgmn_wo_te", "sgmn"}
    assert set(load_table(2)["method"]) == {"nvan", "mgh", "asymnet", "seam", "rice", "sgmn_wo_finetune", "sgmn"}
    assert set(load_table(4)["method"]) == {"rice_patch", "rice_box", "sgmn"}
    assert set(allt[allt.table == 2]["dataset"]) == {"movingfashion"}
    assert set(allt[allt.table != 2]["dataset"]) == {"lpr4m"}


def test_rmean_consistency_reported():
    """Every published R@mean (Tables 1 and 2) equals the mean of R@1/5/10, to 0.1 and after rounding."""
    for n, rows in ((1, 9), (2, 7)):
        rm = rmean_check(load_table(n))
        assert len(rm) == rows
        assert rm["ok"].all() and rm["exact"].all(), rm[~rm["exact"]]
    fake = load_table(1)
    fake.loc[(fake.row_id == "rice") & (fake.metric == "R@mean"), "value"] = 60.0
    rm = rmean_check(fake)
    assert list(rm.loc[~rm["ok"], "row_id"]) == ["rice"]
    checks = compute_checks(pd.concat([fake] + [load_table(n) for n in range(2, 8)], ignore_index=True))
    assert "R@mean 60.0 != mean(R@1,R@5,R@10) 58.60" in checks.iloc[
        fake.index[(fake.row_id == "rice") & (fake.metric == "R@mean")][0]
    ]


def test_full_model_identical_across_tables(allt):
    """Table 7 row E = Table 6 row H = Table 5 (0.7, 0.3) = Table 3 SGMN = Table 1 SGMN."""
    for m in ("R@1", "R@5", "R@10"):
        v = cell(allt, 1, "sgmn", m)
        assert cell(allt, 6, "H", m) == v == cell(allt, 7, "E", m)
    assert cell(allt, 1, "sgmn", "R@1") == 43.4
    assert cell(allt, 5, "beta_0.7_0.3", "R@1") == cell(allt, 3, "sgmn", "R@1") == 43.4
    for rid in ("asymnet", "seam", "timesformer", "rice"):
        assert cell(allt, 3, rid, "R@1") == cell(allt, 1, rid, "R@1")
    assert cell(allt, 4, "rice_box", "R@1") == cell(allt, 1, "rice", "R@1")


def test_switch_columns():
    t5 = load_table(5)
    assert (t5["beta1"] + t5["beta2"] - 1).abs().max() < 1e-9
    assert t5.loc[t5["value"].idxmax(), ["beta1", "beta2"]].tolist() == [0.7, 0.3]
    t6 = load_table(6).drop_duplicates("row_id").set_index("row_id")
    combos = {tuple(r) for r in t6[["g_i2i", "g_v2v", "g_cross"]].itertuples(index=False)}
    assert len(combos) == 8  # full 2^3 design
    assert t6.loc["A", ["g_i2i", "g_v2v", "g_cross"]].tolist() == [False, False, False]
    assert t6.loc["D", ["g_i2i", "g_v2v", "g_cross"]].tolist() == [False, False, True]
    assert t6.loc["H", ["g_i2i", "g_v2v", "g_cross"]].tolist() == [True, True, True]
    t7 = load_table(7).drop_duplicates("row_id").set_index("row_id")
    sw = t7[["te", "tmc", "gci", "smf"]].astype(int).sum(axis=1)
    assert sw.to_dict() == {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4}  # cumulative: A none ... E all
    assert t7.loc["B", ["te", "tmc", "gci", "smf"]].tolist() == [True, False, False, False]
    assert t7.loc["D", ["te", "tmc", "gci", "smf"]].tolist() == [True, True, True, False]


def test_prose_claims(allt):
    res = check_claims(allt)
    failed = {(r.flag, r.note.split(" (")[0].split(" but")[0]) for r in res[~res["ok"]].itertuples()}
    assert {f for f, _ in failed} == {
        (3, "seam", "overall", "time_ms"),
        (4, "sgmn", "overall", "R@1"),
        (4, "sgmn", "count/medium", "R@1"),
        (6, "H", "overall", "R@1"),
        (7, "E", "overall", "R@1"),
    }
    # Table 7: the prose increments TE 4.5, TMC 0.9, GCI 2.7 hold; SMF (0.6) does not (E-D = 2.5)
    assert round(cell(allt, 7, "B", "R@1") - cell(allt, 7, "A", "R@1"), 1) == 4.5
    assert round(cell(allt, 7, "C", "R@1") - cell(allt, 7, "B", "R@1"), 1) == 0.9
    assert round(cell(allt, 7, "D", "R@1") - cell(allt, 7, "C", "R@1"), 1) == 2.7
    assert round(cell(allt, 7, "E", "R@1") - cell(allt, 7, "D", "R@1"), 1) == 2.5
    # the 41.5 "full model" of Table 4 and of the Table 6 prose = Table 7 A + prose increments
    assert round(cell(allt, 7, "A", "R@1") + 4.5 + 0.9 + 2.7 + 0.6, 1) == cell(allt, 4, "sgmn", "R@1") == 41.5
    assert check_claims(load_all(source="rice"), CLAIMS["rice"])["ok"].all()
    # a Table 4 overall outside the range of its subset columns would be flagged
    fake = allt.copy()
    fake.loc[(fake.table == 4) & (fake.row_id == "rice_patch") & (fake.subset == "overall"), "value"] = 45.0
    notes = compute_checks(fake)
    sel = (fake.table == 4) & (fake.row_id == "rice_patch") & (fake.subset == "overall")
    assert "overall outside the range of its scale subsets [28.9, 37.0]" in notes[sel].iloc[0]


# the paper's inconsistencies, found by reading it: (table, row, metric, subset) -> a phrase
PAPER_INCONSISTENCIES = {
    (3, "seam", "time_ms", "overall"): "25.6x",                       # "over 30 times faster"
    (4, "sgmn", "R@1", "overall"): "43.4 vs 41.5",                     # Table 4 vs Tables 1/6/7
    (4, "sgmn", "R@1", "count/medium"): "rice_patch is higher by 2.3",  # "consistently outperforms"
    (6, "H", "R@1", "overall"): "table gives 4.8",                     # prose: joint graphs +2.9
    (7, "E", "R@1", "overall"): "SMF adds 0.6 R@1 (E-D) but table gives 2.5",
}


def test_checks_flag_exactly_the_papers_known_inconsistencies(allt):
    """compute_checks on the published numbers flags the five places where the paper disagrees
    with itself (listed above by hand from the paper), and no other cell."""
    checks = compute_checks(allt)
    flagged = allt.loc[checks != "", ["table", "row_id", "metric", "subset"]]
    assert {tuple(r) for r in flagged.itertuples(index=False)} == set(PAPER_INCONSISTENCIES)
    for (table, row, metric, subset), phrase in PAPER_INCONSISTENCIES.items():
        sel = (allt.table == table) & (allt.row_id == row) & (allt.metric == metric) & (allt.subset == subset)
        assert phrase in checks[sel].iloc[0], (table, row, metric, subset)
    # the committed CSVs carry the same column (sgmn paper-checks --write-checks)
    assert (allt["checks"] != "").sum() == len(PAPER_INCONSISTENCIES)
    rice = load_all(source="rice")
    assert (compute_checks(rice, source="rice") == "").all()


def cell_checks(df, table, row_id, metric, subset="overall") -> str:
    sel = df[(df.table == table) & (df.row_id == row_id) & (df.metric == metric) & (df.subset == subset)]
    return str(sel["checks"].iloc[0])


def _corrupt(tmp_path: Path, n: int, line: int, old: str, new: str) -> Path:
    src = paper.DEFAULT_DIR / f"table{n}.csv"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    (tmp_path / src.name).write_text("".join(lines), encoding="utf-8")
    return tmp_path / src.name


@pytest.mark.parametrize(
    "n,line,old,new,msg",
    [
        (1, 5, ",32.5,", ",32.5x,", "value '32.5x' is not a number"),
        (1, 3, ",R@5,", ",R@50,", "metric 'R@50'"),
        (2, 4, "movingfashion", "mf", "dataset 'mf'"),
        (4, 6, "duration/short", "duration/tiny", "subset 'duration/tiny'"),
        (6, 10, "False", "no", "is not True/False"),
        (5, 2, ",0,1", ",0", "fields, expected 10"),
        (3, 2, "3,asymnet", "1,asymnet", "table 1 in the file of table 3"),
        (1, 7, "asymnet,lpr4m,overall,R@5", "asymnet,lpr4m,overall,R@1", "duplicate cell"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, n, line, old, new, msg):
    path = _corrupt(tmp_path, n, line, old, new)
    with pytest.raises(PaperTableError) as e:
        load_table(n, tmp_path)
    assert str(e.value).startswith(f"{path}:{line}:")
    assert msg in str(e.value)


def test_bad_header(tmp_path):
    path = _corrupt(tmp_path, 7, 1, "checks", "notes")
    with pytest.raises(PaperTableError, match=f"{path}:1: header"):
        load_table(7, tmp_path)
