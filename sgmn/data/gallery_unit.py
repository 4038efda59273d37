"""The gallery unit of a test split: config `evaluate.gallery` (docs/data_formats.md, "Gallery unit").

- ``all_images``: every shop image its live's gallery file lists.
- ``main_images``: one image per item, its main view: what the public RICE and SGMN evaluations
  ranked (they keep only the shop files ending in ``-0.jpg`` / ``_0.jpg``).

Both readings match ground truth at the item level, as that public code does: an image id
``<item>-<view>`` or ``<item>_<view>`` (item a UUID, view a number) stands for its item, so a
ground-truth id hits through any gallery image of the same item (the public code strips the
view suffix before comparing). An id without a view suffix is its own item, so for such ids
(the public release's bare UUIDs, LPR-Synth) matching stays exact.

Which image is an item's main one under ``main_images``:

- an id with a view suffix: view 0 (the public code's file filter);
- an id without one: a titled image, because LPR4M's ``test_image_title`` lists main images
  only (and LPR-Synth titles exactly its main images); a test split with no title at all
  (MovingFashion: one image per product) keeps every image.

A ground-truth id that the unit removed from its query's gallery (a non-main view) is dropped
from that query's ground truth when another one remains; ids never listed in the gallery stay,
so annotation problems keep showing as ``gt_outside_gallery`` or as misses.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter

from sgmn.data.lpr4m import UUID
from sgmn.data.records import TestSet

GALLERY_UNITS = ("all_images", "main_images")
DEFAULT_UNIT = "all_images"
VIEW_ID = re.compile(rf"^(?P<item>{UUID})[-_](?P<view>\d+)$")


def check_unit(unit: str) -> str:
    """The unit itself, or ValueError naming the allowed values."""
    if unit not in GALLERY_UNITS:
        raise ValueError(f"unknown gallery unit {unit!r}: expected one of {', '.join(GALLERY_UNITS)}")
    return unit


def split_view(image_id: str) -> tuple[str, int | None]:
    """(item, view) of an image id; (the id itself, None) when it has no view suffix."""
    m = VIEW_ID.match(image_id)
    return (m.group("item"), int(m.group("view"))) if m else (image_id, None)


def main_reason(image_id: str, titles: dict) -> str | None:
    """Why an image is its item's main one ("view_suffix", "title", "untitled_split"), or None."""
    _, view = split_view(image_id)
    if view is not None:
        return "view_suffix" if view == 0 else None
    if not titles:
        return "untitled_split"
    return "title" if image_id in titles else None


def _keep(ids: list[str], unit: str, titles: dict, why: Counter) -> list[str]:
    """The images of one gallery listing that the unit keeps, in listed order."""
    if unit == "all_images":
        return list(ids)
    kept = []
    for image_id in ids:
        reason = main_reason(image_id, titles)
        if reason:
            kept.append(image_id)
            why[reason] += 1
    return kept


def _items_without_main(ids: list[str]) -> int:
    """Suffixed items listed only through non-main views (the view-0 filter drops them)."""
    views: dict[str, set[int]] = {}
    for image_id in ids:
        item, view = split_view(image_id)
        if view is not None:
            views.setdefault(item, set()).add(view)
    return sum(1 for v in views.values() if 0 not in v)


def _map_gt(ids: list[str], by_item: dict[str, list[str]], removed: set[str]) -> list[str]:
    """A query's ground truth as gallery images of the same items (see the module docstring)."""
    out = []
    for image_id in ids:
        hits = by_item.get(split_view(image_id)[0])
        if hits:
            out += hits
        elif image_id not in removed:
            out.append(image_id)  # never listed: stays visible as outside the gallery
    return list(dict.fromkeys(out)) or list(ids)


def apply_gallery_unit(test: TestSet, unit: str) -> TestSet:
    """A copy of `test` with galleries and ground truth under `unit` and a report of what changed.

    Applying the unit a test split already has returns it unchanged; another unit is a
    ValueError (the galleries cannot be restored: reload the split).
    """
    check_unit(unit)
    if test.gallery_unit is not None:
        if test.gallery_unit == unit:
            return test
        raise ValueError(f"this test split already has evaluate.gallery = {test.gallery_unit}; "
                         f"read it again for {unit}")
    why: Counter = Counter()
    galleries = {key: _keep(ids, unit, test.titles, why) for key, ids in test.gallery.items()}
    by_item, removed = {}, {}
    for key, kept in galleries.items():
        by_item[key] = {}
        for image_id in dict.fromkeys(kept):
            by_item[key].setdefault(split_view(image_id)[0], []).append(image_id)
        removed[key] = set(test.gallery[key]) - set(kept)
    key_of = {clip.video_id: clip.live_id or "all" for clip in test.queries}
    gt, changed = {}, 0
    for video_id, ids in test.gt.items():
        key = key_of.get(video_id)
        gt[video_id] = list(ids) if key is None else _map_gt(ids, by_item.get(key, {}), removed.get(key, set()))
        changed += gt[video_id] != list(ids)
    listed = {i for ids in test.gallery.values() for i in ids}
    report = {
        "unit": unit,
        "galleries": len(galleries),
        "listed_images": sum(len(set(ids)) for ids in test.gallery.values()),
        "kept_images": sum(len(set(ids)) for ids in galleries.values()),
        "view_suffixed_ids": sum(1 for i in listed if split_view(i)[1] is not None),
        "main_by": dict(sorted(why.items())),
        "items_without_main_view": (sum(_items_without_main(ids) for ids in test.gallery.values())
                                    if unit == "main_images" else 0),
        "queries_gt_changed": changed,
    }
    return dataclasses.replace(test, gallery=galleries, gt=gt, gallery_unit=unit, gallery_report=report)


def _sizes(values: list[int]) -> dict:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "max": max(values)}


def gallery_stats(test: TestSet) -> dict:
    """Gallery sizes of a freshly read test split under each unit (`sgmn gallery-stats`):
    images per gallery (mean, min, max over galleries) and the mean gallery size per query (the
    figure every metrics file records as `mean_gallery_size`)."""
    listed = {i for ids in test.gallery.values() for i in ids}
    out = {"queries": len(test.queries), "galleries": len(test.gallery), "titles": len(test.titles),
           "titled_listed_images": sum(1 for i in listed if i in test.titles), "units": {}}
    for unit in GALLERY_UNITS:
        applied = apply_gallery_unit(test, unit)
        per_gallery = [len(set(ids)) for ids in applied.gallery.values()]
        per_query = [len(set(applied.gallery_of(c))) for c in applied.queries]
        out["units"][unit] = {"images": applied.gallery_report["kept_images"],
                              "images_per_gallery": _sizes(per_gallery),
                              "mean_gallery_size_per_query": _sizes(per_query)["mean"],
                              "report": applied.gallery_report}
    return out
