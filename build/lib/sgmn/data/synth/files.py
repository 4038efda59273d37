"""What one livestream contributes to a dataset, and the byte-stable file writers every format uses
(JSON with sorted keys, newline line ends, fixed JPEG quality)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sgmn.data.synth import render as R


@dataclass
class LiveResult:
    """What one livestream contributes to the index files (its images are already on disk)."""
    n_clips: int
    train_lines: list[str] = field(default_factory=list)
    asr: list[tuple[str, str]] = field(default_factory=list)
    titles: list[tuple[str, str]] = field(default_factory=list)
    gt: dict[str, list[str]] = field(default_factory=dict)
    gallery: tuple[str, list[str]] | None = None
    frame_boxes: dict[str, list] = field(default_factory=dict)
    categories: list[tuple[str, int, str]] = field(default_factory=list)
    meta_products: dict[str, dict] = field(default_factory=dict)
    meta_clips: dict[str, dict] = field(default_factory=dict)
    mf_products: dict[str, dict] = field(default_factory=dict)


def save_jpeg(img, path: Path, quality: int) -> None:
    img.save(path, format="JPEG", quality=quality)


def write_text(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(line + "\n" for line in lines))


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        json.dump(obj, fh, sort_keys=True, separators=(",", ":"))
        fh.write("\n")


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def category_id(name: str) -> int:
    return R.CATEGORIES.index(name) if name in R.CATEGORIES else R.GARMENTS.index(name)
