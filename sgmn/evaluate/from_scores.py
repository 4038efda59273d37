"""Metrics from a saved score table and the test annotations, without torch.

`sgmn evaluate --scores` needs no model: importing torch alone takes seconds, a large share of
recomputing LPR4M's metrics, so this path reads the test split and ranks without it.
`sgmn.evaluate.run` re-exports `build_queries` and `metrics_from_scores`.
"""
from __future__ import annotations

import pandas as pd
from PIL import Image

from sgmn.data.gallery_unit import DEFAULT_UNIT, apply_gallery_unit
from sgmn.data.lpr4m import normalise_boxes
from sgmn.data.records import AnnotationError, TestSet
from sgmn.data.subsets import labels_of_clips
from sgmn.evaluate.metrics import Query, evaluate_scores


def _shared_tuple(ids: list[str], shared: dict) -> tuple[str, ...]:
    """One tuple per gallery list, shared by the queries of a live (~180 on LPR4M): no copy of
    600 ids per query, and the metrics hash each gallery once. The list is kept in `shared` so
    its id() cannot be reused while the cache lives."""
    hit = shared.get(id(ids))
    if hit is None:
        hit = shared[id(ids)] = (ids, tuple(ids))
    return hit[1]


def _normalised_boxes(clip):
    """A test clip's boxes, normalised (pixel boxes divided by its first frame's size), or None
    when it has none or its first frame cannot be read (then the query is unreadable anyway)."""
    boxes = clip.frame_boxes
    if not boxes or not (clip.extra.get("pixel_boxes") and clip.frame_paths):
        return boxes or None
    try:
        with Image.open(clip.frame_paths[0]) as im:
            size = im.size
    except OSError:
        return None
    try:
        return normalise_boxes(boxes, *size)
    except ValueError as err:
        raise AnnotationError(clip.extra.get("box_source", clip.source), None,
                              f"boxes of {clip.video_id}: {err}") from None


def build_queries(test: TestSet) -> list[Query]:
    """Metric queries (gallery, ground truth, subsets, category) from a loaded test split."""
    boxes = [_normalised_boxes(clip) for clip in test.queries]
    labelled = [i for i, b in enumerate(boxes) if b]
    subsets = dict(zip(labelled, labels_of_clips([boxes[i] for i in labelled]) if labelled else []))
    queries, shared = [], {}
    for i, clip in enumerate(test.queries):
        queries.append(Query(video_id=clip.video_id, gallery=_shared_tuple(test.gallery_of(clip), shared),
                             gt=tuple(test.gt.get(clip.video_id, ())), subsets=subsets.get(i),
                             category=test.categories.get(clip.video_id) or clip.category_name))
    return queries


def metrics_from_scores(test: TestSet, scores: pd.DataFrame, unreadable: dict | None = None,
                        gallery: str | None = None):
    """Metrics and the per-query table of a score table on a test split.

    gallery: the gallery unit (evaluate.gallery); None keeps the one the split already has,
    or all_images for a split as read. The metrics record it under `gallery_unit` (with
    `mean_gallery_size`, the mean over queries of the images each was ranked against).
    scores: ids as str or as Categoricals (`read_scores(..., categorical=True)`, joined by code).
    """
    test = apply_gallery_unit(test, gallery or test.gallery_unit or DEFAULT_UNIT)
    metrics, per_query = evaluate_scores(scores, build_queries(test), unreadable or {})
    metrics["annotation_problems"] = test.problems
    metrics["gallery_unit"] = test.gallery_unit
    metrics["gallery_unit_report"] = test.gallery_report
    return metrics, per_query
