"""Loader for LPR4M's published layout (also written by LPR-Synth); see docs/data_formats.md.

The releases are not fully consistent, so parsing is defensive and explicit: 11 or 12 fields
(the 12th is `spu_id`), boxes nested per frame or flat, normalised or in pixels with [0,0,0,0]
for "no box", frame lists as JSON, Python literal or comma-separated. Anything else raises an
AnnotationError naming file and line, or - with on_bad_line="skip" - is left out and reported.

Validation (before any metric): a UTF-8 byte-order mark is dropped; a JSON object with a key
twice is an error naming the key; gallery and ground-truth values must be (lists of) strings;
ids are stripped of surrounding whitespace and the count is reported. Boxes take one convention
per clip: normalised when every coordinate lies in [-0.01, 1.01] (`BOX_TOLERANCE`; coordinates
outside [0, 1] by at most that are clipped and reported), pixels when some coordinate exceeds
`PIXEL_MIN` = 2; a coordinate between 1.01 and 2, a negative one below -0.01, swapped corners
(x2 < x1 or y2 < y1), a non-finite value, or a clip that mixes the conventions is an error.
"""
from __future__ import annotations

import ast
import json
import math
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from sgmn.data.jsonfile import cyclic_gc_paused
from sgmn.data.jsonfile import read_json as _read_json
from sgmn.data.records import AnnotationError, Clip, TestSet

log = logging.getLogger(__name__)

FIELDS = ["video_id", "frame_ids", "boxes", "image_id", "title", "category_id", "category_name",
          "asr", "scale_type", "duration_type", "count_type"]
OPTIONAL_FIELDS = ["spu_id"]
# header names seen in public helper code, mapped to ours
HEADER_ALIASES = {"clip_id": "video_id", "frame_list": "frame_ids", "box_list": "boxes",
                  "image_title": "title", "product_scale_type": "scale_type",
                  "visible_duration_type": "duration_type", "number_type": "count_type",
                  "product_number_type": "count_type"}
BOX_TOLERANCE = 0.01   # normalised coordinates may overshoot [0, 1] by this much (rounding)
PIXEL_MIN = 2.0        # a clip's boxes are in pixels when some coordinate exceeds this
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
CLIP_ID = re.compile(rf"^(?P<live>{UUID})-(?P<start>\d+)-(?P<end>\d+)$")


def live_id_of(video_id: str) -> str | None:
    """live_id of a clip id `live_id-startms-endms` (None when the id does not follow it)."""
    m = CLIP_ID.match(video_id)
    return m.group("live") if m else None


def _parse_list(text: str):
    text = text.strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def parse_frame_ids(text: str) -> list[str]:
    value = _parse_list(text)
    if value is None:  # "a,b,c" without brackets
        value = [t.strip() for t in text.strip().strip("[]").split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("frame id list is not a list of strings")
    return [v.strip() for v in value]


def _is_box(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) for v in value))


_NUMBER = (int, float)   # exact types: a bool, a string or a subclass takes the per-box path
_SEQUENCE = (list, tuple)


def _clean_boxes(value: list) -> list[list[list[float]]] | None:
    """The per-frame boxes of a clean box list in one tight pass, or None.

    Clean: every entry a flat box or a list of boxes (any number per frame), plain numbers only,
    all finite, no swapped corners, no zero-area box other than [0,0,0,0]. Anything else returns
    None and takes parse_boxes' per-box path, which names the problem; so both paths accept and
    return the same (LPR4M's test split has 426k annotated frames). A box of floats, as JSON
    gives it, is kept as the list it is; a numpy pass per clip cost more than these checks
    (`scripts/bench_evaluate.py`).
    """
    frames, any_box, finite = [], False, math.isfinite
    for entry in value:
        if type(entry) not in _SEQUENCE:
            return None
        boxes = (entry,) if entry and type(entry[0]) not in _SEQUENCE else entry
        kept = []
        for b in boxes:
            if type(b) is not list or len(b) != 4:
                return None
            x1, y1, x2, y2 = b
            if type(x1) is float and type(y1) is float and type(x2) is float and type(y2) is float:
                box = b
            elif type(x1) in _NUMBER and type(y1) in _NUMBER and type(x2) in _NUMBER and type(y2) in _NUMBER:
                box = [float(x1), float(y1), float(x2), float(y2)]
            else:
                return None
            if not (finite(x1) and finite(y1) and finite(x2) and finite(y2)):
                return None
            any_box = True
            if x1 == 0 and y1 == 0 and x2 == 0 and y2 == 0:
                continue
            if x2 <= x1 or y2 <= y1:
                return None
            kept.append(box)
        frames.append(kept)
    return frames if any_box else None


