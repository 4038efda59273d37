"""Time `sgmn evaluate --scores` on an LPR4M-sized score table (not a test).

    python scripts/bench_evaluate.py generate --out /tmp/eval_bench
    python scripts/bench_evaluate.py run --dir /tmp/eval_bench [--gallery main_images]

`generate` writes LPR4M's test files (docs/data_formats.md) at LPR4M's test scale
(shared/spec/lpr4m_format.md): 110 lives (UUIDs) with 66,358 shop images (bare UUIDs, ~600 a
live), 6,076 of them titled (main images), 20,079 query clips `{live}-{start_ms}-{end_ms}` spread
over the lives with one ground truth (5% two), 426,751 annotated frames `{clip}-{NNNN}` (one every
3 s) with normalised boxes, ASR and categories; no frame or image files (`--scores` reads none).
`scores.parquet` scores every query against every image of its live (~12M rows), float32 as a
model run writes it, ids as plain string columns (sgmn's own `--scores-out`; `--dictionary`
writes them dictionary-typed instead). The ground truth is scored higher on average, so the
metrics are neither 0 nor 100, and float32 rounding leaves a few ties.

`run` times `sgmn evaluate --data DIR --scores DIR/scores.parquet` as a subprocess and prints
one JSON line: wall seconds, the child's CPU seconds (user + system: less sensitive than wall
time to other load on a shared machine) and its peak RSS (getrusage RUSAGE_CHILDREN).
To time another copy of the suite, run from outside this checkout (the working directory comes
first on the child's sys.path) with PYTHONPATH=COPY (a directory holding its `sgmn` package).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LIVES, IMAGES, TITLES, QUERIES, FRAMES = 110, 66_358, 6_076, 20_079, 426_751
CATEGORIES = [f"category_{i:02d}" for i in range(34)]
GT_BONUS = 2.5     # mean score margin of the ground truth over the other images


def _uuids(rng, n: int) -> list[str]:
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def _split(rng, total: int, parts: int) -> np.ndarray:
    """`total` spread over `parts` (each at least 1), roughly evenly with some spread."""
    weights = rng.uniform(0.5, 1.5, parts)
    counts = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(np.int64)
    counts[: total - counts.sum()] += 1      # the remainder, one each to the first lives
    return counts


def _live_test(rng, live: str, n_img: int, n_titled: int, n_q: int, frames: np.ndarray) -> dict:
    """One live's gallery, titles, queries, ground truth and annotated frames."""
    images = _uuids(rng, n_img)
    titled = images[:n_titled]
    starts = np.sort(rng.choice(10_000_000, n_q, replace=False)) * 1000
    clips = [f"{live}-{s}-{s + 3000 * f}" for s, f in zip(starts, frames)]
    gt = {c: [titled[i] for i in rng.choice(n_titled, 2 if rng.random() < 0.05 else 1, replace=False)]
          for c in clips}
    boxes = {}
    for clip, n_f in zip(clips, frames):
        for t in range(n_f):
            k = int(rng.integers(0, 4))
            xy = np.round(np.sort(rng.uniform(0, 1, (k, 2, 2)), axis=1).reshape(k, 4), 4)  # x1 y1 x2 y2
            boxes[f"{clip}-{3 * t:04d}"] = xy.tolist()
    return {"images": images, "titled": titled, "clips": clips, "gt": gt, "boxes": boxes}


def _scores(rng, lives: list[dict], dictionary: bool) -> pa.Table:
    """Every query against every image of its live, in query then gallery order (as
    sgmn.evaluate.run.score_table writes it)."""
    vids = [c for lv in lives for c in lv["clips"]]
    imgs = [i for lv in lives for i in lv["images"]]
    vcode, icode, is_gt = [], [], []
    v0 = i0 = 0
    for lv in lives:
        nq, ng = len(lv["clips"]), len(lv["images"])
        vcode.append(np.repeat(np.arange(v0, v0 + nq, dtype=np.int32), ng))
        icode.append(np.tile(np.arange(i0, i0 + ng, dtype=np.int32), nq))
        pos = {img: j for j, img in enumerate(lv["images"])}
        flags = np.zeros((nq, ng), bool)
        for q, clip in enumerate(lv["clips"]):
            flags[q, [pos[g] for g in lv["gt"][clip]]] = True
        is_gt.append(flags.ravel())
        v0, i0 = v0 + nq, i0 + ng
    vcode, icode, is_gt = np.concatenate(vcode), np.concatenate(icode), np.concatenate(is_gt)
    score = (rng.standard_normal(len(vcode)) + GT_BONUS * is_gt).astype(np.float32)
    columns = {}
    for name, codes, uniq in (("video_id", vcode, vids), ("image_id", icode, imgs)):
        arr = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(uniq, pa.string()))
        columns[name] = arr if dictionary else arr.cast(pa.string())
    columns["score"] = pa.array(score)
    return pa.table(columns)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n", encoding="utf-8")


