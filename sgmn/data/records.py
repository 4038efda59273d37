"""Format-independent records that the LPR4M and MovingFashion loaders produce."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class AnnotationError(ValueError):
    """An annotation that cannot be read; the message starts with `file:line:`."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class Clip:
    """One video clip and, for training clips, the shop image it sells.

    Frames come either from JPEG files (LPR4M) or from an mp4 (MovingFashion).
    `frame_boxes[t]` lists the normalised [x1,y1,x2,y2] boxes of every product visible in
    frame t (None when the format carries no boxes).
    """
    video_id: str
    live_id: str | None
    frame_paths: Sequence[Path] | None = None   # a list, or lpr4m.FramePaths (built on access)
    video_path: Path | None = None
    frame_boxes: list[list[list[float]]] | None = None
    image_id: str | None = None
    image_path: Path | None = None
    title: str = ""
    asr: str = ""
    category_id: int | None = None
    category_name: str | None = None
    extra: dict = field(default_factory=dict)
    source: str = ""  # "file:line" of the annotation, for error messages


@dataclass
class TestSet:
    """Queries, galleries and ground truth of a test split (docs/data_formats.md)."""
    queries: list[Clip]
    gallery: dict[str, list[str]]      # live_id (or "all") -> image ids ranked for its queries
    gt: dict[str, list[str]]           # video_id -> ground-truth image ids
    image_paths: dict[str, Path]       # image_id -> file
    titles: dict[str, str]             # image_id -> title (main images only)
    categories: dict[str, str] = field(default_factory=dict)  # video_id -> category name
    problems: list[str] = field(default_factory=list)          # annotation problems kept, not dropped
    # evaluate.gallery applied by sgmn.data.gallery_unit (None: the files as loaded) and its report
    gallery_unit: str | None = None
    gallery_report: dict = field(default_factory=dict)

    def gallery_of(self, clip: Clip) -> list[str]:
        return self.gallery.get(clip.live_id or "all", [])
