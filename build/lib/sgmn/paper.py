"""The published numbers of SGMN (ACM MM 2024, Tables 1-7) and of the RICE supplementary
(ICCV 2023, Tables 1-3) as tidy data, with the paper's internal-consistency checks.

Data: ``workflow/paper/table{n}.csv`` (SGMN) and ``workflow/paper/rice_table{n}.csv`` (RICE
supplementary), transcribed by hand from ``shared/seeds/sgmn_paper_mm24.txt`` and
``shared/seeds/rice_iccv23_supplementary.md``; ``workflow/paper/README.md`` says where every
number came from and how the garbled text extraction was resolved.

One CSV row is one published cell::

    table,row_id,method,dataset,subset,metric,value,checks[,switch columns]

- ``table``: the table number within its source (int); ``row_id``: the paper's row label
  (``A``..``H``) or a slug of the method / setting; ``method``: a method slug;
  ``dataset``: ``lpr4m`` | ``movingfashion``; ``subset``: ``overall`` or ``scale/small``,
  ``duration/long``, ``count/abundant``, ...; ``metric``: one of :data:`METRICS`;
  ``value``: float; ``checks``: empty, or a note when the published number is internally
  inconsistent (written by :func:`compute_checks`, see ``sgmn paper-checks --help``).
- Switch columns (ablation tables only): Table 5 ``beta1, beta2`` (floats), Table 6
  ``g_i2i, g_v2v, g_cross`` and Table 7 ``te, tmc, gci, smf`` (``True``/``False``).

Usage::

    from sgmn.paper import load_table, load_all
    t1 = load_table(1)                       # SGMN Table 1
    everything = load_all()                  # SGMN Tables 1-7, switch columns nullable
    rice = load_all(source="rice")           # RICE supplementary Tables 1-3
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sgmn.paths import REPO_ROOT

# workflow/paper/ of the repository that holds this package (sgmn/ and workflow/ are siblings).
DEFAULT_DIR = REPO_ROOT / "workflow" / "paper"

BASE_COLUMNS: tuple[str, ...] = ("table", "row_id", "method", "dataset", "subset", "metric", "value", "checks")
METRICS = frozenset({"R@1", "R@5", "R@10", "R@mean", "time_ms", "params_m", "AP", "AP50", "AP75"})
DATASETS = frozenset({"lpr4m", "movingfashion"})
SUBSETS = frozenset(
    ["overall"]
    + [f"scale/{s}" for s in ("small", "medium", "large")]
    + [f"duration/{s}" for s in ("short", "medium", "long")]
    + [f"count/{s}" for s in ("few", "medium", "abundant")]
)
# source -> (file name pattern, table numbers)
SOURCES: dict[str, tuple[str, tuple[int, ...]]] = {
    "sgmn": ("table{n}.csv", (1, 2, 3, 4, 5, 6, 7)),
    "rice": ("rice_table{n}.csv", (1, 2, 3)),
}
# (source, table) -> {switch column: python type}; every other table has none.
SWITCH_COLUMNS: dict[tuple[str, int], dict[str, type]] = {
    ("sgmn", 5): {"beta1": float, "beta2": float},
    ("sgmn", 6): {"g_i2i": bool, "g_v2v": bool, "g_cross": bool},
    ("sgmn", 7): {"te": bool, "tmc": bool, "gci": bool, "smf": bool},
}
_SLUG_RE = re.compile(r"^[a-z0-9_]+$")
_ROW_ID_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_BOOLS = {"True": True, "False": False, "true": True, "false": False}
# Tolerance of every check: the paper prints one decimal, so numbers derived from printed
# values may legitimately be off by up to 0.1 when the authors worked from unrounded ones.
TOL = 0.1 + 1e-9

Cell = tuple[int, str, str, str]  # (table, row_id, subset, metric) within one source


class PaperTableError(ValueError):
    """A malformed paper CSV; the message starts with ``file:line:``."""


def paper_dir(directory: str | Path | None = None) -> Path:
    """The directory holding the CSVs: ``directory`` if given, else the repository's ``workflow/paper``."""
    d = Path(directory) if directory is not None else DEFAULT_DIR
    if not d.is_dir():
        raise FileNotFoundError(f"paper table directory not found: {d}")
    return d


