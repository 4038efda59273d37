"""The shard index: LPR4M's frames and images read from img2dataset's shards (files folders and
webdataset tars) through an id -> (shard, member) index, identical to the plain layout."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sgmn.cli import main
from sgmn.config import load_schema
from sgmn.data.datasets import ClipPairDataset, ImageDataset, QueryDataset, read_split
from sgmn.data.frame_store import FrameStore, build as build_store
from sgmn.data.frames import FrameReadError, read_image
from sgmn.data.records import AnnotationError
from sgmn.data.shard_index import (DEFAULT_ID_PATTERN, IdRule, IndexMedia, ShardIndex, build_index,
                                   image_ids_of, link_layout)

FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"
L1 = "5b0e4c8a-2f1d-4a6b-8c3e-9d7f1a2b3c4d"
Q1 = f"{L1}-65000-74000"
EXTRA = f"{Q1}-0003"                                   # a test frame the box file does not annotate
FAILED_FRAME = f"{L1}-1203000-1206000-0001"           # img2dataset could not fetch it
ABSENT_FRAME = f"{L1}-2405000-2407000-0001"           # in no url list at all
FAILED_IMAGE = "2b3c4d5e-6f70-4182-93a4-b5c6d7e8f901"  # a gallery image of L2 that failed


# ---- img2dataset's output, written as its writers do (img2dataset/writer.py, logger.py) ----

def i2d_key(shard_id: int, i: int, per_shard: int, oom_shard_count: int = 5) -> str:
    """img2dataset's compute_key: shard id and position, zero-padded."""
    oom_sample = math.ceil(math.log10(per_shard))
    return f"{shard_id * 10 ** oom_sample + i:0{oom_sample + oom_shard_count}d}"


def _meta(row: dict, key: str, extra: tuple) -> dict:
    """The sidecar of one url: the list's columns, then img2dataset's own."""
    ok = row["jpg"] is not None
    size = Image.open(io.BytesIO(row["jpg"])).size if ok else (None, None)
    return {**{c: row[c] for c in extra}, "url": row["url"], "key": key,
            "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else "HTTP Error 404: Not Found",
            "width": size[0], "height": size[1], "original_width": size[0], "original_height": size[1],
            "exif": "{}" if ok else None, "sha256": hashlib.sha256(row["jpg"]).hexdigest() if ok else None}


def _tar_add(tar: tarfile.TarFile, key: str, sample: dict) -> None:
    """webdataset's TarWriter.write: one member per extension, sorted, read-only, user bigdata."""
    for ext in sorted(sample):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(sample[ext]), time.time(), 0o444
        info.uname = info.gname = "bigdata"
        tar.addfile(info, io.BytesIO(sample[ext]))


def write_img2dataset(folder: Path, rows: list[dict], fmt: str, per_shard: int, extra: tuple = ()) -> dict:
    """Shards of `rows` (url, the extra columns, jpg bytes or None for a failed url) as
    img2dataset writes them; returns {id column value or url: (shard path, key)} of the files."""
    folder.mkdir(parents=True)
    where = {}
    for shard_id in range(math.ceil(len(rows) / per_shard)):
        name, metas = f"{shard_id:05d}", []
        tar = tarfile.open(folder / f"{name}.tar", "w|") if fmt == "webdataset" else None
        if tar is None:
            (folder / name).mkdir()
        for i, row in enumerate(rows[shard_id * per_shard: (shard_id + 1) * per_shard]):
            key = i2d_key(shard_id, i, per_shard)
            meta = _meta(row, key, extra)
            metas.append(meta)
            if row["jpg"] is None:
                continue
            sidecar = json.dumps(meta, indent=4)
            if tar is None:
                (folder / name / f"{key}.jpg").write_bytes(row["jpg"])
                (folder / name / f"{key}.json").write_text(sidecar)
            else:
                _tar_add(tar, key, {"jpg": row["jpg"], "json": sidecar.encode()})
            where[row["url"]] = (folder / (name if tar is None else f"{name}.tar"), key)
        if tar is not None:
            tar.close()
        pq.write_table(pa.Table.from_pylist(metas), folder / f"{name}.parquet")
        ok = sum(m["status"] == "success" for m in metas)
        (folder / f"{name}_stats.json").write_text(json.dumps(
            {"count": len(metas), "successes": ok, "failed_to_download": len(metas) - ok, "failed_to_resize": 0,
             "duration": 1.0, "status_dict": {"success": ok}}, indent=4))
    return where


def url_of(item: str, kind: str) -> str:
    return f"https://cdn.example.com/lpr4m/{kind}/{item}.jpg?sign=abc/def"