def _write_tsv(path: Path, rows) -> None:
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")


def generate(out: Path, seed: int, dictionary: bool, n_frames: int = FRAMES) -> dict:
    """Write the test files and scores.parquet under `out`; returns a summary."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    live_ids = _uuids(rng, LIVES)
    n_img, n_titled, n_q = _split(rng, IMAGES, LIVES), _split(rng, TITLES, LIVES), _split(rng, QUERIES, LIVES)
    frames = _split(rng, max(n_frames, QUERIES), QUERIES)
    lives, f0 = [], 0
    for live, ni, nt, nq in zip(live_ids, n_img, n_titled, n_q):
        lives.append(_live_test(rng, live, int(ni), int(nt), int(nq), frames[f0:f0 + nq]))
        f0 += nq
    gt = {c: g for lv in lives for c, g in lv["gt"].items()}
    boxes = {f: b for lv in lives for f, b in lv["boxes"].items()}
    clips = sorted(gt)
    _write_tsv(out / f"test_videoid_asr_{len(clips)}.txt", ((c, f"asr of clip {i}") for i, c in enumerate(clips)))
    titled = [t for lv in lives for t in lv["titled"]]
    _write_tsv(out / f"test_image_title_{len(titled)}.txt", ((t, f"title {i}") for i, t in enumerate(titled)))
    _write_json(out / f"test_videoid_to_gtimage_{len(clips)}.json", gt)
    _write_json(out / f"test_liveid_to_gallery_{LIVES}.json", {lid: lv["images"] for lid, lv in zip(live_ids, lives)})
    _write_json(out / f"test_frameid2gtbox_{len(clips)}_{len(boxes)}.json", boxes)
    cats = rng.integers(0, len(CATEGORIES), len(clips))
    _write_tsv(out / f"test_videoid_category_{len(clips)}.txt", ((c, k, CATEGORIES[k]) for c, k in zip(clips, cats)))
    table = _scores(rng, lives, dictionary)
    pq.write_table(table, out / "scores.parquet")
    return {"dir": str(out), "lives": LIVES, "images": int(n_img.sum()), "titled": len(titled),
            "queries": len(clips), "frames": len(boxes), "score_rows": table.num_rows,
            "parquet_bytes": (out / "scores.parquet").stat().st_size}


EVALUATE = "import sys; from sgmn.cli import main; sys.exit(main(sys.argv[1:]))"


def run(data: Path, scores: Path, gallery: str | None, out: Path) -> dict:
    """Wall time and peak RSS of one `sgmn evaluate --scores` subprocess."""
    cmd = [sys.executable, "-c", EVALUATE, "evaluate", "--data", str(data), "--scores", str(scores),
           "--out", str(out)] + (["--gallery", gallery] if gallery else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"sgmn evaluate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)   # the one child run so far
    metrics = json.loads(out.read_text())
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "scores": str(scores),
            "gallery_unit": metrics["gallery_unit"], "overall": metrics["overall"],
            "n_misses": metrics["n_misses"], "mean_gallery_size": metrics["mean_gallery_size"],
            "command": " ".join(cmd[:2] + ["'<sgmn.cli main>'"] + cmd[3:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write LPR4M-sized test annotations and scores.parquet")
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dictionary", action="store_true", help="write the id columns dictionary-typed")
    g.add_argument("--frames", type=int, default=FRAMES,
                   help=f"annotated test frames over all clips, at least one a clip (LPR4M: {FRAMES})")
    r = sub.add_parser("run", help="time `sgmn evaluate --scores` end to end (JSON on stdout)")
    r.add_argument("--dir", required=True, type=Path)
    r.add_argument("--scores", type=Path, help="default: DIR/scores.parquet")
    r.add_argument("--gallery", choices=["all_images", "main_images"])
    r.add_argument("--metrics-out", type=Path, help="default: DIR/bench_metrics.json")
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        print(json.dumps(generate(args.out, args.seed, args.dictionary, args.frames)))
    else:
        print(json.dumps(run(args.dir, args.scores or args.dir / "scores.parquet", args.gallery,
                             args.metrics_out or args.dir / "bench_metrics.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
