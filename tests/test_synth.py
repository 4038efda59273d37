"""LPR-Synth / MF-Synth generator: determinism, on-disk format (docs/data_formats.md), subsets,
MovingFashion layout read back with decord, config errors and atomic output.

Format checks use only json / csv-style parsing / PIL, independent of the suite's loaders, so a
loader bug and a generator bug cannot cancel out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from sgmn.data.synth import files, lpr4m_writer
from sgmn.data.synth import PRESETS, SynthConfig, generate, make_config

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_RE = re.compile(rf"^{UUID}$")
CLIP_RE = re.compile(rf"^({UUID})-(\d+)-(\d+)$")
SUBSET_VALUES = {"scale": {"small", "medium", "large"}, "duration": {"short", "medium", "long"},
                 "count": {"few", "medium", "abundant"}}
SMALL_TEST_SET = dict(train_lives=1, train_clips_per_live=4, test_lives=2, test_products=14,
                      test_clips_per_live=40, scale="0.15,1.0", host_shots="0,0.9")


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def only(root: Path, pattern: str) -> Path:
    matches = sorted(root.glob(pattern))
    assert len(matches) == 1, f"{pattern}: {matches}"
    return matches[0]


def count_in_name(path: Path) -> list[int]:
    return [int(x) for x in re.findall(r"_(\d+)", path.stem)]


def subsets_of(frame_boxes: list[list[list[float]]]) -> dict[str, str]:
    """The thresholds of shared/spec/lpr4m_format.md, re-implemented in plain Python."""
    n = len(frame_boxes)
    areas = [sum((b[2] - b[0]) * (b[3] - b[1]) for b in f) / len(f) if f else 0.0 for f in frame_boxes]
    scale = sum(areas) / n
    duration = sum(1 for f in frame_boxes if f) / n
    count = sum(len(f) for f in frame_boxes) / n

    def cut(x, t1, t2, names):
        return names[0] if x <= t1 + 1e-9 else names[1] if x <= t2 + 1e-9 else names[2]
    return {"scale": cut(scale, 0.2, 0.4, ("small", "medium", "large")),
            "duration": cut(duration, 0.4, 0.7, ("short", "medium", "long")),
            "count": cut(count, 3, 7, ("few", "medium", "abundant"))}


def check_boxes(boxes) -> None:
    assert isinstance(boxes, list)
    for b in boxes:
        assert len(b) == 4 and all(isinstance(v, (int, float)) for v in b), b
        assert all(0.0 <= v <= 1.0 and round(v, 4) == v for v in b), b
        assert b[0] < b[2] and b[1] < b[3], b


def check_jpeg(path: Path, size: int) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (size, size), (path, im.format, im.size)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lpr(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("lpr") / "smoke", "smoke", seed=0, progress=False)


@pytest.fixture(scope="module")
def mf(tmp_path_factory) -> Path:
    # every near-duplicate test video doubly listed, so the two-ground-truth case is present
    return generate(tmp_path_factory.mktemp("mf") / "smoke", "smoke", seed=0, fmt="movingfashion",
                    overrides={"mf_two_gt_rate": 1.0, "near_twin_rate": 0.5}, progress=False)


# --------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes(lpr, tmp_path):
    again = generate(tmp_path / "again", "smoke", seed=0, progress=False, workers=2)
    assert tree_hash(again) == tree_hash(lpr)


def test_other_seed_gives_other_data(lpr, tmp_path):
    other = generate(tmp_path / "other", "smoke", seed=1, progress=False)
    a, b = tree_hash(lpr), tree_hash(other)
    assert set(a) != set(b)  # new ids
    assert sorted(a.values()) != sorted(b.values())


def test_movingfashion_is_deterministic(mf, tmp_path):
    again = generate(tmp_path / "again", "smoke", seed=0, fmt="movingfashion",
                     overrides={"mf_two_gt_rate": "1", "near_twin_rate": "0.5"}, progress=False)
    assert tree_hash(again) == tree_hash(mf)


# --------------------------------------------------------------------------- LPR4M layout

def read_training(root: Path) -> list[list[str]]:
    path = only(root, "training_videoinfo_full_*.txt")
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    assert count_in_name(path) == [len(rows)]
    return rows


def test_training_file(lpr):
    cfg = PRESETS["smoke"]
    rows = read_training(lpr)
    assert len(rows) == cfg.train_lives * cfg.train_clips_per_live
    lengths = set()
    for f in rows:
        assert len(f) == 11, f
        video_id, frame_ids, boxes = f[0], json.loads(f[1]), json.loads(f[2])
        assert CLIP_RE.match(video_id)
        lengths.add(len(frame_ids))
        assert len(boxes) == len(frame_ids)
        for k, frame_id in enumerate(frame_ids):
            assert frame_id == f"{video_id}-{k:04d}"
            assert frame_id.rsplit("-", 1)[0] == video_id
            check_jpeg(lpr / "frames" / video_id / f"{frame_id}.jpg", cfg.image_size)
        for frame in boxes:
            check_boxes(frame)
        assert UUID_RE.match(f[3]) and (lpr / "images" / f"{f[3]}.jpg").is_file()
        assert f[4] and "\t" not in f[4]
        assert int(f[5]) >= 0 and f[6]
        labels = subsets_of(boxes)
        assert [f[8], f[9], f[10]] == [labels["scale"], labels["duration"], labels["count"]]
    assert min(lengths) >= cfg.train_frames[0] and max(lengths) <= cfg.train_frames[1]
    assert min(lengths) < 10  # clips shorter than a model's 10 sampled frames exist


def test_test_files(lpr):
    cfg = PRESETS["smoke"]
    asr_path = only(lpr, "test_videoid_asr_*.txt")
    asr = dict(line.split("\t") for line in asr_path.read_text(encoding="utf-8").splitlines())
    n = cfg.test_lives * cfg.test_clips_per_live
    assert count_in_name(asr_path) == [n] and len(asr) == n
    gt_path = only(lpr, "test_videoid_to_gtimage_*.json")
    gt = json.loads(gt_path.read_text())
    assert count_in_name(gt_path) == [n] and set(gt) == set(asr)
    gallery_path = only(lpr, "test_liveid_to_gallery_*.json")
    gallery = json.loads(gallery_path.read_text())
    assert count_in_name(gallery_path) == [cfg.test_lives] == [len(gallery)]
    box_path = only(lpr, "test_frameid2gtbox_*.json")
    frame_boxes = json.loads(box_path.read_text())
    assert count_in_name(box_path) == [n, len(frame_boxes)]
    title_path = only(lpr, "test_image_title_*.txt")
    titles = dict(line.split("\t") for line in title_path.read_text(encoding="utf-8").splitlines())
    assert count_in_name(title_path) == [len(titles)]

    for live_id, images in gallery.items():
        assert UUID_RE.match(live_id) and len(images) == len(set(images))
        for i in images:
            assert UUID_RE.match(i)
            check_jpeg(lpr / "images" / f"{i}.jpg", cfg.image_size)
    for video_id, images in gt.items():
        live_id = CLIP_RE.match(video_id).group(1)
        assert video_id.rsplit("-", 2)[0] == live_id
        assert images and set(images) <= set(gallery[live_id])
        assert images[0] in titles  # the main image first, titled
        frames = sorted((lpr / "frames" / video_id).glob("*.jpg"))
        assert [p.stem for p in frames] == [f"{video_id}-{k:04d}" for k in range(cfg.test_frames)]
        for p in frames:
            assert p.stem in frame_boxes  # every test frame annotated ([] when nothing visible)
    for frame_id, boxes in frame_boxes.items():
        assert frame_id.rsplit("-", 1)[0] in gt
        check_boxes(boxes)
    assert any(not b for b in frame_boxes.values())
    assert any(len(v) > 1 for v in gt.values())  # several ground truths

    cats = [line.split("\t") for line in only(lpr, "test_videoid_category_*.txt").read_text().splitlines()]
    assert {c[0] for c in cats} == set(gt) and all(len(c) == 3 and c[1].isdigit() for c in cats)


def test_titles_only_for_main_images_and_splits_disjoint(lpr):
    meta = json.loads((lpr / "synth_meta.json").read_text())
    assert meta["generator"] == "lpr-synth" and meta["seed"] == 0 and meta["preset"] == "smoke"
    assert meta["knobs"] == json.loads(json.dumps(dataclasses.asdict(PRESETS["smoke"])))
    products = meta["products"]
    titles = dict(line.split("\t") for line in only(lpr, "test_image_title_*.txt").read_text().splitlines())
    gallery = json.loads(only(lpr, "test_liveid_to_gallery_*.json").read_text())
    test_images = {i for ids in gallery.values() for i in ids}
    for i in test_images:
        assert (i in titles) == (products[i]["view"] == "main"), i
    assert any(products[i]["view"] == "second" for i in test_images)
    details = 0
    for i, title in titles.items():
        a = products[i]["attributes"]
        assert a["colour"] in title and a["category"] in title
        details += f"with {a['accent']} trim" in title
    # titles name the small details only sometimes (title_detail_rate)
    assert 0 < details < len(titles)

    rows = read_training(lpr)
    train_lives = {CLIP_RE.match(f[0]).group(1) for f in rows}
    assert not train_lives & set(gallery)
    train_products = {products[f[3]]["product_id"] for f in rows}
    test_products = {products[i]["product_id"] for i in test_images}
    assert not train_products & test_products
    assert not {f[3] for f in rows} & test_images


def test_hidden_truth_matches_files(lpr):
    meta = json.loads((lpr / "synth_meta.json").read_text())
    clips, products = meta["clips"], meta["products"]
    frame_boxes = json.loads(only(lpr, "test_frameid2gtbox_*.json").read_text())
    gt = json.loads(only(lpr, "test_videoid_to_gtimage_*.json").read_text())
    per_clip = {v: [] for v in gt}
    for frame_id in sorted(frame_boxes):
        per_clip[frame_id.rsplit("-", 1)[0]].append(frame_boxes[frame_id])
    truths = [(f[0], f[3], json.loads(f[2])) for f in read_training(lpr)]
    truths += [(v, gt[v][0], per_clip[v]) for v in gt]
    assert set(clips) == {t[0] for t in truths}
    dup = 0
    for video_id, image_id, boxes in truths:
        c = clips[video_id]
        assert c["product_image_id"] == image_id
        assert len(c["target_box_index"]) == len(boxes)
        for k, frame in zip(c["target_box_index"], boxes):
            assert -1 <= k < len(frame)
        assert image_id not in c["distractor_image_ids"]
        visible = [len(f) for f in boxes]
        assert max(visible) <= 1 + len(c["distractor_image_ids"])
    for p in products.values():
        dup += p["near_duplicate_of"] is not None
    assert dup > 0
    # v2: every clip records its frames' depth order (a permutation of the visible boxes),
    # their times in seconds and the sold product's speed
    for video_id, _, boxes in truths:
        c = clips[video_id]
        assert [sorted(d) for d in c["depth_order"]] == [list(range(len(f))) for f in boxes]
        assert len(c["times_s"]) == len(c["target_speed"]) == len(boxes)
    # variants of a design share a family id and differ in exactly one attribute group
    families: dict[str, list[dict]] = {}
    for p in products.values():
        if p["view"] == "main" and p["family_id"]:
            families.setdefault(p["family_id"], []).append(p["attributes"])
    assert families
    for members in families.values():
        for a in members[1:]:
            changed = {k for k in a if a[k] != members[0][k]}
            assert changed and changed <= {"colour", "accent", "pattern", "badge"}, (members[0], a)


def test_every_subset_value_occurs(tmp_path):
    root = generate(tmp_path / "d", "smoke", seed=0, overrides=SMALL_TEST_SET, progress=False)
    frame_boxes = json.loads(only(root, "test_frameid2gtbox_*.json").read_text())
    per_clip: dict[str, list] = {}
    for frame_id in sorted(frame_boxes):
        per_clip.setdefault(frame_id.rsplit("-", 1)[0], []).append(frame_boxes[frame_id])
    seen = {k: set() for k in SUBSET_VALUES}
    for boxes in per_clip.values():
        for k, v in subsets_of(boxes).items():
            seen[k].add(v)
    assert seen == SUBSET_VALUES


# --------------------------------------------------------------------------- MovingFashion layout

def test_movingfashion_layout(mf):
    import av
    import decord

    cfg = PRESETS["smoke"]
    train = json.loads((mf / "train.json").read_text())
    test = json.loads((mf / "test.json").read_text())
    assert not set(train) & set(test)
    assert sum(len(e["video_paths"]) for e in train.values()) == cfg.train_lives * cfg.mf_train_clips_per_live
    owners: dict[str, int] = {}
    for index in (train, test):
        for pid, e in index.items():
            assert set(e) == {"img_path", "video_paths", "source", "tracklets"}
            assert e["img_path"] == f"imgs/{pid}.jpg" and e["source"] in (1, 2)
            check_jpeg(mf / e["img_path"], cfg.image_size)
            assert set(e["tracklets"]) == set(e["video_paths"])
            for vp in e["video_paths"]:
                owners[vp] = owners.get(vp, 0) + 1
                vr = decord.VideoReader(str(mf / vp))
                with av.open(str(mf / vp)) as c:
                    n_av = sum(1 for _ in c.decode(video=0))
                assert len(vr) == n_av and cfg.mf_frames[0] <= len(vr) <= cfg.mf_frames[1]
                assert vr[0].shape == (cfg.image_size, cfg.image_size, 3)
                for idx, box in e["tracklets"][vp].items():
                    assert 0 <= int(idx) < len(vr)
                    check_boxes([box])
    assert any(e["source"] == 2 for e in train.values())
    test_videos = {vp for e in test.values() for vp in e["video_paths"]}
    assert sum(owners[vp] == 2 for vp in test_videos) >= 1  # two ground truths
    assert all(owners[vp] == 1 for e in train.values() for vp in e["video_paths"])
    assert sorted(p.name for p in (mf / "videos").iterdir()) == sorted(Path(v).name for v in owners)
    assert not (mf / "synth_meta.json").exists()


# --------------------------------------------------------------------------- configuration

def test_make_config_parses_cli_strings():
    cfg = make_config("smoke", {"distractors": "0,6", "gap": "0.5", "train_lives": "7",
                                "blur": 1.0, "test_frames": 12.0})
    assert cfg.distractors == (0, 6) and cfg.gap == 0.5 and cfg.train_lives == 7
    assert cfg.blur == (1.0, 1.0) and cfg.test_frames == 12 and isinstance(cfg.test_frames, int)
    assert make_config("default") == SynthConfig()


@pytest.mark.parametrize("preset, overrides, message", [
    ("nope", None, "valid presets: smoke, default, large"),
    ("smoke", {"distractor": 3}, "valid knobs:"),
    ("smoke", {"train_lives": "many"}, "expects int"),
    ("smoke", {"train_lives": 2.5}, "expects int"),
    ("smoke", {"gap": True}, "expects float"),
    ("smoke", {"distractors": "1,2,3"}, "range"),
    ("smoke", {"distractors": "6,0"}, "lo > hi"),
    ("smoke", {"near_twin_rate": 1.5}, "probability"),
    ("smoke", {"family_size": "1,3"}, "at least 2"),
    ("smoke", {"image_size": 63}, "even"),
    ("smoke", {"test_lives": 0}, ">= 1"),
])
def test_make_config_rejects(preset, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(preset, overrides)


def test_generate_rejects_bad_format_and_seed(tmp_path):
    with pytest.raises(ValueError, match="valid formats"):
        generate(tmp_path / "a", "smoke", fmt="webdataset", progress=False)
    with pytest.raises(ValueError, match="seed"):
        generate(tmp_path / "a", "smoke", seed=-1, progress=False)
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- atomic output

@pytest.mark.parametrize("module,writer", [(files, "save_jpeg"), (lpr4m_writer, "write_index")])
def test_failed_run_leaves_nothing(tmp_path, monkeypatch, module, writer):
    calls = {"n": 0}
    real = getattr(module, writer)

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20 or writer == "write_index":
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, writer, failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "out", "smoke", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor the temporary sibling


def test_refuses_non_empty_out_dir_but_fills_empty_one(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "full", "smoke", progress=False)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    out = generate(tmp_path / "empty", "smoke", progress=False,
                   overrides={"train_lives": 1, "test_lives": 1, "train_clips_per_live": 2,
                              "test_clips_per_live": 2, "asr_empty_rate": 1})
    assert out == tmp_path / "empty" and (out / "synth_meta.json").is_file()
    # the empty-ASR path: the field is present and empty, the line keeps its tab
    assert all(f[7] == "" for f in read_training(out))
    assert all(line.endswith("\t") for line in
               only(out, "test_videoid_asr_*.txt").read_text().splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]


# --------------------------------------------------------------------------- v2: one stream per phenomenon

def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


def test_clip_level_knobs_leave_shops_and_other_phenomena_in_place(lpr, tmp_path):
    """A sweep point changes only what its knob draws: shop images and titles stay byte-identical
    (so the pretrained CLIP and the title features carry over); an ASR knob leaves every frame
    as it was, and a handling knob every ASR text."""
    asr = generate(tmp_path / "asr", "smoke", seed=0, progress=False,
                   overrides={"asr_error_rate": 0.0, "asr_attributes": "5,5"})
    moved = generate(tmp_path / "moved", "smoke", seed=0, progress=False,
                     overrides={"handling": 2.0, "distractors": "6,10", "variation": 0})
    for other in (asr, moved):
        assert _files(other, "images/*") == _files(lpr, "images/*")
        assert _files(other, "test_image_title_*") == _files(lpr, "test_image_title_*")
        assert _files(other, "test_liveid_to_gallery_*") == _files(lpr, "test_liveid_to_gallery_*")
    assert _files(asr, "frames/*/*") == _files(lpr, "frames/*/*")
    assert _files(asr, "test_videoid_asr_*") != _files(lpr, "test_videoid_asr_*")
    assert _files(moved, "frames/*/*") != _files(lpr, "frames/*/*")
    base_text = only(lpr, "test_videoid_asr_*.txt").read_text().splitlines()
    moved_text = only(moved, "test_videoid_asr_*.txt").read_text().splitlines()
    # the ASR stream is its own: most clips whose ASR named no distractor say the same words
    # (a clip that had no distractor before draws one random number less, so not all)
    meta = json.loads((lpr / "synth_meta.json").read_text())["clips"]
    same = [a == b for a, b in zip(base_text, moved_text) if not meta[a.split("\t")[0]]["asr_mentions_distractor"]]
    assert same and sum(same) >= 0.5 * len(same)


def test_handling_moves_the_sold_product_and_zero_holds_it_still(tmp_path):
    """handling 0: the sold product's recorded speed is 0 in every frame; the default moves it."""
    still = generate(tmp_path / "still", "smoke", seed=0, progress=False,
                     overrides={"handling": 0, "test_lives": 1, "train_lives": 1})
    moving = generate(tmp_path / "moving", "smoke", seed=0, progress=False,
                      overrides={"test_lives": 1, "train_lives": 1})
    speed = lambda root: [v for c in json.loads((root / "synth_meta.json").read_text())["clips"].values()
                          for v in c["target_speed"]]
    assert max(speed(still)) == 0.0
    assert max(speed(moving)) > 0.05
