"""Fuzzing the readers: mutated annotation files and score tables either stop with an error
that names a file, or give the metrics of a simple reference implementation on the same parsed
data (with every problem listed). And any order of a score table's rows gives the same metrics.

Bounded (hypothesis, a few dozen examples each, no deadline) so CI stays fast.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgmn.config import ConfigError
from sgmn.data import lpr4m
from sgmn.data.records import AnnotationError
from sgmn.evaluate.metrics import compute_metrics
from sgmn.evaluate.run import build_queries, metrics_from_scores
from sgmn.evaluate.scores import ScoreTableError, read_scores

FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"
NAMED_ERRORS = (AnnotationError, ScoreTableError, ConfigError, FileNotFoundError)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def reference_recall(test, scores: pd.DataFrame) -> dict:
    """R@1/5/10 by the protocol, written plainly: each query against its own gallery, missing
    scores last, ties by image id, the best-ranked ground truth; unrankable queries are misses."""
    by_query: dict[str, dict[str, float]] = {}
    for v, i, s in scores[["video_id", "image_id", "score"]].itertuples(index=False):
        by_query.setdefault(v, {})[i] = s
    ranks = []
    for q in test.queries:
        gallery = list(dict.fromkeys(test.gallery_of(q)))
        gt = set(test.gt.get(q.video_id, ()))
        mine = by_query.get(q.video_id, {})
        scored = [g for g in gallery if g in mine]
        if not gallery or not gt & set(gallery) or not scored:
            ranks.append(math.inf)
            continue
        order = sorted(gallery, key=lambda g: (-mine.get(g, -math.inf), g))
        ranks.append(1 + min(order.index(g) for g in gt if g in order))
    n = len(ranks)
    return {f"R@{k}": 100.0 * sum(r <= k for r in ranks) / n for k in (1, 5, 10)}


def _base_scores(root: Path, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    test = lpr4m.read_test(root)
    rows = [(q.video_id, g, round(rng.uniform(-1, 1), 2)) for q in test.queries for g in test.gallery_of(q)]
    return pd.DataFrame(rows, columns=["video_id", "image_id", "score"])


# ---------------------------------------------------------------- mutations
def _mutate_json(path: Path, rng: random.Random) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    keys = list(obj)
    kind = rng.choice(["delete", "retype", "duplicate", "swap", "perturb", "strip"])
    key = rng.choice(keys)
    if kind == "delete":
        del obj[key]
    elif kind == "retype":
        obj[key] = rng.choice([None, 7, "x", {}, [1, 2]])
    elif kind == "swap" and len(keys) > 1:
        other = rng.choice(keys)
        obj[key], obj[other] = obj[other], obj[key]
    elif kind == "perturb":
        value = obj[key]
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            j = rng.randrange(len(value))
            value[j] = value[j] + rng.choice([-0.5, -0.005, 0.005, 0.5, 40.0])
        elif isinstance(value, list) and value and isinstance(value[0], list) and value[0]:
            j = rng.randrange(len(value[0]))
            value[0][j] = value[0][j] + rng.choice([-0.5, -0.005, 0.005, 0.5, 40.0])
    elif kind == "strip":
        obj[f" {key}"] = obj.pop(key)
    text = json.dumps(obj)
    if kind == "duplicate":   # the same key twice, at the text level
        text = text.replace("{", "{" + json.dumps(key) + ": " + json.dumps(obj[key]) + ", ", 1)
    path.write_text(text, encoding="utf-8")


def _mutate_text(path: Path, rng: random.Random) -> None:
    raw = path.read_bytes()
    kind = rng.choice(["bom", "blank", "drop", "tabs"])
    lines = raw.split(b"\n")
    if kind == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif kind == "blank":
        lines.insert(rng.randrange(len(lines) + 1), b"")
        raw = b"\n".join(lines)
    elif kind == "drop" and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
        raw = b"\n".join(lines)
    elif kind == "tabs":
        j = rng.randrange(len(lines))
        lines[j] = lines[j] + b"\textra"
        raw = b"\n".join(lines)
    path.write_bytes(raw)


def _mutate_scores(df: pd.DataFrame, rng: random.Random) -> pd.DataFrame:
    df = df.astype({"score": object}).copy()
    kind = rng.choice(["delete", "duplicate", "retype", "blank_id", "pad_id", "stray", "inf"])
    r = rng.randrange(len(df))
    if kind == "delete":
        df = df.drop(index=r)
    elif kind == "duplicate":
        df = pd.concat([df, df.iloc[[r]]])
    elif kind == "retype":
        df.iloc[r, 2] = rng.choice(["", "NA", "high", "1e400"])
    elif kind == "blank_id":
        df.iloc[r, rng.randrange(2)] = rng.choice(["", "  "])
    elif kind == "pad_id":
        df.iloc[r, 0] = f" {df.iloc[r, 0]}\t"
    elif kind == "stray":
        df = pd.concat([df, pd.DataFrame([("stray", df.iloc[r, 1], 0.5)], columns=df.columns)])
    elif kind == "inf":
        df.iloc[r, 2] = "-inf"
    return df.reset_index(drop=True)


def _evaluate_or_error(root: Path, scores_path: Path):
    """(metrics, parsed test, clean scores) or the named error."""
    try:
        test = lpr4m.read_test(root)
        scores, _ = read_scores(scores_path)
        metrics, _ = metrics_from_scores(test, scores)
    except NAMED_ERRORS as err:
        return err
    return metrics, test, scores


def _check(outcome, root: Path, scores_path: Path) -> None:
    if isinstance(outcome, Exception):
        message = str(outcome)
        assert str(root) in message or str(scores_path) in message or "score table" in message, message
        return
    metrics, test, scores = outcome
    want = reference_recall(test, scores)
    for k, v in want.items():
        assert math.isclose(metrics["overall"][k], v, abs_tol=1e-4), (k, metrics["overall"][k], v)
    assert metrics["overall"]["n"] == len(test.queries)


@SETTINGS
@given(seed=st.integers(0, 10_000), target=st.sampled_from(
    ["test_videoid_to_gtimage_*.json", "test_liveid_to_gallery_*.json", "test_frameid2gtbox_*.json",
     "test_videoid_asr_*.txt", "test_image_title_*.txt"]))
def test_mutated_annotation_files_error_by_name_or_match_the_reference(seed, target):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lpr4m"
        shutil.copytree(FIXTURE, root)
        scores_path = Path(tmp) / "scores.csv"
        _base_scores(root, seed).to_csv(scores_path, index=False)
        path = next(root.glob(target))
        (_mutate_json if path.suffix == ".json" else _mutate_text)(path, rng)
        _check(_evaluate_or_error(root, scores_path), root, scores_path)


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3))
def test_mutated_score_tables_error_by_name_or_match_the_reference(seed, n):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        scores = _base_scores(FIXTURE, seed)
        for _ in range(n):
            scores = _mutate_scores(scores, rng)
        scores_path = Path(tmp) / "scores.csv"
        scores.to_csv(scores_path, index=False)
        _check(_evaluate_or_error(FIXTURE, scores_path), FIXTURE, scores_path)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(order=st.permutations(range(len(_base_scores(FIXTURE, 0)))), seed=st.integers(0, 100))
def test_any_order_of_the_score_rows_gives_the_same_metrics(order, seed):
    test = lpr4m.read_test(FIXTURE)
    queries = build_queries(test)
    scores = _base_scores(FIXTURE, seed)
    scores.loc[0, "score"] = scores.loc[1, "score"]   # a tie: the tie-break must not depend on row order
    a = compute_metrics(scores, queries, {})
    b = compute_metrics(scores.iloc[list(order)].reset_index(drop=True), queries, {})
    assert a == b