def parse_boxes(text: str | list, n_frames: int, notes: list[str] | None = None
                ) -> tuple[list[list[list[float]]], bool]:
    """Per-frame box lists and whether the clip's boxes are in pixels (module docstring), from
    the text of a list or a list already parsed (the test split's JSON box file).

    Accepts one list of boxes per frame or one flat box per frame; [0,0,0,0] means "no box".
    A zero-width or zero-height box is dropped as "no box" and, like a clipped coordinate,
    noted in `notes`; anything ambiguous raises ValueError.
    """
    value = text if isinstance(text, list) else _parse_list(text)
    if value is None or not isinstance(value, (list, tuple)):
        raise ValueError("box list is not a list")
    if len(value) != n_frames:
        raise ValueError(f"box list has {len(value)} entries for {n_frames} frames")
    frames = _clean_boxes(value)
    if frames is not None:
        return frames, _box_convention(frames, notes)
    frames, degenerate = [], 0
    for t, entry in enumerate(value):
        boxes = [entry] if _is_box(entry) else entry
        if not isinstance(boxes, (list, tuple)) or not all(_is_box(b) for b in boxes):
            raise ValueError(f"frame {t}: expected [x1,y1,x2,y2] boxes, got {str(entry)[:60]}")
        kept = []
        for b in boxes:
            b = [float(v) for v in b]
            if not all(math.isfinite(v) for v in b):
                raise ValueError(f"frame {t}: box {b} has a non-finite coordinate")
            if b == [0.0, 0.0, 0.0, 0.0]:
                continue
            if b[2] < b[0] or b[3] < b[1]:
                raise ValueError(f"frame {t}: box {b} has swapped corners (x2 < x1 or y2 < y1)")
            if b[2] == b[0] or b[3] == b[1]:
                degenerate += 1
                continue
            kept.append(b)
        frames.append(kept)
    pixel = _box_convention(frames, notes)
    if degenerate and notes is not None:
        notes.append(f"{degenerate} zero-area box(es) taken as no box")
    return frames, pixel


def _box_convention(frames: list[list[list[float]]], notes: list[str] | None) -> bool:
    """True for a pixel clip; a normalised clip's coordinates are clipped into [0, 1] in place."""
    coords = [v for boxes in frames for b in boxes for v in b]
    if not coords:
        return False
    low, high = min(coords), max(coords)
    if low < -BOX_TOLERANCE:
        raise ValueError(f"negative box coordinate {low}")
    if high <= 1 + BOX_TOLERANCE:
        clipped = sum(1 for v in coords if v < 0 or v > 1)
        if clipped:
            for boxes in frames:
                for b in boxes:
                    b[:] = [min(max(v, 0.0), 1.0) for v in b]
            if notes is not None:
                notes.append(f"{clipped} normalised coordinate(s) outside [0, 1] by <= {BOX_TOLERANCE}, clipped")
        return False
    if high <= PIXEL_MIN:
        raise ValueError(f"box coordinate {high} is outside [0, 1] by more than {BOX_TOLERANCE} "
                         f"and too small for pixels (> {PIXEL_MIN}): which convention?")
    small = [b for boxes in frames for b in boxes if max(b) <= 1 + BOX_TOLERANCE]
    if small:
        raise ValueError(f"the clip mixes normalised boxes (e.g. {small[0]}) with pixel boxes (up to {high})")
    return True


def normalise_boxes(frame_boxes, width: int, height: int):
    """Pixel boxes -> normalised [0,1] boxes for a frame of the given size; a box reaching past
    the frame by more than BOX_TOLERANCE of its size raises ValueError (wrong frame or boxes)."""
    out = []
    for boxes in frame_boxes:
        frame = []
        for b in boxes:
            x = [b[0] / width, b[1] / height, b[2] / width, b[3] / height]
            if max(x) > 1 + BOX_TOLERANCE:
                raise ValueError(f"pixel box {list(b)} reaches past its {width}x{height} frame")
            frame.append([min(max(v, 0.0), 1.0) for v in x])
        out.append(frame)
    return out


