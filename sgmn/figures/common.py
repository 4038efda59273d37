"""What every figure shares: the Agg backend, PNG + PDF with reproducible metadata, the
"not run" panel, display names of the variants, and a fixed pseudo-random order of ids (how
Figs. 5-7b pick their examples without looking at the results twice)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import numpy as np

# the paper's names of the variants the figures compare (variants.yaml ids otherwise)
LABELS = {
    "sgmn": "SGMN",
    "gra_only": "GRA",
    "t7_te": "GRA + TE",
    "t7_te_tmc": "GRA + TE + TMC",
    "t7_te_tmc_gci": "SGMN w/o SMF",
    "sgmn_wo_te": "SGMN w/o TE",
}
NOT_RUN = "not run"


def label(variant: str) -> str:
    return LABELS.get(variant, variant)


@dataclass
class Written:
    """What a figure function wrote, and which of its panels had no input (drawn as "not run")."""
    paths: list[Path]
    not_run: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunRef:
    """A run a figure reads: its variant and directory (None: not in this DAG's run matrix)."""
    variant: str
    dir: Path | None

    @classmethod
    def parse(cls, text: str) -> RunRef:
        """`VARIANT=DIR`; DIR `-` (or empty) when the DAG does not run that variant."""
        variant, sep, path = text.partition("=")
        if not sep or not variant:
            raise ValueError(f"expected VARIANT=RUN_DIR (RUN_DIR '-' when not run), got '{text}'")
        return cls(variant, None if path in ("", "-") else Path(path))

    def file(self, name: str) -> Path | None:
        """The run's file `name`, or None when the run or the file is missing."""
        if self.dir is None or not (self.dir / name).is_file():
            return None
        return self.dir / name


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def stable_key(key) -> str:
    """The SHA-1 of `key`: a sort key that is deterministic and unrelated to any score."""
    return hashlib.sha1(str(key).encode()).hexdigest()


def stable_order(ids) -> list[str]:
    """`ids` in a fixed pseudo-random order (stable_key): the same for every model."""
    return sorted(ids, key=stable_key)


def not_run(ax, title: str, why: str, headline: str = NOT_RUN) -> None:
    """Fill `ax` with a grey "not run" panel (or another `headline`) that names what is missing."""
    ax.set_facecolor("0.93")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("0.6")
        spine.set_linestyle("--")
    ax.text(0.5, 0.58, headline, ha="center", va="center", fontsize=14, color="0.35",
            fontweight="bold", transform=ax.transAxes)
    ax.text(0.5, 0.38, why, ha="center", va="center", fontsize=8, color="0.35", wrap=True,
            transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=9)


def save(fig, out_base: str | Path, dpi: int = 150) -> list[Path]:
    """`{out_base}.png` and `.pdf` (out_base may end in .png or .pdf), each written atomically, without timestamps or software
    versions in their metadata (a rerun on the same inputs gives the same bytes); closes `fig`."""
    from sgmn.io import atomic_path

    out_base = Path(out_base)
    if out_base.suffix in (".png", ".pdf"):      # the PNG's path names the pair too
        out_base = out_base.with_suffix("")
    written = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out_base.with_name(out_base.name + f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, metadata=meta)
        written.append(path)
    pyplot().close(fig)
    return written


def mark_axes(ax, colour: str, width: float = 3.0) -> None:
    """No ticks, a coloured frame (a hit, a miss, a ground-truth image)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def read_rgb(path) -> np.ndarray | None:
    """An image file as (H, W, 3) uint8, or None when it cannot be read."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError):
        return None


def show_image(ax, rgb, colour: str | None = None, width: float = 3.0) -> None:
    """An image without ticks (a grey "unreadable" square for None), framed in `colour`."""
    if rgb is None:
        ax.set_facecolor("0.85")
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=6, transform=ax.transAxes)
    else:
        ax.imshow(rgb, interpolation="nearest")
    mark_axes(ax, colour or "0.7", width if colour else 0.5)


def annotated_frames(clip) -> list[tuple]:
    """(path, boxes, target) of each annotated frame of a test clip: its normalised
    [x1, y1, x2, y2] boxes and the index of the intended product's box (-1: not in view). The
    target comes from LPR-Synth's synth_meta.json (`extra["target_index"]`); real LPR4M boxes
    only the intended product, so its box 0. Empty when the frames on disk are not the annotated
    ones (LPR4M keeps every frame, annotates one every 3 s)."""
    boxes, paths = clip.frame_boxes, clip.frame_paths or []
    if boxes is None or len(paths) != len(boxes):
        return []
    target = clip.extra.get("target_index") or [0 if b else -1 for b in boxes]
    return list(zip(paths, boxes, target))


def box_area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def best_view(clip):
    """The frame of a clip where the intended product's box is largest (the middle frame when
    the clip has no usable annotation)."""
    frames = [(box_area(b[t]), -i, p) for i, (p, b, t) in enumerate(annotated_frames(clip)) if 0 <= t < len(b)]
    if frames:
        return max(frames)[2]
    paths = clip.frame_paths or []
    return paths[len(paths) // 2] if paths else None
