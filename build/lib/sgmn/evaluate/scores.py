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
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("video_id", "image_id", "score")
PARQUET_MAGIC = b"PAR1"


class ScoreTableError(ValueError):
    """A score table that cannot be evaluated; the message names the file and line or row."""


def is_parquet(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def read_scores(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A validated score table and its report ({"stripped_ids": n}) from a Parquet or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score table {path} not found")
    if is_parquet(path):
        df = pd.read_parquet(path)
        where = lambda i: f"{path}: row {i + 1}"  # noqa: E731
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False,
                             encoding="utf-8-sig")
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise ScoreTableError(f"{path}: not a readable CSV score table ({str(err).splitlines()[0]})") from None
        blank = (df == "").all(axis=1) if len(df.columns) else pd.Series(False, index=df.index)
        df = df[~blank.to_numpy()]
        where = lambda i: f"{path}:{i + 2}"  # noqa: E731  (line 1 is the header)
    return validate_scores(df, where, str(path))


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def validate_scores(df: pd.DataFrame, where=None, source: str = "scores") -> tuple[pd.DataFrame, dict]:
    """Check and normalise a score table; `where(i)` names the position of the frame's i-th row
    (by its index label), e.g. "file.csv:12". Returns (clean table, report)."""
    where = where or (lambda i: f"{source}: row {i + 1}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ScoreTableError(f"{source}: score table lacks columns {missing} (needs video_id, image_id, score)")
    labels = np.asarray(df.index)
    out = {}
    stripped = 0
    for col in ("video_id", "image_id"):
        raw = df[col]
        null = raw.isna().to_numpy()
        text = raw.astype(object).where(~null, "").astype(str)
        clean = text.str.strip()
        bad = _first(null | (clean == "").to_numpy())
        if bad is not None:
            raise ScoreTableError(f"{where(labels[bad])}: empty {col}")
        stripped += int((clean != text).sum())
        out[col] = clean.to_numpy(dtype=object)
    values = df["score"]
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
    clean = pd.DataFrame({"video_id": out["video_id"], "image_id": out["image_id"], "score": score})
    dup = clean.duplicated(["video_id", "image_id"]).to_numpy()
    bad = _first(dup)
    if bad is not None:
        first = _first(((clean["video_id"] == clean["video_id"].iloc[bad])
                        & (clean["image_id"] == clean["image_id"].iloc[bad])).to_numpy())
        raise ScoreTableError(f"{where(labels[bad])}: duplicate score for (video_id, image_id) = "
                              f"({clean['video_id'].iloc[bad]!r}, {clean['image_id'].iloc[bad]!r}), "
                              f"first at {where(labels[first])}")
    return clean, {"stripped_ids": stripped}