def table_path(n: int, directory: str | Path | None = None, *, source: str = "sgmn") -> Path:
    """Path of table ``n`` of ``source`` (``"sgmn"`` or ``"rice"``)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    pattern, numbers = SOURCES[source]
    if n not in numbers:
        raise ValueError(f"{source} has no table {n!r}; tables are {list(numbers)}")
    return paper_dir(directory) / pattern.format(n=n)


def _parse_row(raw: dict[str, str], n: int, switches: dict[str, type], where: str) -> dict:
    def fail(msg: str) -> PaperTableError:
        return PaperTableError(f"{where}: {msg}")

    row: dict = {}
    try:
        row["table"] = int(raw["table"])
    except ValueError:
        raise fail(f"table {raw['table']!r} is not an integer") from None
    if row["table"] != n:
        raise fail(f"table {row['table']} in the file of table {n}")
    if not _ROW_ID_RE.match(raw["row_id"]):
        raise fail(f"row_id {raw['row_id']!r} is empty or not a slug")
    row["row_id"] = raw["row_id"]
    if not _SLUG_RE.match(raw["method"]):
        raise fail(f"method {raw['method']!r} is not a lower-case slug")
    row["method"] = raw["method"]
    for col, allowed in (("dataset", DATASETS), ("subset", SUBSETS), ("metric", METRICS)):
        if raw[col] not in allowed:
            raise fail(f"{col} {raw[col]!r} is not one of {sorted(allowed)}")
        row[col] = raw[col]
    try:
        value = float(raw["value"])
    except ValueError:
        raise fail(f"value {raw['value']!r} is not a number") from None
    if not math.isfinite(value):
        raise fail(f"value {raw['value']!r} is not finite")
    row["value"] = value
    row["checks"] = raw["checks"].strip()
    for col, typ in switches.items():
        text = raw[col]
        if typ is bool:
            if text not in _BOOLS:
                raise fail(f"{col} {text!r} is not True/False")
            row[col] = _BOOLS[text]
        else:
            try:
                row[col] = float(text)
            except ValueError:
                raise fail(f"{col} {text!r} is not a number") from None
    return row


def _check_dtypes(df: pd.DataFrame, switches: dict[str, type], path: Path) -> None:
    expected = {"table": "int64", "value": "float64"}
    expected |= {c: ("bool" if t is bool else "float64") for c, t in switches.items()}
    for col, dtype in expected.items():
        if str(df[col].dtype) != dtype:
            raise PaperTableError(f"{path}: column {col} has dtype {df[col].dtype}, expected {dtype}")
    for col in ("row_id", "method", "dataset", "subset", "metric", "checks"):
        if not pd.api.types.is_string_dtype(df[col]):
            raise PaperTableError(f"{path}: column {col} has dtype {df[col].dtype}, expected strings")


def load_table(n: int, directory: str | Path | None = None, *, source: str = "sgmn") -> pd.DataFrame:
    """Load table ``n`` of ``source`` as a tidy frame (one row per published cell).

    Every row is validated; a malformed one raises :class:`PaperTableError` naming the file and
    line. Columns are :data:`BASE_COLUMNS` plus the table's switch columns, in that order.
    """
    path = table_path(n, directory, source=source)
    switches = SWITCH_COLUMNS.get((source, n), {})
    header = list(BASE_COLUMNS) + list(switches)
    rows: list[dict] = []
    seen: dict[tuple, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            first = next(reader)
        except StopIteration:
            raise PaperTableError(f"{path}:1: empty file") from None
        if first != header:
            raise PaperTableError(f"{path}:1: header {first} != expected {header}")
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if not fields:
                continue
            if len(fields) != len(header):
                raise PaperTableError(f"{where}: {len(fields)} fields, expected {len(header)} ({','.join(header)})")
            row = _parse_row(dict(zip(header, fields)), n, switches, where)
            key = (row["row_id"], row["dataset"], row["subset"], row["metric"])
            if key in seen:
                raise PaperTableError(f"{where}: duplicate cell {key} (first at line {seen[key]})")
            seen[key] = reader.line_num
            rows.append(row)
    if not rows:
        raise PaperTableError(f"{path}: no data rows")
    df = pd.DataFrame(rows, columns=header)
    df["table"] = df["table"].astype("int64")
    df["value"] = df["value"].astype("float64")
    _check_dtypes(df, switches, path)
    return df


def load_all(directory: str | Path | None = None, *, source: str = "sgmn") -> pd.DataFrame:
    """All tables of ``source`` stacked; switch columns are NaN / ``<NA>`` outside their table
    (bool switches use pandas' nullable ``boolean`` dtype)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    _, numbers = SOURCES[source]
    frames = []
    for n in numbers:
        df = load_table(n, directory, source=source)
        for col, typ in SWITCH_COLUMNS.get((source, n), {}).items():
            if typ is bool:
                df[col] = df[col].astype("boolean")
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    for (src, _), switches in SWITCH_COLUMNS.items():
        if src != source:
            continue
        for col, typ in switches.items():
            out[col] = out[col].astype("boolean" if typ is bool else "float64")
    return out


# ---------------------------------------------------------------------------------------------
# Consistency checks
# ---------------------------------------------------------------------------------------------


def rmean_check(df: pd.DataFrame, tol: float = TOL) -> pd.DataFrame:
    """For every row that publishes R@1, R@5, R@10 and R@mean: the computed mean beside the
    published one. Columns: table, row_id, dataset, subset, r1, r5, r10, published, computed,
    diff, ok (``|diff| <= tol``, i.e. equal "to 0.1"), exact (the computed mean rounded to one
    decimal equals the published value)."""
    keys = ["table", "row_id", "dataset", "subset"]
    wide = df[df["metric"].isin(["R@1", "R@5", "R@10", "R@mean"])].pivot_table(
        index=keys, columns="metric", values="value", aggfunc="first"
    )
    need = ["R@1", "R@5", "R@10", "R@mean"]
    if not set(need) <= set(wide.columns):
        return pd.DataFrame(columns=keys + ["r1", "r5", "r10", "published", "computed", "diff", "ok", "exact"])
    wide = wide.dropna(subset=need).reset_index()
    out = pd.DataFrame(
        {
            **{k: wide[k] for k in keys},
            "r1": wide["R@1"],
            "r5": wide["R@5"],
            "r10": wide["R@10"],
            "published": wide["R@mean"],
        }
    )
    out["computed"] = (out["r1"] + out["r5"] + out["r10"]) / 3
    out["diff"] = out["published"] - out["computed"]
    out["ok"] = out["diff"].abs() <= tol
    # round half up on the 2-decimal-clean mean (avoid binary float artefacts such as 32.45 -> 32.4)
    out["exact"] = [math.floor(round(c * 10, 6) + 0.5) / 10 == p for c, p in zip(out["computed"], out["published"])]
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class Claim:
    """One checkable statement about published cells (prose claim or cross-table identity).

    ``kind``:
      - ``diff``: ``a - b`` equals ``value`` (to :data:`TOL`)
      - ``value``: cell ``a`` equals ``value`` (the prose quotes the number)
      - ``same``: ``a`` equals ``b`` (same model, data and metric printed twice)
      - ``ratio_gt``: ``a / b`` > ``value``
      - ``geq``: ``a >= b``
      - ``within``: ``min(bs) <= a <= max(bs)`` for the cells ``bs`` (a weighted mean of them)
    A failed claim puts ``note`` on cell ``flag`` (default ``a``).
    """

    kind: str
    a: Cell
    b: Cell | tuple[Cell, ...] | None
    value: float | None
    source: str  # where the claim is made
    note: str  # what the failure means, for the checks column
    flag: Cell | None = None


def _c(table: int, row_id: str, metric: str, subset: str = "overall") -> Cell:
    return (table, row_id, subset, metric)


def _sgmn_claims() -> list[Claim]:
    cl: list[Claim] = []
    s42 = "Sec. 4.2"
    for m, d in (("R@1", 10.4), ("R@5", 3.4), ("R@10", 1.9)):
        cl.append(Claim("diff", _c(1, "sgmn", m), _c(1, "rice", m), d, s42, f"prose: SGMN beats RICE by {d} in {m}"))
    cl.append(Claim("value", _c(1, "sgmn_wo_te", "R@1"), None, 38.7, s42, "prose quotes 38.7"))
    cl.append(Claim("diff", _c(1, "sgmn_wo_te", "R@1"), _c(1, "rice", "R@1"), 5.7, s42, "prose: w/o TE beats RICE by 5.7"))
    cl.append(Claim("diff", _c(2, "sgmn", "R@1"), _c(2, "seam", "R@1"), 28.8, s42, "prose: +28.8 R@1 over SEAM"))
    cl.append(Claim("diff", _c(2, "sgmn", "R@1"), _c(2, "rice", "R@1"), 1.7, s42, "prose: +1.7 R@1 over RICE"))
    # Table 3 repeats Table 1's R@1; prose: "over 30 times faster" than AsymNet and SEAM.
    for rid in ("asymnet", "seam", "timesformer", "rice", "sgmn"):
        cl.append(Claim("same", _c(3, rid, "R@1"), _c(1, rid, "R@1"), None, "Tab. 3 vs Tab. 1", "differs from Table 1"))
    for rid in ("asymnet", "seam"):
        cl.append(
            Claim(
                "ratio_gt", _c(3, rid, "time_ms"), _c(3, "sgmn", "time_ms"), 30.0, "Sec. 4.3 (Inference Time)",
                "prose: SGMN over 30x faster than AsymNet and SEAM",
            )
        )
    # Table 4: the overall column is the full SGMN on the full LPR4M test set, as in Table 1.
    cl.append(Claim("same", _c(4, "sgmn", "R@1"), _c(1, "sgmn", "R@1"), None, "Tab. 4 vs Tab. 1", "overall differs from Table 1 SGMN R@1"))
    for rid in ("rice_patch", "rice_box", "sgmn"):
        for group in ("scale", "duration", "count"):
            parts = tuple(_c(4, rid, "R@1", s) for s in sorted(SUBSETS) if s.startswith(group + "/"))
            cl.append(
                Claim(
                    "within", _c(4, rid, "R@1"), parts, None, "Tab. 4",
                    f"overall outside the range of its {group} subsets",
                )
            )
    for sub in sorted(SUBSETS):
        for rice in ("rice_patch", "rice_box"):
            cl.append(
                Claim(
                    "geq", _c(4, "sgmn", "R@1", sub), _c(4, rice, "R@1", sub), None, "Sec. 4.3 (Generalization)",
                    "prose: SGMN consistently outperforms RICE across subsets",
                )
            )
    # Table 5: the chosen weights (0.7, 0.3) are the full model of Table 1.
    cl.append(Claim("same", _c(5, "beta_0.7_0.3", "R@1"), _c(1, "sgmn", "R@1"), None, "Sec. 4.1/4.4", "differs from Table 1"))
    # Table 6 prose (Sec. 4.4, Different Spatiotemporal Graphs).
    s44g = "Sec. 4.4 (Different Spatiotemporal Graphs)"
    cl.append(Claim("value", _c(6, "A", "R@1"), None, 38.6, s44g, "prose quotes 38.6 for the baseline"))
    cl.append(Claim("value", _c(6, "D", "R@1"), None, 40.1, s44g, "prose quotes 40.1 for G_I2V+G_V2I"))
    for rid in ("B", "C"):
        cl.append(Claim("geq", _c(6, rid, "R@1"), _c(6, "A", "R@1"), None, s44g, "prose: intra-domain graphs both gain"))
    cl.append(
        Claim(
            "diff", _c(6, "H", "R@1"), _c(6, "A", "R@1"), 2.9, s44g,
            "prose: joint graphs gain 2.9 R@1 (41.5 vs 38.6)",
        )
    )
    cl.append(Claim("value", _c(6, "H", "R@1"), None, 41.5, s44g, "prose quotes 41.5 for all graphs"))
    for m in ("R@1", "R@5", "R@10"):
        cl.append(Claim("same", _c(6, "H", m), _c(1, "sgmn", m), None, "Tab. 6 vs Tab. 1", "differs from Table 1"))
        cl.append(Claim("same", _c(7, "E", m), _c(1, "sgmn", m), None, "Tab. 7 vs Tab. 1", "differs from Table 1"))
    # Table 7 prose (Sec. 4.4, Model Component Ablation): rows are cumulative A..E.
    s44c = "Sec. 4.4 (Model Component Ablation)"
    for hi, lo, mod, d in (("B", "A", "TE", 4.5), ("C", "B", "TMC", 0.9), ("D", "C", "GCI", 2.7), ("E", "D", "SMF", 0.6)):
        cl.append(
            Claim(
                "diff", _c(7, hi, "R@1"), _c(7, lo, "R@1"), d, s44c,
                f"prose: {mod} adds {d} R@1 ({hi}-{lo})",
            )
        )
    cl.append(
        Claim(
            "diff", _c(7, "E", "R@1"), _c(7, "A", "R@1"), 8.7, s44c,
            "prose gains sum to 8.7 (A+8.7=41.5)",
        )
    )
    return cl


def _rice_claims() -> list[Claim]:
    cl: list[Claim] = []
    s23 = "RICE supp. Sec. 2.3"
    for sub in sorted(SUBSETS - {"overall"}):
        cl.append(Claim("geq", _c(1, "md", "AP50", sub), _c(1, "sd", "AP50", sub), None, s23, "prose: MD beats SD on all splits"))
    for m in ("AP", "AP50", "AP75"):
        cl.append(Claim("geq", _c(1, "md", m), _c(1, "sd", m), None, s23, "prose: MD beats SD on the whole test set"))
    cl.append(Claim("value", _c(2, "sd", "R@1"), None, 30.6, s23, "prose quotes 30.6"))
    cl.append(Claim("diff", _c(2, "md", "R@1"), _c(2, "sd", "R@1"), 0.7, s23, "prose: MD adds 0.7 R1"))
    cl.append(Claim("diff", _c(3, "pmd_hard", "R@1"), _c(3, "pmd_rand", "R@1"), 1.8, "RICE supp. Sec. 3", "prose: hard negatives add 1.8 R1"))
    return cl


CLAIMS: dict[str, list[Claim]] = {"sgmn": _sgmn_claims(), "rice": _rice_claims()}


def _cell_values(df: pd.DataFrame) -> dict[Cell, float]:
    return {
        (int(t), r, s, m): float(v)
        for t, r, s, m, v in zip(df["table"], df["row_id"], df["subset"], df["metric"], df["value"])
    }


def check_claims(df: pd.DataFrame, claims: Iterable[Claim] | None = None) -> pd.DataFrame:
    """Evaluate ``claims`` (default: the SGMN claims) on ``df`` (e.g. :func:`load_all`).

    Returns one row per claim: kind, a, b, claimed, observed, ok, source, note, flag.
    ``observed`` is the left side computed from the cells (a - b, a / b, a, ...).
    A claim whose cells are missing from ``df`` raises ``KeyError``.
    """
    cells = _cell_values(df)
    records = []
    for c in CLAIMS["sgmn"] if claims is None else claims:
        a = cells[c.a]
        if c.kind == "within":
            parts = [cells[x] for x in c.b]
            records.append(
                {
                    "kind": c.kind, "a": c.a, "b": c.b, "claimed": None, "observed": a,
                    "ok": bool(min(parts) - 1e-9 <= a <= max(parts) + 1e-9), "source": c.source,
                    "note": c.note, "flag": c.flag or c.a,
                }
            )
            continue
        b = cells[c.b] if c.b is not None else None
        if c.kind == "diff":
            observed, ok = a - b, abs(a - b - c.value) <= TOL
        elif c.kind == "value":
            observed, ok = a, abs(a - c.value) <= TOL
        elif c.kind == "same":
            observed, ok = a, abs(a - b) <= 1e-9
        elif c.kind == "ratio_gt":
            observed, ok = a / b, a / b > c.value
        elif c.kind == "geq":
            observed, ok = a - b, a >= b
        else:
            raise ValueError(f"unknown claim kind {c.kind!r}")
        records.append(
            {
                "kind": c.kind, "a": c.a, "b": c.b, "claimed": c.value if c.kind != "same" else b,
                "observed": round(observed, 6), "ok": bool(ok), "source": c.source, "note": c.note,
                "flag": c.flag or c.a,
            }
        )
    return pd.DataFrame.from_records(
        records, columns=["kind", "a", "b", "claimed", "observed", "ok", "source", "note", "flag"]
    )


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x - round(x, 1)) < 1e-9 else f"{x:.2f}"


