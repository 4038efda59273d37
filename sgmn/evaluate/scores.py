"""Score tables (video_id, image_id, score): read by content, validated before any metric.

A score table is the interface between a model and the metrics (`sgmn evaluate --scores`), so
nothing in it may change a number silently. `validate_scores` stops with a `ScoreTableError`
naming the file and line (CSV) or row (Parquet) for:

- an empty id cell (after stripping), or a missing one (Parquet null / NaN);
- a score that is empty, not a number, NaN or infinite (a -inf would tie with the fill-in for
  a missing gallery score);
- the same (video_id, image_id) twice;
- missing columns.

Ids with surrounding whitespace are stripped and counted (`stripped_ids`), so " v1" matches
"v1". The format is chosen by content: Parquet by its magic bytes `PAR1`, anything else is CSV.

An LPR4M table has ~12M rows but only ~20k query and ~66k image ids, so ids are handled as
integer codes into their distinct values (a Parquet file's id columns are read as dictionaries):
stripping and the empty check run once per distinct id, the duplicate check on integer pairs.
`categorical=True` returns the ids as pandas Categoricals, which the metrics join by code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("video_id", "image_id", "score")
ID_COLUMNS = ("video_id", "image_id")
PARQUET_MAGIC = b"PAR1"


class ScoreTableError(ValueError):
    """A score table that cannot be evaluated; the message names the file and line or row."""


def is_parquet(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def _read_parquet(path: Path) -> pd.DataFrame:
    """The table with its string id columns as Categoricals (Parquet stores them as dictionary
    pages already, so no per-row Python string is made)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pq.read_schema(path)
    as_dict = [c for c in ID_COLUMNS if c in schema.names
               and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))]
    df = pq.read_table(path, read_dictionary=as_dict, memory_map=True).to_pandas(self_destruct=True)
    pa.default_memory_pool().release_unused()   # Arrow's pool would keep ~150 MB through the ranking
    return df


def read_scores(path: str | Path, categorical: bool = False) -> tuple[pd.DataFrame, dict]:
    """A validated score table and its report ({"stripped_ids": n}) from a Parquet or CSV file;
    ids as strings, or as Categoricals with `categorical` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score table {path} not found")
    if is_parquet(path):
        df = _read_parquet(path)
        where = lambda i: f"{path}: row {i + 1}"
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                             encoding="utf-8-sig")
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ScoreTableError(f"{path}: not a readable CSV score table ({str(err).splitlines()[0]})") from None
        blank = (df == "").all(axis=1) if len(df.columns) else pd.Series(False, index=df.index)
        df = df[~blank.to_numpy()]
        where = lambda i: f"{path}:{i + 2}"  # line 1 is the header
    return validate_scores(df, where, str(path), categorical)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _id_codes(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(integer code per row, -1 where missing; the distinct ids as str, object array).

    Categoricals and string columns are coded as they are; any other column is first turned into
    str row by row (as `str()` would), so e.g. the ids 1 and 1.0 stay distinct."""
    if isinstance(raw.dtype, pd.CategoricalDtype):
        codes, uniq = raw.cat.codes.to_numpy(), raw.cat.categories  # int8/16/32: no 12M int64 copy
    elif isinstance(raw.dtype, pd.StringDtype):
        codes, uniq = pd.factorize(raw)
    else:
        null = raw.isna().to_numpy()
        codes, uniq = pd.factorize(raw.astype(object).where(~null, "").astype(str))
        codes[null] = -1
    if not isinstance(uniq.dtype, pd.StringDtype):
        uniq = uniq.astype(str)
    return codes, uniq.to_numpy(dtype=object)


def _clean_ids(raw: pd.Series, col: str, where, labels) -> tuple[np.ndarray, np.ndarray, int]:
    """(codes, distinct stripped ids, rows stripped) of one id column; stripping and the empty
    check run on the distinct ids, and ids equal once stripped share one code."""
    codes, uniq = _id_codes(raw)
    text = pd.Series(uniq, dtype=object)
    clean = text.str.strip()
    empty = (clean == "").to_numpy()
    if (codes < 0).any() or empty.any():  # an empty dictionary entry may be used by no row
        bad = _first(np.append(empty, True)[codes])   # code -1 (missing) picks the appended True
        if bad is not None:
            raise ScoreTableError(f"{where(labels[bad])}: empty {col}")
    changed = (clean != text).to_numpy()
    stripped = int(np.count_nonzero(changed[codes])) if changed.any() else 0
    new_of_old, uniq_clean = pd.factorize(clean.to_numpy(dtype=object))
    if len(uniq_clean) < len(uniq):   # " v1" and "v1" merge
        codes = new_of_old[codes]
    return codes, np.asarray(uniq_clean, dtype=object), stripped


def _clean_score(values: pd.Series, where, labels) -> np.ndarray:
    """The score column as float64; a non-number or non-finite cell names its row."""
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        numeric = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
        bad = _first(numeric.isna().to_numpy())
        if bad is not None:
            raise ScoreTableError(f"{where(labels[bad])}: score {values.iloc[bad]!r} is not a number")
        values = numeric
    score = values.to_numpy(dtype=float)
    bad = _first(~np.isfinite(score))
    if bad is not None:
        raise ScoreTableError(f"{where(labels[bad])}: score {score[bad]} is not finite")
    return score


def first_duplicate(key: np.ndarray) -> int | None:
    """Position of the first value seen before (None when all differ). A table written query by
    query in gallery order has increasing keys, checked in one pass; else a sort decides, and
    only a table that has a duplicate pays for finding which row."""
    if len(key) < 2 or (key[1:] > key[:-1]).all():
        return None
    ordered = np.sort(key)
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    return _first(pd.Series(key).duplicated().to_numpy())


def validate_scores(df: pd.DataFrame, where=None, source: str = "scores",
                    categorical: bool = False) -> tuple[pd.DataFrame, dict]:
    """Check and normalise a score table; `where(i)` names the position of the frame's i-th row
    (by its index label), e.g. "file.csv:12". Returns (clean table, report); the clean ids are
    str, or Categoricals of the stripped distinct ids with `categorical`."""
    where = where or (lambda i: f"{source}: row {i + 1}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ScoreTableError(f"{source}: score table lacks columns {missing} (needs video_id, image_id, score)")
    labels = df.index  # looked up only for an error: a RangeIndex stays unmaterialised
    ids, stripped = {}, 0
    for col in ID_COLUMNS:
        codes, uniq, n = _clean_ids(df[col], col, where, labels)
        ids[col], stripped = (codes, uniq), stripped + n
    score = _clean_score(df["score"], where, labels)
    (vc, vu), (ic, iu) = ids["video_id"], ids["image_id"]
    pair = vc.astype(np.int64) * max(len(iu), 1) + ic
    bad = first_duplicate(pair)
    if bad is not None:
        first = _first(pair == pair[bad])
        raise ScoreTableError(f"{where(labels[bad])}: duplicate score for (video_id, image_id) = "
                              f"({vu[vc[bad]]!r}, {iu[ic[bad]]!r}), first at {where(labels[first])}")
    if categorical:
        cols = {c: pd.Categorical.from_codes(codes, categories=pd.Index(uniq, dtype=object), validate=False)
                for c, (codes, uniq) in ids.items()}
    else:
        cols = {c: uniq[codes] for c, (codes, uniq) in ids.items()}
    return pd.DataFrame({**cols, "score": score}), {"stripped_ids": stripped}
