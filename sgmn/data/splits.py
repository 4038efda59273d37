"""Reading a dataset root's split by format, without torch (the `--scores` evaluation and the
figures read the test split in processes that never load a model)."""
from __future__ import annotations

from pathlib import Path

from sgmn.data import lpr4m, movingfashion


def read_split(root: str | Path, fmt: str, split: str, on_bad_line: str = "error",
               skipped: list[str] | None = None, index: str | Path | None = None):
    """Training clips (split="train") or the TestSet (split="test") of a dataset root; with
    `index` (a shard index directory, LPR4M only) its frames and images are read from the
    img2dataset shards instead of the root's frames/ and images/."""
    if fmt == "lpr4m":
        media = None
        if index is not None:
            from sgmn.data.shard_index import IndexMedia
            media = IndexMedia(index)
        if split == "train":
            return lpr4m.read_training(root, on_bad_line, skipped, media)
        return lpr4m.read_test(root, media)
    if index is not None:
        raise ValueError(f"a shard index (dataset.index) is read for the lpr4m format only, not {fmt}")
    if fmt == "movingfashion":
        return movingfashion.read_training(root) if split == "train" else movingfashion.read_test(root)
    raise ValueError(f"unknown dataset format '{fmt}' (lpr4m or movingfashion)")
