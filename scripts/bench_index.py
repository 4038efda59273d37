"""Time `sgmn index` (sgmn.data.shard_index.build_index) on img2dataset files-format shards.

    python scripts/bench_index.py generate --dir /tmp/idx_bench --rows 1000000
    /usr/bin/time -v python scripts/bench_index.py build --dir /tmp/idx_bench --processes 2

`generate` writes `rows` sidecars as img2dataset's files writer does (NNNNN/KKKKKKKKK.jpg +
.json with indent=4, NNNNN.parquet and NNNNN_stats.json per shard of `per_shard`), for LPR4M-like
frame ids (118 frames a clip, LPR4M's mean); 2% of the urls failed (a parquet row, no files).
The JPEGs of a shard are hard links to one small JPEG: the index lists image names but never
reads their bytes, and 1M distinct files would only cost disk. `build` times the index (and a
million lookups) and prints one JSON line; the page cache is as `generate` left it (warm).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FRAMES_PER_CLIP = 118   # LPR4M: ~473M frames over ~4M clips
FAILED_EVERY = 50       # 2% of the urls failed to download


def frame_ids(rows: int, seed: int = 0):
    """LPR4M-shaped frame ids: {live uuid}-{start ms}-{end ms}-{NNNN}."""
    rng = np.random.default_rng(seed)
    for c in range(math.ceil(rows / FRAMES_PER_CLIP)):
        live = uuid.UUID(bytes=rng.bytes(16), version=4)
        start = int(rng.integers(0, 10_000_000))
        clip = f"{live}-{start}-{start + FRAMES_PER_CLIP * 1000}"
        for f in range(FRAMES_PER_CLIP):
            yield f"{clip}-{f:04d}"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _sidecar(url: str, key: str, ok: bool) -> dict:
    """img2dataset 1.47's sidecar fields (url, key, status, sizes, exif, sha256)."""
    return {"url": url, "key": key, "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else "HTTP Error 404: Not Found", "width": 455 if ok else None,
            "height": 256 if ok else None, "original_width": 1280 if ok else None,
            "original_height": 720 if ok else None, "exif": "{}" if ok else None,
            "sha256": "9f" * 32 if ok else None}


def write_shard(folder: Path, shard_id: int, ids: list[str], per_shard: int, jpeg: Path) -> None:
    """One shard as img2dataset's FilesSampleWriter, BufferedParquetWriter and write_stats do."""
    name, oom = f"{shard_id:05d}", math.ceil(math.log10(per_shard))
    sub = folder / name
    sub.mkdir()
    metas = []
    for i, item in enumerate(ids):
        key = f"{shard_id * 10 ** oom + i:0{oom + 5}d}"
        ok = (shard_id * per_shard + i) % FAILED_EVERY != 0
        meta = _sidecar(f"https://cdn.example.com/lpr4m/frames/{item}.jpg", key, ok)
        metas.append(meta)
        if ok:
            os.link(jpeg, sub / f"{key}.jpg")
            with open(sub / f"{key}.json", "w") as fh:
                fh.write(json.dumps(meta, indent=4))
    pq.write_table(pa.Table.from_pylist(metas), folder / f"{name}.parquet")
    ok = sum(m["status"] == "success" for m in metas)
    (folder / f"{name}_stats.json").write_text(json.dumps(
        {"count": len(metas), "successes": ok, "failed_to_download": len(metas) - ok, "failed_to_resize": 0,
         "duration": 1.0, "status_dict": {"success": ok}}, indent=4))


def generate(folder: Path, rows: int, per_shard: int) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "shards").mkdir(parents=True)
    start, ids = time.perf_counter(), frame_ids(rows)
    for shard_id in range(math.ceil(rows / per_shard)):
        jpeg = folder / f"one_{shard_id}.jpg"   # a hard-link target per shard (ext4: < 65000 links)
        jpeg.write_bytes(_jpeg())
        chunk = [next(ids) for _ in range(min(per_shard, rows - shard_id * per_shard))]
        write_shard(folder / "shards", shard_id, chunk, per_shard, jpeg)
    return {"generated_rows": rows, "generate_s": round(time.perf_counter() - start, 1)}


def build(folder: Path, processes: int) -> dict:
    from sgmn.data.shard_index import IndexMedia, ShardIndex, build_index
    out = folder / "index"
    start = time.perf_counter()
    report = build_index([folder / "shards"], out, processes=processes)
    built = time.perf_counter() - start
    index = ShardIndex(out)
    ids = [index.id_at(r) for r in range(0, len(index), max(1, len(index) // 1000))]
    start = time.perf_counter()
    for _ in range(1000):
        assert (index.rows(ids) >= 0).all()
    bulk = (time.perf_counter() - start) / (1000 * len(ids))
    media, start = IndexMedia(out), time.perf_counter()
    for item in ids:
        media.read(item)
    single = (time.perf_counter() - start) / len(ids)
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"rows": report["rows"], "shards": report["shards"], "failed_downloads": report["failed_downloads"]["count"],
            "build_s": round(built, 1), "processes": processes, "index_bytes": size,
            "bytes_per_row": round(size / report["rows"], 1), "lookup_us_bulk": round(bulk * 1e6, 2),
            "lookup_and_read_us": round(single * 1e6, 1),
            "main_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["generate", "build"])
    p.add_argument("--dir", required=True, type=Path, help="scratch directory (replaced by generate)")
    p.add_argument("--rows", type=int, default=1_000_000, help="urls generated (2%% of them failed)")
    p.add_argument("--per-shard", type=int, default=10_000, help="img2dataset's number_sample_per_shard")
    p.add_argument("--processes", type=int, default=2, help="index worker processes")
    args = p.parse_args(argv)
    if args.step == "generate":
        result = generate(args.dir, args.rows, args.per_shard)
    else:
        result = build(args.dir, args.processes)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