def compute_checks(df: pd.DataFrame, *, source: str = "sgmn") -> pd.Series:
    """The ``checks`` note of every row of ``df`` (all tables of ``source``), as a Series aligned
    with ``df.index``: empty, or ``"; "``-joined notes of every failed R@mean check and claim."""
    notes: dict[Cell, list[str]] = {}
    rm = rmean_check(df)
    for r in rm[~rm["ok"]].itertuples():
        cell = (int(r.table), r.row_id, r.subset, "R@mean")
        notes.setdefault(cell, []).append(
            f"R@mean {_fmt(r.published)} != mean(R@1,R@5,R@10) {r.computed:.2f}"
        )
    cells = _cell_values(df)
    for r in check_claims(df, CLAIMS[source]).itertuples():
        if r.ok:
            continue
        if r.kind == "same":
            t, rid, sub, m = r.b
            msg = f"{r.note} ({rid} {m} {_fmt(cells[r.b])} vs {_fmt(cells[r.a])}) [{r.source}]"
        elif r.kind == "diff":
            msg = f"{r.note} but table gives {_fmt(r.observed)} [{r.source}]"
        elif r.kind == "value":
            msg = f"{r.note} but table gives {_fmt(r.observed)} [{r.source}]"
        elif r.kind == "within":
            lo, hi = min(cells[x] for x in r.b), max(cells[x] for x in r.b)
            msg = f"{r.note} [{_fmt(lo)}, {_fmt(hi)}] [{r.source}]"
        elif r.kind == "ratio_gt":
            msg = f"{r.note} but {r.a[1]}/{r.b[1]} = {r.observed:.1f}x [{r.source}]"
        else:  # geq
            msg = f"{r.note} but {r.b[1]} is higher by {_fmt(-r.observed)} [{r.source}]"
        notes.setdefault(tuple(r.flag), []).append(msg)
    keys = zip(df["table"], df["row_id"], df["subset"], df["metric"])
    return pd.Series(["; ".join(notes.get((int(t), r, s, m), [])) for t, r, s, m in keys], index=df.index, name="checks")


def write_checks(directory: str | Path | None = None, *, source: str = "sgmn") -> list[Path]:
    """Rewrite only the ``checks`` field of every CSV of ``source`` from :func:`compute_checks`
    (every other field is kept byte for byte). Returns the files that changed."""
    df = load_all(directory, source=source)
    df["checks"] = compute_checks(df, source=source)
    by_cell = {
        (int(t), r, d, s, m): c
        for t, r, d, s, m, c in zip(df["table"], df["row_id"], df["dataset"], df["subset"], df["metric"], df["checks"])
    }
    changed = []
    _, numbers = SOURCES[source]
    for n in numbers:
        path = table_path(n, directory, source=source)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], [list(fields) for fields in rows[1:]]  # copies: compare below
        i = {c: header.index(c) for c in BASE_COLUMNS}
        for fields in body:
            if fields:
                fields[i["checks"]] = by_cell[
                    (int(fields[i["table"]]), fields[i["row_id"]], fields[i["dataset"]], fields[i["subset"]], fields[i["metric"]])
                ]
        new = [header] + body
        if new != rows:
            with open(path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(new)
            changed.append(path)
    return changed