def frame_path(root: Path, frame_id: str) -> Path:
    """frames/{clip_id}/{frame_id}.jpg; a frame id that is already a path is taken as is."""
    if frame_id.lower().endswith((".jpg", ".jpeg", ".png")):
        return root / frame_id
    clip_id = frame_id.rsplit("-", 1)[0]
    return root.joinpath("frames", clip_id, f"{frame_id}.jpg")   # one parse: 426k of them on LPR4M


def image_path(root: Path, image_id: str) -> Path:
    return root / "images" / f"{image_id}.jpg"


class FramePaths(Sequence):
    """A clip's frame files, each Path built when it is read: LPR4M's test split names 426,751
    annotated frames and its training split about 4M clips, and a `--scores` evaluation reads
    none of the files. A read-only list of Paths otherwise (len, index, slice, iterate, ==)."""

    __slots__ = ("root", "ids")

    def __init__(self, root: Path, ids: list[str]):
        self.root, self.ids = root, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [frame_path(self.root, f) for f in self.ids[i]]
        return frame_path(self.root, self.ids[i])

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __add__(self, other) -> list[Path]:
        return list(self) + list(other)

    def __repr__(self) -> str:
        return f"FramePaths({list(self)!r})"


class FolderMedia:
    """Where the loaders find frames and images: files in LPR4M's layout under `root` (the
    default). sgmn.data.shard_index.IndexMedia has the same methods over img2dataset shards."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def frame(self, frame_id: str) -> Path:
        return frame_path(self.root, frame_id)

    def frames(self, frame_ids: list[str]) -> FramePaths:
        return FramePaths(self.root, frame_ids)

    def image(self, image_id: str) -> Path:
        return image_path(self.root, image_id)

    def clip_frames(self, clip_id: str) -> list[Path] | None:
        """Every frame file of a clip (1 fps, not only the annotated ones), or None when the
        clip has no folder."""
        clip_dir = self.root / "frames" / clip_id
        return sorted(clip_dir.glob("*.jpg")) if clip_dir.is_dir() else None


def _frames(media, frame_ids: list[str]):
    """The frames of a clip through `media`: lazily where it can (FolderMedia.frames)."""
    frames = getattr(media, "frames", None)
    return frames(frame_ids) if frames is not None else [media.frame(f) for f in frame_ids]


def parse_training_line(line: str, root: Path, path: Path, lineno: int,
                        names: list[str] | None = None, media=None) -> Clip:
    """One training clip; media (FolderMedia(root) by default) turns ids into frames/images."""
    media = media or FolderMedia(root)
    fields = line.rstrip("\r\n").split("\t")
    if names is None:
        if len(fields) == len(FIELDS):
            names = FIELDS
        elif len(fields) == len(FIELDS) + 1:
            names = FIELDS + OPTIONAL_FIELDS
        else:
            raise AnnotationError(path, lineno, f"expected 11 or 12 tab-separated fields "
                                  f"(docs/data_formats.md), got {len(fields)}")
    elif len(fields) != len(names):
        raise AnnotationError(path, lineno, f"expected {len(names)} fields as in the header, got {len(fields)}")
    row = dict(zip(names, fields))
    video_id = row["video_id"].strip()
    if not video_id:
        raise AnnotationError(path, lineno, "empty video_id")
    try:
        frame_ids = parse_frame_ids(row["frame_ids"])
        if not frame_ids:
            raise ValueError("no frames listed")
        boxes, pixel = parse_boxes(row["boxes"], len(frame_ids))
    except (ValueError, SyntaxError) as err:
        raise AnnotationError(path, lineno, str(err)) from None
    try:
        category_id = int(row["category_id"]) if row["category_id"].strip() else None
    except ValueError:
        raise AnnotationError(path, lineno, f"category id '{row['category_id']}' is not an integer") from None
    image_id = row["image_id"].strip()
    if not image_id:
        raise AnnotationError(path, lineno, "empty image_id")
    extra = {k: row[k] for k in ("scale_type", "duration_type", "count_type", "spu_id") if k in row}
    extra["pixel_boxes"] = pixel
    return Clip(
        video_id=video_id, live_id=live_id_of(video_id),
        frame_paths=_frames(media, frame_ids), frame_boxes=boxes,
        image_id=image_id, image_path=media.image(image_id),
        title=row["title"], asr=row["asr"], category_id=category_id,
        category_name=row["category_name"], extra=extra, source=f"{path}:{lineno}")


def attach_synth_targets(root: Path, clips: list[Clip]) -> list[Clip]:
    """LPR-Synth only: the intended product's box index per annotated frame (-1: not in view),
    from synth_meta.json, as `extra["target_index"]` (real LPR4M has no such file; its single
    annotated box per frame is the intended product's, sgmn.data.datasets.target_index)."""
    meta_path = Path(root) / "synth_meta.json"
    if not meta_path.is_file():
        return clips
    meta = _read_json(meta_path).get("clips", {})
    for clip in clips:
        index = meta.get(clip.video_id, {}).get("target_box_index")
        if index is not None:
            clip.extra["target_index"] = list(index)
    return clips


@cyclic_gc_paused()
def read_training(root: str | Path, on_bad_line: str = "error",
                  skipped: list[str] | None = None, media=None) -> list[Clip]:
    """All clips of `training_videoinfo_full_*.txt`, in part order then line order.

    With on_bad_line="skip", a bad line is logged, appended to `skipped` and left out.
    media: where frames and images are (FolderMedia(root) by default; IndexMedia for shards).
    """
    return attach_synth_targets(Path(root), list(iter_training(root, on_bad_line, skipped, media)))


def iter_training(root: str | Path, on_bad_line: str = "error", skipped: list[str] | None = None,
                  media=None):
    """read_training's clips one at a time (without synth targets), for a pass over LPR4M's
    4M clips that need not hold them all."""
    root = Path(root)
    media = media or FolderMedia(root)
    parts = sorted(root.glob("training_videoinfo_full_*.txt"),
                   key=lambda p: int(re.sub(r"\D", "", p.stem.rsplit("_", 1)[-1]) or 0))
    if not parts:
        raise FileNotFoundError(f"{root}: no training_videoinfo_full_*.txt (is this an LPR4M root?)")
    for part in parts:
        names = None
        for lineno, line in _read_lines(part, on_bad_line, skipped):
            if not line.strip():
                continue
            if lineno == 1 and line.startswith("video_id\t"):
                names = [HEADER_ALIASES.get(n.strip(), n.strip()) for n in line.rstrip("\r\n").split("\t")]
                missing = set(FIELDS) - set(names)
                if missing:
                    raise AnnotationError(part, 1, f"header lacks fields {sorted(missing)} "
                                          f"(expected {FIELDS} [+ spu_id])")
                continue
            try:
                yield parse_training_line(line, root, part, lineno, names, media)
            except AnnotationError as err:
                if on_bad_line == "error":
                    raise
                log.warning("skipping bad annotation line: %s", err)
                if skipped is not None:
                    skipped.append(str(err))


def _read_lines(path: Path, on_bad_line: str = "error", skipped: list[str] | None = None):
    """Yield (lineno, text) of a UTF-8 file. An undecodable line is an error naming the line,
    or under on_bad_line="skip" is logged, reported in `skipped` and left out."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                error = AnnotationError(path, lineno, f"not valid UTF-8 ({err.reason} at byte {err.start})")
                if on_bad_line == "error":
                    raise error from None
                log.warning("skipping bad annotation line: %s", error)
                if skipped is not None:
                    skipped.append(str(error))


def find_one(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"{root}: expected exactly one {pattern}, found {len(matches)}"
                                + (f": {[m.name for m in matches]}" if matches else ""))
    return matches[0]


def _read_tsv_pairs(path: Path, n_fields: int = 2) -> dict[str, list[str]]:
    out = {}
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < n_fields:
            # an empty ASR may lose its tab in some exports: keep the id with an empty text
            if n_fields == 2 and len(fields) == 1:
                fields = [fields[0], ""]
            else:
                raise AnnotationError(path, lineno, f"expected {n_fields} tab-separated fields, got {len(fields)}")
        if len(fields) > n_fields:
            raise AnnotationError(path, lineno, f"expected {n_fields} tab-separated fields, got {len(fields)}")
        key = fields[0].strip()
        if key in out:
            raise AnnotationError(path, lineno, f"duplicate id {key}")
        out[key] = fields[1:]
    return out


def _id_lists(path: Path, obj: dict, what: str, single_ok: bool) -> tuple[dict[str, list[str]], int]:
    """{key: [ids]} with keys and ids stripped; values must be lists of non-empty strings (or, when
    single_ok, one string). Returns the mapping and how many ids had whitespace stripped."""
    out, stripped = {}, 0
    for key, value in obj.items():
        if single_ok and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AnnotationError(path, None, f"{what} of {key!r} must be a list of image id strings, "
                                  f"got {type(value).__name__} {str(value)[:60]}")
        ids = [v.strip() for v in value]
        if any(not v for v in ids):
            raise AnnotationError(path, None, f"{what} of {key!r} holds an empty image id")
        clean = key.strip()
        if not clean:
            raise AnnotationError(path, None, f"an empty key in {what}")
        if clean in out:
            raise AnnotationError(path, None, f"key {clean!r} occurs twice once whitespace is stripped")
        stripped += (clean != key) + sum(a != b for a, b in zip(ids, value))
        out[clean] = ids
    return out, stripped


@cyclic_gc_paused()
def read_test(root: str | Path, media=None) -> TestSet:
    """The five test files (and the optional category file) of an LPR4M root; media as in
    read_training."""
    root = Path(root)
    media = media or FolderMedia(root)
    asr_path = find_one(root, "test_videoid_asr_*.txt")
    asr = {k: v[0] for k, v in _read_tsv_pairs(asr_path).items()}
    titles = {k: v[0] for k, v in _read_tsv_pairs(find_one(root, "test_image_title_*.txt")).items()}
    gt_path = find_one(root, "test_videoid_to_gtimage_*.json")
    gt = _read_json(gt_path)
    gallery_path = find_one(root, "test_liveid_to_gallery_*.json")
    gallery = _read_json(gallery_path)
    box_path = find_one(root, "test_frameid2gtbox_*.json")
    frame_boxes = _read_json(box_path)
    for name, obj in ((gt_path, gt), (gallery_path, gallery), (box_path, frame_boxes)):
        if not isinstance(obj, dict):
            raise AnnotationError(name, 1, "expected a JSON object at the top level")
    problems = []
    gt, n_gt = _id_lists(gt_path, gt, "the ground truth", single_ok=True)
    gallery, n_gal = _id_lists(gallery_path, gallery, "the gallery", single_ok=False)
    frame_boxes = {k.strip(): v for k, v in frame_boxes.items()}
    for path, n in ((gt_path, n_gt), (gallery_path, n_gal)):
        if n:
            problems.append(f"{path}: {n} id(s) had surrounding whitespace, stripped")
    categories = {}
    cat_files = sorted(root.glob("test_videoid_category_*.txt"))
    if cat_files:
        categories = {k: v[1] for k, v in _read_tsv_pairs(cat_files[0], n_fields=3).items()}

    frames_of: dict[str, list[str]] = {}
    for frame_id in frame_boxes:
        frames_of.setdefault(frame_id.rsplit("-", 1)[0], []).append(frame_id)

    queries = []
    for video_id in sorted(gt):
        frame_ids = sorted(frames_of.get(video_id, []))
        boxes, pixel = None, False
        if frame_ids:
            notes: list[str] = []
            try:
                boxes, pixel = parse_boxes([frame_boxes[f] for f in frame_ids], len(frame_ids), notes)
            except ValueError as err:
                raise AnnotationError(box_path, None, f"boxes of {video_id}: {err}") from None
            problems.extend(f"{box_path}: boxes of {video_id}: {note}" for note in notes)
        else:
            problems.append(f"{box_path}: no boxes for {video_id} (its subsets are unknown)")
        paths = media.clip_frames(video_id)  # every frame on disk, not only the annotated ones (1 every 3 s)
        if paths is None:
            paths = _frames(media, frame_ids)
        if video_id not in asr:
            problems.append(f"{asr_path}: no ASR line for {video_id} (empty ASR used)")
        queries.append(Clip(
            video_id=video_id, live_id=live_id_of(video_id), frame_paths=paths, frame_boxes=boxes,
            asr=asr.get(video_id, ""), category_name=categories.get(video_id),
            extra={"pixel_boxes": pixel, "box_source": str(box_path)}, source=f"{gt_path}"))
    image_ids = {i for ids in gallery.values() for i in ids} | {i for ids in gt.values() for i in ids}
    attach_synth_targets(root, queries)
    return TestSet(queries=queries, gallery={k: list(v) for k, v in gallery.items()}, gt=gt,
                   image_paths={i: media.image(i) for i in sorted(image_ids)},
                   titles=titles, categories=categories, problems=problems)
