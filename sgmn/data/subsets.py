"""Per-clip subset labels for the LPR4M subset analysis (product scale, visible duration, count).

Protocol (``shared/spec/lpr4m_format.md``, "Subsets"; thresholds from the public helper that
produced the paper's subset analysis), computed from the annotated frames of one clip:

- product scale: mean over frames of the mean normalised box area, a frame with no box counting 0;
  ``small <= 0.2 < medium <= 0.4 < large``
- visible duration: fraction of frames with at least one box; ``short <= 0.4 < medium <= 0.7 < long``
- number of products: mean number of boxes per frame; ``few <= 3 < medium <= 7 < abundant``

Boxes are normalised ``[x1, y1, x2, y2]``. A degenerate box (``x2 <= x1`` or ``y2 <= y1``, which
includes the ``[0, 0, 0, 0]`` "no box" placeholder) is not a box. Pixel boxes must be normalised by
the loader first; coordinates outside [0, 1] raise ``ValueError`` rather than producing a
meaningless area.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# name -> ((t1, t2), (label_low, label_mid, label_high)); x <= t1 -> low, t1 < x <= t2 -> mid, else high
THRESHOLDS: dict[str, tuple[tuple[float, float], tuple[str, str, str]]] = {
    "scale": ((0.2, 0.4), ("small", "medium", "large")),
    "duration": ((0.4, 0.7), ("short", "medium", "long")),
    "count": ((3, 7), ("few", "medium", "abundant")),
}

# Values that equal a threshold up to float rounding (e.g. an area computed as 0.6 - 0.1 ...) go
# to the lower bin, as the exact value would. Annotations carry ~4 decimals, so 1e-9 is pure noise.
_BIN_TOL = 1e-9
# Normalised coordinates slightly outside [0, 1] (detector / rounding noise) are clipped.
_COORD_TOL = 1e-6


def _flatten_boxes(clips: Sequence[Sequence[Sequence[Sequence[float]]]]):
    """Every box of every frame of every clip: boxes (N, 4), the frame of each box (N,) and the
    clip of each frame (F,), frames numbered across clips. A problem raises ValueError naming
    the frame (and the clip, when there are several)."""
    coords: list[Sequence[float]] = []
    frame_of_box: list[int] = []
    clip_of_frame: list[int] = []
    for c, frame_boxes in enumerate(clips):
        where = f"clip {c}: " if len(clips) > 1 else ""
        if len(frame_boxes) == 0:
            raise ValueError(f"{where}clip has zero annotated frames; subset statistics are undefined")
        for f, boxes in enumerate(frame_boxes):
            if boxes is None:
                raise ValueError(f"{where}frame {f}: box list is None (use [] for a frame with no box)")
            frame = len(clip_of_frame)
            clip_of_frame.append(c)
            for b in boxes:
                if isinstance(b, (int, float)):
                    raise ValueError(
                        f"{where}frame {f}: expected a list of boxes [[x1,y1,x2,y2], ...], got a flat "
                        f"list {list(boxes)!r}; wrap single boxes in a list"
                    )
                if len(b) != 4:
                    raise ValueError(f"{where}frame {f}: box {list(b)!r} does not have 4 coordinates")
                coords.append(b)
                frame_of_box.append(frame)
    return (np.asarray(coords, dtype=float).reshape(-1, 4), np.asarray(frame_of_box, dtype=np.int64),
            np.asarray(clip_of_frame, dtype=np.int64))


def statistics_of_clips(clips: Sequence[Sequence[Sequence[Sequence[float]]]]) -> dict[str, np.ndarray]:
    """clip_statistics of many clips at once: {"scale", "duration", "count"} -> (clips,) arrays.

    One pass of array operations over all boxes (LPR4M's test split: 20,079 clips, 426,751
    annotated frames), instead of one small set of array operations per clip.
    """
    boxes, frame_idx, clip_of_frame = _flatten_boxes(clips)
    n_clips, n_frames = len(clips), len(clip_of_frame)

    def where(bad: np.ndarray) -> str:
        """The clip of the first bad box, for the message (none with one clip)."""
        return f"clip {int(clip_of_frame[frame_idx[bad.argmax()]])}: " if n_clips > 1 else ""

    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise ValueError(f"{where(bad)}box coordinates must be finite")
    bad = ((boxes < -_COORD_TOL) | (boxes > 1 + _COORD_TOL)).any(axis=1)
    if bad.any():
        raise ValueError(
            f"{where(bad)}box coordinates outside [0, 1]: boxes must be normalised [x1,y1,x2,y2] "
            "(pixel boxes must be divided by the frame size first)"
        )
    boxes = np.clip(boxes, 0.0, 1.0)

    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    valid = (w > 0) & (h > 0)  # degenerate boxes (incl. [0,0,0,0]) are "no box"
    area = (w * h)[valid]
    fidx = frame_idx[valid]

    n_boxes = np.bincount(fidx, minlength=n_frames)
    area_sum = np.bincount(fidx, weights=area, minlength=n_frames)
    # mean box area of a frame; a frame with no box contributes 0 to the clip mean
    frame_area = np.divide(area_sum, n_boxes, out=np.zeros(n_frames), where=n_boxes > 0)
    frames_of_clip = np.bincount(clip_of_frame, minlength=n_clips)

    def clip_mean(per_frame: np.ndarray) -> np.ndarray:
        return np.bincount(clip_of_frame, weights=per_frame, minlength=n_clips) / frames_of_clip

    return {"scale": clip_mean(frame_area), "duration": clip_mean((n_boxes > 0).astype(float)),
            "count": clip_mean(n_boxes.astype(float))}


def clip_statistics(frame_boxes: Sequence[Sequence[Sequence[float]]]) -> dict[str, float]:
    """Scale / duration / count statistics of one clip from its per-frame normalised boxes.

    ``frame_boxes[f]`` is the list of boxes of frame ``f`` (``[]`` when no product is visible).
    Returns ``{"scale", "duration", "count"}`` as Python floats (see module docstring).
    A clip with zero frames raises ``ValueError``: its statistics are undefined, not zero.
    """
    return {name: float(v[0]) for name, v in statistics_of_clips([frame_boxes]).items()}


def bin_value(name: str, value: float) -> str:
    """Label of ``value`` for subset ``name``: ``x <= t1`` -> first, ``t1 < x <= t2`` -> second, else third."""
    (t1, t2), (low, mid, high) = THRESHOLDS[name]
    if not np.isfinite(value):
        raise ValueError(f"{name} statistic is not finite: {value!r}")
    if value <= t1 + _BIN_TOL:
        return low
    if value <= t2 + _BIN_TOL:
        return mid
    return high


def subset_labels(frame_boxes: Sequence[Sequence[Sequence[float]]]) -> dict[str, str]:
    """Subset labels of one clip, e.g. ``{"scale": "small", "duration": "long", "count": "few"}``."""
    return labels_of_clips([frame_boxes])[0]


def labels_of_clips(clips: Sequence[Sequence[Sequence[Sequence[float]]]]) -> list[dict[str, str]]:
    """subset_labels of many clips, from one statistics_of_clips pass."""
    stats = statistics_of_clips(clips)
    columns = {name: [bin_value(name, v) for v in stats[name].tolist()] for name in THRESHOLDS}
    return [dict(zip(columns, labels)) for labels in zip(*columns.values())]
