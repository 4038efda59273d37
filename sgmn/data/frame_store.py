"""Decoded frames and shop images of a dataset, stored once as uint8 and memory-mapped.

Every training step and every evaluation otherwise decodes the same JPEGs (or videos) again: on
the CPU default that is about a fifth of training and a third of evaluation (README, "Where the
time goes"); a MovingFashion-layout video costs ~0.1 s per clip. `sgmn frame-store` decodes each
frame and image of a root once, squashes it to the model's input size exactly as
sgmn.data.frames does, and writes

    pixels.npy   (N, S, S, 3) uint8, one row per file (or per sampled video frame)
    index.json   {"version", "size", "files": [path relative to the root], "signature",
                  "num_frames", "videos": {video path: [frame count, first row, rows]}}

A video (MovingFashion layout) keeps the `num_frames` frames that sgmn.data.frames samples from
it (evenly spaced, so always the same ones); a clip read at another L is decoded as before.

The loaders then read rows instead of files, with identical tensors (tests/test_frame_store.py).
The signature hashes each stored file's path, size and modification time: a store opened
against a root whose files changed is refused, never silently used. A file that could not be
decoded is not stored, so reading it fails as it would without a store. Frames and images read
through a shard index (`build(..., index=DIR)`, sgmn.data.shard_index) are stored under their
LPR4M-layout paths; the signature then hashes those and the index's shard fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sgmn.data.frames import FrameReadError, _resized, read_image, read_video
from sgmn.data.shard_index import ShardIndex, ShardRef, fingerprint

log = logging.getLogger(__name__)
VERSION = 2  # 2: videos (num_frames, videos)


class FrameStoreError(RuntimeError):
    """A store that does not belong to this root (or is stale); the message says how to rebuild."""


def _signature(root: Path, files: list[str]) -> str:
    h = hashlib.sha1()
    for rel in files:
        st = os.stat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _index_signature(index: str | Path, files: list[str]) -> str:
    """The signature of files read through a shard index: their paths, the index's id rule and
    size, and its shards' fingerprint now (a shard rewritten since changes it)."""
    meta = ShardIndex(index).meta
    h = hashlib.sha1(json.dumps([fingerprint(meta["shards"]), meta["id_pattern"], meta["id_field"],
                                 meta["rows"]]).encode())
    for rel in files:
        h.update(f"{rel}\n".encode())
    return h.hexdigest()


def _rel_of(path, root: Path) -> str:
    """The path under `root` of a file, or the LPR4M-layout path of a ShardRef."""
    return path.rel if isinstance(path, ShardRef) else os.path.relpath(path, root)


def dataset_sources(root: str | Path, fmt: str = "lpr4m", index: str | Path | None = None
                    ) -> tuple[dict, list[str]]:
    """({relative path: what read_image reads}, relative video files) of every frame and shop
    image of an LPR4M-layout root (through `index` when given); MovingFashion's shop images and
    videos."""
    from sgmn.data.datasets import read_split
    root = Path(root)
    train, test = read_split(root, fmt, "train", "skip", index=index), read_split(root, fmt, "test", index=index)
    paths = [p for c in train + test.queries for p in (c.frame_paths or [])]
    paths += [c.image_path for c in train] + list(test.image_paths.values())
    videos = {c.video_path for c in train + test.queries if c.video_path is not None}
    return {_rel_of(p, root): p for p in paths}, sorted({_rel_of(v, root) for v in videos})


def dataset_files(root: str | Path, fmt: str = "lpr4m", index: str | Path | None = None
                  ) -> tuple[list[str], list[str]]:
    """(image files, video files) the loaders can read under `root`, relative, sorted."""
    sources, videos = dataset_sources(root, fmt, index)
    return sorted(sources), videos


def _video_rows(root: Path, videos: list[str], num_frames: int, size: int):
    """Yield (video, frame count, (k, size, size, 3) sampled frames) or (video, error, None)."""
    for rel in videos:
        try:
            rgb, n = read_video(root / rel, num_frames)
        except FrameReadError as err:
            yield rel, str(err), None
            continue
        yield rel, n, np.stack([_resized(a, size) for a in rgb])