def fixture_rows(kind: str, drop: dict[str, str] | None = None) -> list[dict]:
    """One url per JPEG of the handwritten fixture (+ EXTRA for frames); `drop`: id -> "failed"
    (listed, not fetched) or "absent" (not listed)."""
    drop = drop or {}
    files = sorted((FIXTURE / kind).rglob("*.jpg"))
    items = {p.stem: p.read_bytes() for p in files}
    if kind == "frames":
        items[EXTRA] = items[f"{Q1}-0002"]
    return [{"url": url_of(i, kind), "item_id": i, "jpg": None if drop.get(i) == "failed" else data}
            for i, data in sorted(items.items()) if drop.get(i) != "absent"]


def annotations_only(dest: Path) -> Path:
    """The fixture's annotation files without frames/ and images/ (nothing to read by path)."""
    dest.mkdir(parents=True)
    for p in FIXTURE.iterdir():
        if p.is_file() and p.suffix in (".txt", ".json"):
            shutil.copy2(p, dest / p.name)
    return dest


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Shards of the whole fixture (frames as files, images as tars) and of a lossy download,
    an annotations-only root, and the plain layout with EXTRA (the reference)."""
    base = tmp_path_factory.mktemp("shards")
    plain = base / "plain"
    shutil.copytree(FIXTURE, plain)
    shutil.copy2(plain / "frames" / Q1 / f"{Q1}-0002.jpg", plain / "frames" / Q1 / f"{EXTRA}.jpg")
    out = {"plain": plain, "root": annotations_only(base / "root"), "where": {}}
    for name, fmt, kind, drop in (("frames", "files", "frames", {}), ("images", "webdataset", "images", {}),
                                  ("frames_tar", "webdataset", "frames", {}), ("images_files", "files", "images", {}),
                                  ("lossy_frames", "files", "frames", {FAILED_FRAME: "failed", ABSENT_FRAME: "absent"}),
                                  ("lossy_images", "files", "images", {FAILED_IMAGE: "failed"})):
        out["where"][name] = write_img2dataset(base / name, fixture_rows(kind, drop), fmt, per_shard=10)
        out[name] = base / name
    return out


@pytest.fixture(scope="module")
def mixed(sets, tmp_path_factory):
    """The index of frames as files-format shards and images as webdataset tars."""
    out = tmp_path_factory.mktemp("index") / "index"
    report = build_index([sets["frames"], sets["images"]], out, data_root=sets["root"], processes=2)
    return out, report


# ---- the mapping -------------------------------------------------------------------------

def test_default_id_pattern_takes_the_file_stem_of_the_url():
    rule = IdRule()
    assert rule.pattern == DEFAULT_ID_PATTERN
    dataset = load_schema()["properties"]["dataset"]["properties"]["index"]["properties"]
    assert dataset["id_pattern"]["default"] == DEFAULT_ID_PATTERN
    cases = {"https://a.b/c/x-1-2-0003.jpg": "x-1-2-0003", "https://a.b/c/0f-ab.jpeg?t=1/2#f": "0f-ab",
             "https://a.b/c/noext": "noext", "frames/a.b.png": "a.b", "https://a.b/c/": None, "x.jpg": "x",
             "https://a.b/.jpg": ".jpg", "https://a.b/c/d.toolong": "d.toolong", "https://a.b/c/d.jpé": "d.jpé",
             "https://a.b/c/d.": "d.", "https://a.b/c/d#x/y.jpg": "d", "": None}
    assert {url: rule.id_of(url) for url in cases} == cases
    # the default rule skips the regex (speed): the regex itself gives the same ids
    assert {url: (m.group("id") if (m := rule.regex.search(url)) else None) for url in cases} == cases
    assert IdRule(r"/(?P<id>\w+)-\d+\.jpg$").id_of("https://a.b/abc-12.jpg") == "abc"
    assert IdRule(field="item_id").id_of(" 7f-1 ") == "7f-1"
    with pytest.raises(ValueError, match="named group"):
        IdRule(r"(\w+)\.jpg")


def test_every_id_maps_to_the_member_that_holds_its_bytes(sets, mixed):
    out, report = mixed
    index, media = ShardIndex(out), IndexMedia(out)
    frames = {r["item_id"]: r for r in fixture_rows("frames")}
    images = {r["item_id"]: r for r in fixture_rows("images")}
    assert len(index) == report["rows"] == len(frames) + len(images) == 38
    where = {**sets["where"]["frames"], **sets["where"]["images"]}
    for item, row in {**frames, **images}.items():
        found = int(index.rows([item])[0])
        assert found >= 0 and index.id_at(found) == item
        shard, key = where[row["url"]]
        assert index.where(found) == f"{shard.resolve()} member {key}"
        assert media.read(item) == row["jpg"]
    # a tar member: the bytes at the recorded offset are the member's, as tarfile extracts them
    shard, key = where[url_of(FAILED_IMAGE, "images")]
    with tarfile.open(shard) as tar:
        assert media.read(FAILED_IMAGE) == tar.extractfile(f"{key}.jpg").read()
    assert (index.rows(["nope", f"{Q1}-0009", Q1]) == -1).all()
    assert report["failed_downloads"]["count"] == 0 and report["duplicates"] == 0
    assert report["shards"] == 5 and report["tar_shards"] == 2    # 25 frames / 10, 13 images / 10


def test_a_clips_frames_are_listed_from_the_index(mixed):
    media = IndexMedia(mixed[0])
    assert [r.id for r in media.clip_frames(Q1)] == [f"{Q1}-000{i}" for i in range(4)]   # EXTRA too
    assert media.clip_frames(f"{L1}-1-2") is None


def test_sidecar_field_gives_the_id_when_urls_do_not(tmp_path):
    rows = [{"url": f"https://cdn.example.com/{i}.jpg", "item_id": item, "jpg": data}
            for i, (item, data) in enumerate((r["item_id"], r["jpg"]) for r in fixture_rows("images"))]
    write_img2dataset(tmp_path / "dl", rows, "files", per_shard=10000, extra=("item_id",))
    build_index([tmp_path / "dl"], tmp_path / "by_field", id_field="item_id", processes=1)
    build_index([tmp_path / "dl"], tmp_path / "by_url", processes=1)
    index = ShardIndex(tmp_path / "by_field")
    assert (index.rows([r["item_id"] for r in rows]) >= 0).all()
    assert ShardIndex(tmp_path / "by_url").meta["shards"][0]["key_width"] == 9
    assert (ShardIndex(tmp_path / "by_url").rows(["0", "12"]) >= 0).all()


def test_a_duplicate_id_keeps_its_first_shard(sets, tmp_path):
    report = build_index([sets["images_files"], sets["images"]], tmp_path / "dup", processes=1)
    index = ShardIndex(tmp_path / "dup")
    assert report["duplicates"] == 13 and len(index) == 13
    assert index.shards[int(index.arrays["shard"][0])]["kind"] == "files"


# ---- the missing ids --------------------------------------------------------------------

def test_annotation_ids_without_a_file_are_counted_and_listed(sets, tmp_path):
    out = tmp_path / "lossy"
    report = build_index([sets["lossy_frames"], sets["lossy_images"]], out, data_root=sets["root"], processes=1)
    ann = report["annotations"]
    # the fixture names 13 training frames, 5 training images, 11 test frames, 8 gallery images
    assert {k: (v["named"], v["missing"]) for k, v in ann["by_kind"].items()} == {
        "train_frame": (13, 2), "train_image": (5, 0), "test_frame": (11, 0), "test_image": (8, 1)}
    assert ann["by_kind"]["train_frame"]["missing_pct"] == round(200 / 13, 4)
    assert (ann["named"], ann["missing"], ann["missing_pct"]) == (37, 3, round(300 / 37, 4))
    assert ann["missing_failed_download"] == 2 and ann["test_clips_without_frames"]["count"] == 0
    lines = (out / "missing_ids.tsv").read_text().splitlines()
    assert lines[0] == "kind\tid\tstatus"
    assert sorted(lines[1:]) == sorted([f"train_frame\t{FAILED_FRAME}\tfailed_to_download",
                                        f"train_frame\t{ABSENT_FRAME}\tabsent",
                                        f"test_image\t{FAILED_IMAGE}\tfailed_to_download"])
    assert report["failed_downloads"] == {"count": 2, "by_status": {"failed_to_download": 2},
                                          "shards_without_parquet_or_stats": []}
    assert json.loads((out / "report.json").read_text()) == report


def test_a_missing_frame_follows_on_bad_frame_like_a_missing_file(sets, tmp_path):
    out = tmp_path / "lossy"
    build_index([sets["lossy_frames"], sets["lossy_images"]], out, processes=1)
    clips = read_split(sets["root"], "lpr4m", "train", index=out)
    t1 = next(i for i, c in enumerate(clips) if c.video_id == FAILED_FRAME.rsplit("-", 1)[0])
    with pytest.raises(FrameReadError, match=f"{FAILED_FRAME}.*not in the shard index"):
        ClipPairDataset(clips, 8, 32)[t1]
    plain = tmp_path / "plain"
    shutil.copytree(sets["plain"], plain)
    os.remove(plain / "frames" / FAILED_FRAME.rsplit("-", 1)[0] / f"{FAILED_FRAME}.jpg")
    masked = ClipPairDataset(clips, 8, 32, on_bad_frame="mask")
    reference = ClipPairDataset(read_split(plain, "lpr4m", "train"), 8, 32, on_bad_frame="mask")
    got, want = masked[t1], reference[t1]
    assert got["frame_mask"].tolist() == [True, False, True] + [False] * 5
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, got[key]), key
    assert len(masked.frame_errors) == 1 and FAILED_FRAME in masked.frame_errors[0]
    test = read_split(sets["root"], "lpr4m", "test", index=out)
    ids = sorted(test.image_paths)
    item = ImageDataset(test.image_paths, ids, 32)[ids.index(FAILED_IMAGE)]
    assert item["ok"] is False and "not in the shard index" in item["error"]


# ---- identical to the plain layout --------------------------------------------------------

def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("shards", [("frames", "images"), ("frames_tar", "images_files")])
def test_loading_through_the_index_is_identical_to_the_plain_layout(sets, tmp_path, shards):
    out = tmp_path / "index"
    build_index([sets[s] for s in shards], out, processes=1)
    plain, root = sets["plain"], sets["root"]
    clips, reference = read_split(root, "lpr4m", "train", index=out), read_split(plain, "lpr4m", "train")
    assert [c.video_id for c in clips] == [c.video_id for c in reference]
    for clip, ref in zip(clips, reference):
        assert [p.rel for p in clip.frame_paths] == [os.path.relpath(p, plain) for p in ref.frame_paths]
        for p, q in zip(clip.frame_paths + [clip.image_path], ref.frame_paths + [ref.image_path]):
            assert p.read_bytes() == q.read_bytes() and np.array_equal(read_image(p), read_image(q))
    for i in range(len(clips)):            # T3 and T4 have pixel boxes: the frame size is read too
        _same(ClipPairDataset(clips, 4, 32)[i], ClipPairDataset(reference, 4, 32)[i])
    test, ref_test = read_split(root, "lpr4m", "test", index=out), read_split(plain, "lpr4m", "test")
    assert [len(q.frame_paths) for q in test.queries] == [len(q.frame_paths) for q in ref_test.queries] == [5, 4, 3]
    for i in range(len(test.queries)):
        _same(QueryDataset(test, 8, 32)[i], QueryDataset(ref_test, 8, 32)[i])
    ids = sorted(test.image_paths)
    for i in range(len(ids)):
        _same(ImageDataset(test.image_paths, ids, 32)[i], ImageDataset(ref_test.image_paths, ids, 32)[i])


def test_a_frame_store_builds_from_the_index(sets, mixed, tmp_path):
    index, root = mixed[0], sets["root"]
    store = FrameStore(build_store(root, 32, tmp_path / "frames_32", index=index), root)
    assert len(store.rows) == 38
    clips = read_split(root, "lpr4m", "train", index=index)
    for i in range(len(clips)):
        _same(ClipPairDataset(clips, 4, 32)[i], ClipPairDataset(clips, 4, 32, store=store)[i])


# ---- hard links, the CLI, bad sidecars -----------------------------------------------------

def test_hard_links_lay_out_files_shards_as_lpr4m(sets, tmp_path):
    out, root = tmp_path / "index", annotations_only(tmp_path / "root")
    build_index([sets["frames"], sets["images_files"]], out, processes=1)
    index = ShardIndex(out)
    assert link_layout(index, root, image_ids_of(root)) == {"root": str(root), "linked": 38, "existing_kept": 0}
    plain, where = sets["plain"], {**sets["where"]["frames"], **sets["where"]["images_files"]}
    for p in sorted(plain.rglob("*.jpg")):
        linked = root / p.relative_to(plain)
        shard, key = where[url_of(p.stem, "images" if p.parent.name == "images" else "frames")]
        assert os.path.samefile(linked, shard / f"{key}.jpg") and linked.read_bytes() == p.read_bytes()
    _same(ClipPairDataset(read_split(root, "lpr4m", "train"), 4, 32)[0],
          ClipPairDataset(read_split(plain, "lpr4m", "train"), 4, 32)[0])
    assert link_layout(index, root, image_ids_of(root))["existing_kept"] == 38
    with pytest.raises(AnnotationError, match="webdataset tar"):
        build_index([sets["images"]], tmp_path / "tars", processes=1)
        link_layout(ShardIndex(tmp_path / "tars"), root, set())


def test_cli_index_writes_the_index_and_its_report(sets, tmp_path, capsys):
    out, root = tmp_path / "idx", annotations_only(tmp_path / "root")
    assert main(["index", "--shards", str(sets["lossy_frames"]), "--shards", str(sets["lossy_images"]),
                 "--data", str(root), "--out", str(out), "--link-layout"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["annotations"]["missing"] == 3 and report["links"]["linked"] == 35
    assert (root / "frames" / Q1 / f"{EXTRA}.jpg").is_file()
    assert main(["index", "--shards", str(sets["lossy_frames"]), "--data", str(root), "--out", str(root)]) == 2
    assert "not a shard index" in capsys.readouterr().err


def test_malformed_sidecar_json_is_an_error_naming_the_file(sets, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sets["frames"], broken)
    sidecar = broken / "00001" / f"{i2d_key(1, 3, 10)}.json"
    sidecar.write_text('{\n    "url": "https://x/y.jpg",\n    "key": 13,,\n}')
    with pytest.raises(AnnotationError, match=f"{sidecar}:3: invalid JSON"):
        build_index([broken], tmp_path / "out", processes=2)
    tar_dir = tmp_path / "tar"
    tar_dir.mkdir()
    with tarfile.open(tar_dir / "00000.tar", "w") as tar:
        _tar_add(tar, "000000000", {"jpg": b"\xff\xd8", "json": b"[1, 2]"})
    with pytest.raises(AnnotationError, match=r"00000\.tar:000000000\.json:1: expected a JSON object"):
        build_index([tar_dir], tmp_path / "out", processes=1)
    assert not (tmp_path / "out").exists()


def test_index_reads_survive_pickling_and_a_changed_shard_is_refused(sets, tmp_path):
    import pickle
    shards = tmp_path / "images"
    shutil.copytree(sets["images"], shards)
    out = tmp_path / "index"
    build_index([sets["frames"], shards], out, processes=1)
    test = read_split(sets["root"], "lpr4m", "test", index=out)
    ids = sorted(test.image_paths)
    dataset = ImageDataset(test.image_paths, ids, 32)
    dataset[0]                                        # opens a tar handle in this process
    _same(pickle.loads(pickle.dumps(dataset))[1], dataset[1])   # a worker (spawn) reopens its own
    tar = next(shards.glob("*.tar"))
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))   # rewritten
    with pytest.raises(LookupError, match="changed since this index was built"):
        IndexMedia(out)


def test_an_unset_index_stays_out_of_run_configs():
    """Adding dataset.index reruns nothing: a run config that reads the plain layout is as it was."""
    from sgmn import config as cfg
    base = cfg.load_config(Path(__file__).parents[1] / "workflow/config/default.yaml")
    assert base["dataset"]["index"] == {"shards": [], "path": None, "id_pattern": DEFAULT_ID_PATTERN, "id_field": None}
    run = cfg.resolve_variant(base, "sgmn")
    assert "index" not in run["dataset"] and "index" not in cfg.revalidate_resolved(run, "run")["dataset"]
    base["dataset"]["index"]["path"] = "/data/lpr4m_index"
    run = cfg.resolve_variant(base, "sgmn")
    again = cfg.revalidate_resolved(run, "run")
    assert run["dataset"]["index"]["path"] == again["dataset"]["index"]["path"] == "/data/lpr4m_index"


def test_the_dag_builds_the_index_only_when_shards_are_named(sets, tmp_path):
    import subprocess
    import sys
    repo = Path(__file__).parents[1]
    config = tmp_path / "shards.yaml"
    config.write_text(f"dataset:\n  path: {FIXTURE}\n  frame_store: true\n"
                      f"  index:\n    shards: [{sets['frames']}, {sets['images']}]\n")
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(repo / "Snakefile"),
                           "--directory", str(tmp_path / "dag"),
                           "--configfile", str(repo / "workflow/config/lpr4m.yaml"), str(config)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert plan.returncode == 0, plan.stderr[-3000:]
    table = plan.stdout.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    counts = dict(line.split() for line in table if line.strip())
    assert counts["index"] == "1" and counts["frame_store_indexed"] == "1" and "frame_store" not in counts
    trains = [block for block in plan.stdout.split("rule ")[1:] if block.startswith("train:")]
    assert trains and all("results/lpr4m/shard_index" in block.split("output:")[0] for block in trains)
