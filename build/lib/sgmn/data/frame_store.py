"""Decoded frames and shop images of a dataset, stored once as uint8 and memory-mapped.

Every training step and every evaluation otherwise decodes the same JPEGs again: on the CPU
default that is about a fifth of training and a third of evaluation (README, "Where the time
goes"). `sgmn frame-store` decodes each frame and image of an LPR4M-layout root once, squashes
it to the model's input size exactly as sgmn.data.frames does, and writes

    pixels.npy   (N, S, S, 3) uint8, one row per file
    index.json   {"version", "size", "files": [path relative to the root], "signature"}

The loaders then read rows instead of files, with identical tensors (tests/test_frame_store.py).
The signature hashes each stored file's path, size and modification time: a store opened
against a root whose files changed is refused, never silently used. A file that could not be
decoded is not stored, so reading it fails as it would without a store.
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

from sgmn.data.frames import FrameReadError, _resized, read_image

log = logging.getLogger(__name__)
VERSION = 1


class FrameStoreError(RuntimeError):
    """A store that does not belong to this root (or is stale); the message says how to rebuild."""


def _signature(root: Path, files: list[str]) -> str:
    h = hashlib.sha1()
    for rel in files:
        st = os.stat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def dataset_files(root: str | Path, fmt: str = "lpr4m") -> list[str]:
    """Every frame and image file the LPR4M loaders can read under `root`, relative, sorted."""
    if fmt != "lpr4m":
        raise ValueError(f"a frame store reads the lpr4m layout's JPEG files; {fmt} has videos "
                         "(decord decodes them already in one call per clip)")
    from sgmn.data.datasets import read_split
    root = Path(root)
    train, test = read_split(root, fmt, "train", "skip"), read_split(root, fmt, "test")
    paths = {p for c in train + test.queries for p in (c.frame_paths or [])}
    paths |= {c.image_path for c in train} | set(test.image_paths.values())
    return sorted({os.path.relpath(p, root) for p in paths})


def build(root: str | Path, size: int, out: str | Path, fmt: str = "lpr4m") -> Path:
    """Decode every file of `root` at `size` into `out` (written to a sibling, then renamed)."""
    root, out = Path(root), Path(out)
    files = dataset_files(root, fmt)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pixels = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(files), size, size, 3))
    kept, failed = [], []
    for rel in tqdm(files, desc="frame store", file=sys.stderr, mininterval=15.0):
        try:
            pixels[len(kept)] = _resized(read_image(root / rel), size)
        except FrameReadError as err:
            failed.append(str(err))
            continue
        kept.append(rel)
    pixels.flush()
    del pixels
    if failed:  # keep only the rows written
        full = np.load(tmp / "pixels.npy", mmap_mode="r")
        np.save(tmp / "pixels.part.npy", full[: len(kept)])
        del full
        os.replace(tmp / "pixels.part.npy", tmp / "pixels.npy")
    index = {"version": VERSION, "size": size, "files": kept, "signature": _signature(root, kept),
             "unreadable": failed}
    (tmp / "index.json").write_text(json.dumps(index))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("stored %d files at %d px in %s (%d unreadable, not stored)", len(kept), size, out, len(failed))
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
        try:
            signature = _signature(self.root, index["files"])
        except FileNotFoundError as err:
            raise FrameStoreError(f"{store} does not belong to {root}: {err.filename} is missing") from None
        if signature != index["signature"]:
            raise FrameStoreError(f"{store} is stale: files under {root} changed since it was built "
                                  f"(rebuild it with `sgmn frame-store --data {root} --out {store}`)")
        self.size = int(index["size"])
        self.rows = {rel: i for i, rel in enumerate(index["files"])}
        self.pixels = np.load(store / "pixels.npy", mmap_mode="r")
        self._prefix = str(self.root) + os.sep

    def get(self, path: str | Path, size: int) -> np.ndarray | None:
        """The stored (size, size, 3) uint8 pixels of `path`, or None (not stored, other size)."""
        if size != self.size:
            return None
        path = str(path)
        rel = path[len(self._prefix):] if path.startswith(self._prefix) else os.path.relpath(path, self.root)
        row = self.rows.get(rel)
        return None if row is None else np.array(self.pixels[row])  # a writable copy


def open_store(store: str | Path | None, root: str | Path) -> FrameStore | None:
    """FrameStore(store, root), or None when no store is given."""
    return None if store in (None, "") else FrameStore(store, root)
