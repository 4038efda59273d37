"""Loader for MovingFashion's layout (also written by MF-Synth); see docs/data_formats.md.

`train.json` / `test.json` map product id -> {img_path, video_paths, source, tracklets?}. The
test gallery is one global gallery of every test shop image; a video listed under several
products has several ground truths. A listed video missing from disk stays a query (the
public archive lacks one): reading it fails at evaluation and it is reported as a miss.
"""
from __future__ import annotations

from pathlib import Path

from sgmn.data.jsonfile import cyclic_gc_paused, read_json
from sgmn.data.records import AnnotationError, Clip, TestSet

GALLERY_KEY = "all"


def _read_index(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is this a MovingFashion root?)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, 1, "expected an object {product_id: {...}}")
    for pid, entry in data.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("img_path"), str)
                or not isinstance(entry.get("video_paths"), list)
                or not all(isinstance(v, str) and v.strip() for v in entry["video_paths"])):
            raise AnnotationError(path, None, f"product {pid}: expected an img_path string and a "
                                  f"video_paths list of path strings")
    return data


def _video_id(video_path: str) -> str:
    return Path(video_path).stem


def _tracklet_boxes(entry: dict, video_path: str, source: str) -> list[list[list[float]]] | None:
    """The sold product's tracklet as per-frame box lists (frame t -> [[x1,y1,x2,y2]] or [] where
    it is not visible), normalised; None without one. The two-stage baselines read these as the
    detector's track (sgmn.data.datasets.clip_boxes: the first box of a frame is the target)."""
    track = (entry.get("tracklets") or {}).get(video_path)
    if not track:
        return None
    try:
        frames = {int(t): [float(v) for v in box] for t, box in track.items()}
    except (TypeError, ValueError):
        raise AnnotationError(source, None, f"tracklet of {video_path}: expected {{frame_idx: [x1,y1,x2,y2]}}") from None
    if any(len(b) != 4 or t < 0 for t, b in frames.items()):
        raise AnnotationError(source, None, f"tracklet of {video_path}: a box is not [x1,y1,x2,y2] at a frame index >= 0")
    return [[frames[t]] if t in frames else [] for t in range(max(frames) + 1)]


@cyclic_gc_paused()
def read_training(root: str | Path) -> list[Clip]:
    root = Path(root)
    index = _read_index(root / "train.json")
    clips = []
    for pid in sorted(index):
        entry = index[pid]
        for vp in entry["video_paths"]:
            source = f"{root / 'train.json'} (product {pid})"
            clips.append(Clip(video_id=_video_id(vp), live_id=None, video_path=root / vp,
                              image_id=pid, image_path=root / entry["img_path"],
                              category_name="fashion", extra={"source": entry.get("source")},
                              frame_boxes=_tracklet_boxes(entry, vp, source), source=source))
    return clips


@cyclic_gc_paused()
def read_test(root: str | Path) -> TestSet:
    root = Path(root)
    index = _read_index(root / "test.json")
    gt: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    tracks: dict[str, list | None] = {}
    for pid in sorted(index):
        for vp in index[pid]["video_paths"]:
            gt.setdefault(_video_id(vp), []).append(pid)
            paths[_video_id(vp)] = root / vp
            tracks[_video_id(vp)] = tracks.get(_video_id(vp)) or _tracklet_boxes(index[pid], vp, str(root / "test.json"))
    queries = [Clip(video_id=v, live_id=GALLERY_KEY, video_path=paths[v], category_name="fashion",
                    frame_boxes=tracks[v], source=str(root / "test.json")) for v in sorted(gt)]
    return TestSet(queries=queries, gallery={GALLERY_KEY: sorted(index)}, gt=gt,
                   image_paths={pid: root / index[pid]["img_path"] for pid in index},
                   titles={}, categories={v: "fashion" for v in gt})