def build(root: str | Path, size: int, out: str | Path, fmt: str = "lpr4m", num_frames: int = 8,
          index: str | Path | None = None) -> Path:
    """Decode every file of `root` (read through the shard index `index` when given) at `size`
    into `out` (written to a sibling, then renamed); videos keep the `num_frames` frames the
    loaders sample."""
    root, out = Path(root), Path(out)
    sources, videos = dataset_sources(root, fmt, index)
    files = sorted(sources)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    capacity = len(files) + len(videos) * num_frames
    pixels = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(capacity, size, size, 3))
    kept, failed, stored_videos, row = [], [], {}, 0
    for rel in tqdm(files, desc="frame store: images", file=sys.stderr, mininterval=15.0):
        try:
            pixels[row] = _resized(read_image(sources[rel]), size)
        except FrameReadError as err:
            failed.append(str(err))
            continue
        kept.append(rel)
        row += 1
    for rel, n, frames in tqdm(_video_rows(root, videos, num_frames, size), total=len(videos),
                               desc="frame store: videos", file=sys.stderr, mininterval=15.0):
        if frames is None:
            failed.append(n)
            continue
        pixels[row: row + len(frames)] = frames
        stored_videos[rel] = [n, row, len(frames)]
        row += len(frames)
    pixels.flush()
    del pixels
    if row < capacity:  # keep only the rows written
        full = np.load(tmp / "pixels.npy", mmap_mode="r")
        np.save(tmp / "pixels.part.npy", full[:row])
        del full
        os.replace(tmp / "pixels.part.npy", tmp / "pixels.npy")
    signature = (_signature(root, kept + sorted(stored_videos)) if index is None
                 else _index_signature(index, kept))
    meta = {"version": VERSION, "size": size, "files": kept, "signature": signature, "unreadable": failed,
            "num_frames": num_frames, "videos": stored_videos,
            "shard_index": None if index is None else str(Path(index).resolve())}
    (tmp / "index.json").write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("stored %d files and %d videos (%d frames each at most) at %d px in %s (%d unreadable, not stored)",
             len(kept), len(stored_videos), num_frames, size, out, len(failed))
    return out


class FrameStore:
    """Rows of a built store, looked up by the paths the loaders build under `root`."""

    def __init__(self, store: str | Path, root: str | Path):
        store, self.root = Path(store), Path(root)
        index_path = store / "index.json"
        if not index_path.is_file():
            raise FrameStoreError(f"{store}: not a frame store (no index.json); build it with "
                                  f"`sgmn frame-store --data {root} --out {store}`")
        index = json.loads(index_path.read_text())
        if index.get("version") != VERSION:
            raise FrameStoreError(f"{store}: store version {index.get('version')}, this suite reads "
                                  f"{VERSION}: rebuild it with `sgmn frame-store`")
        self.videos = index.get("videos", {})
        self.num_frames = index.get("num_frames")
        signature = self._signature(store, index)
        if signature != index["signature"]:
            raise FrameStoreError(f"{store} is stale: files under {root} changed since it was built "
                                  f"(rebuild it with `sgmn frame-store --data {root} --out {store}`)")
        self.size = int(index["size"])
        self.rows = {rel: i for i, rel in enumerate(index["files"])}
        self.pixels = np.load(store / "pixels.npy", mmap_mode="r")
        self._prefix = str(self.root) + os.sep

    def _signature(self, store: Path, index: dict) -> str:
        """The signature of the files as they are now (refused when one is missing)."""
        if index.get("shard_index"):
            try:
                return _index_signature(index["shard_index"], index["files"])
            except (FileNotFoundError, LookupError) as err:
                raise FrameStoreError(f"{store}: its shard index cannot be checked ({err})") from None
        try:
            return _signature(self.root, index["files"] + sorted(self.videos))
        except FileNotFoundError as err:
            raise FrameStoreError(f"{store} does not belong to {self.root}: {err.filename} is missing") from None

    def _rel(self, path) -> str:
        if isinstance(path, ShardRef):
            return path.rel
        path = str(path)
        return path[len(self._prefix):] if path.startswith(self._prefix) else os.path.relpath(path, self.root)

    def get(self, path: str | Path, size: int) -> np.ndarray | None:
        """The stored (size, size, 3) uint8 pixels of `path`, or None (not stored, other size)."""
        if size != self.size:
            return None
        row = self.rows.get(self._rel(path))
        return None if row is None else np.array(self.pixels[row])  # a writable copy

    def get_video(self, path: str | Path, num: int, size: int) -> tuple[np.ndarray, int] | None:
        """The (k, size, size, 3) frames sampled from a video at L = num and its frame count,
        or None (not stored, another L or size)."""
        entry = self.videos.get(self._rel(path))
        if entry is None or size != self.size or num != self.num_frames:
            return None
        n, row, k = entry
        return np.array(self.pixels[row: row + k]), n


def open_store(store: str | Path | None, root: str | Path) -> FrameStore | None:
    """FrameStore(store, root), or None when no store is given."""
    return None if store in (None, "") else FrameStore(store, root)
