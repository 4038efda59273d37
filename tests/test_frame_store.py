"""The decoded-frame store: the loaders read identical tensors from it, and a store that does not
match its root's files is refused rather than used."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sgmn.data.datasets import ClipPairDataset, ImageDataset, QueryDataset, read_split
from sgmn.data.frame_store import FrameStore, FrameStoreError, build, dataset_files
from sgmn.data.frames import FrameReadError


def _tensors_equal(a: dict, b: dict) -> None:
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key


@pytest.fixture(scope="module")
def stored(smoke_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "frames_64"
    build(smoke_data, 64, out)
    return smoke_data, out


def test_every_file_is_stored_once(stored):
    root, out = stored
    store = FrameStore(out, root)
    files, videos = dataset_files(root)
    assert videos == []                               # the LPR4M layout has frame files only
    assert len(store.rows) == len(files) == len(set(files))
    assert store.pixels.shape == (len(files), 64, 64, 3) and store.pixels.dtype == np.uint8
    # a row is the file's decoded pixels (the smoke frames are 64 px: no resize)
    rel = files[len(files) // 2]
    assert np.array_equal(store.get(root / rel, 64), np.asarray(Image.open(root / rel).convert("RGB")))


def test_loaders_read_identical_tensors_from_the_store(stored):
    root, out = stored
    store = FrameStore(out, root)
    clips = read_split(root, "lpr4m", "train")
    plain, cached = ClipPairDataset(clips, 8, 64), ClipPairDataset(clips, 8, 64, store=store)
    for i in range(0, len(clips), max(1, len(clips) // 10)):
        _tensors_equal(plain[i], cached[i])
    test = read_split(root, "lpr4m", "test")
    for i in range(0, len(test.queries), max(1, len(test.queries) // 10)):
        _tensors_equal(QueryDataset(test, 8, 64)[i], QueryDataset(test, 8, 64, store)[i])
    ids = sorted(test.image_paths)[:5]
    for i in range(5):
        _tensors_equal(ImageDataset(test.image_paths, ids, 64)[i], ImageDataset(test.image_paths, ids, 64, store)[i])


def test_another_input_size_decodes_the_files(stored):
    root, out = stored
    store = FrameStore(out, root)
    rel = dataset_files(root)[0][0]
    assert store.get(root / rel, 32) is None          # stored at 64 px only
    clips = read_split(root, "lpr4m", "train")
    _tensors_equal(ClipPairDataset(clips, 4, 32)[0], ClipPairDataset(clips, 4, 32, store=store)[0])


def test_a_changed_root_is_refused(stored, tmp_path):
    root, out = stored
    copy = tmp_path / "data"
    shutil.copytree(root, copy)                       # copy2 keeps sizes and modification times
    assert FrameStore(out, copy).get(copy / dataset_files(root)[0][0], 64) is not None
    first = copy / dataset_files(root)[0][0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))  # rewritten
    with pytest.raises(FrameStoreError, match="stale"):
        FrameStore(out, copy)
    os.remove(copy / dataset_files(root)[0][0])
    with pytest.raises(FrameStoreError, match="missing"):
        FrameStore(out, copy)
    with pytest.raises(FrameStoreError, match="not a frame store"):
        FrameStore(tmp_path, root)


def test_an_unreadable_file_is_not_stored_and_still_fails(smoke_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(smoke_data, root)
    clips = read_split(root, "lpr4m", "train")
    bad = clips[0].frame_paths[0]
    bad.write_bytes(b"not a jpeg")
    store = FrameStore(build(root, 64, tmp_path / "frames_64"), root)
    assert store.get(bad, 64) is None and len(store.rows) == len(dataset_files(root)[0]) - 1
    with pytest.raises(FrameReadError, match=bad.name):
        ClipPairDataset(clips, 64, 64, store=store)[0]   # L=64 >= the clip's frames: samples the bad one


@pytest.fixture(scope="module")
def mf_stored(mf_data, tmp_path_factory):
    root = mf_data
    out = tmp_path_factory.mktemp("mf_store") / "frames_64"
    build(root, 64, out, "movingfashion", num_frames=4)
    return root, out


def test_a_movingfashion_store_holds_each_videos_sampled_frames(mf_stored):
    root, out = mf_stored
    store = FrameStore(out, root)
    images, videos = dataset_files(root, "movingfashion")
    assert videos and all(v.endswith(".mp4") for v in videos) and set(store.videos) == set(videos)
    assert all(k == 4 and n >= 4 for n, _, k in store.videos.values())   # MF-Synth videos: 12-16 frames
    train = read_split(root, "movingfashion", "train")
    plain, cached = ClipPairDataset(train, 4, 64), ClipPairDataset(train, 4, 64, store=store)
    for i in range(0, len(train), max(1, len(train) // 6)):
        _tensors_equal(plain[i], cached[i])
    test = read_split(root, "movingfashion", "test")
    for i in range(0, len(test.queries), max(1, len(test.queries) // 6)):
        _tensors_equal(QueryDataset(test, 4, 64)[i], QueryDataset(test, 4, 64, store)[i])
    # another L: not in the store, decoded as before
    assert store.get_video(root / videos[0], 8, 64) is None
    _tensors_equal(ClipPairDataset(train, 8, 64)[0], ClipPairDataset(train, 8, 64, store=store)[0])
