"""MovingFashion loader on MF-Synth: mp4 through decord, one global gallery, bad videos."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from sgmn.data import movingfashion
from sgmn.data.datasets import ClipPairDataset, QueryDataset
from sgmn.data.frames import FrameReadError, read_video, sample_indices
from sgmn.data.records import AnnotationError
from sgmn.evaluate.run import build_queries, metrics_from_scores


def test_training_pairs_decode_mp4(mf_data):
    clips = movingfashion.read_training(mf_data)
    assert clips and all(c.video_path.suffix == ".mp4" and c.image_path.exists() for c in clips)
    item = ClipPairDataset(clips, num_frames=6, image_size=64)[0]
    assert item["frames"].shape == (6, 3, 64, 64) and item["frame_mask"].all()
    assert item["asr"] == "" and item["title"] == ""


def test_tracklets_become_the_detector_track(mf_data):
    """A tracklet's box of a sampled frame is that frame's (only, target) box; frames the
    tracklet skips have none (json written by hand below, so the expected boxes are known)."""
    index = json.loads((mf_data / "train.json").read_text())
    pid, entry = next((p, e) for p, e in index.items() if e.get("tracklets"))
    vp = entry["video_paths"][0]
    track = entry["tracklets"][vp]
    clip = next(c for c in movingfashion.read_training(mf_data) if c.video_id == Path(vp).stem)
    assert len(clip.frame_boxes) == max(int(t) for t in track) + 1
    for t, box in track.items():
        assert clip.frame_boxes[int(t)] == [box]
    item = ClipPairDataset([clip], num_frames=4, image_size=64)[0]
    shown = sample_indices(read_video(clip.video_path, 4)[1], 4).tolist()   # the sampled frames
    expected_present = [str(i) in track for i in shown]
    assert item["target_present"][: len(shown)].tolist() == expected_present
    assert (item["target_index"][: len(shown)] == torch.tensor([0 if p else -1 for p in expected_present])).all()
    for t, i in enumerate(shown):
        if str(i) in track:
            assert item["boxes"][t, 0].tolist() == pytest.approx(track[str(i)], abs=1e-6)


def test_a_malformed_tracklet_names_the_file(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"p1": {"img_path": "imgs/p1.jpg", "video_paths": ["videos/a.mp4"],
                                                            "tracklets": {"videos/a.mp4": {"0": [0.1, 0.2]}}}}))
    with pytest.raises(AnnotationError, match="train.json.*tracklet of videos/a.mp4"):
        movingfashion.read_training(tmp_path)


def test_global_gallery_and_several_ground_truths(mf_data):
    test = movingfashion.read_test(mf_data)
    index = json.loads((mf_data / "test.json").read_text())
    assert test.gallery == {"all": sorted(index)}
    queries = build_queries(test)
    assert all(q.gallery == tuple(sorted(index)) for q in queries)
    listed = {}
    for pid, entry in index.items():
        for vp in entry["video_paths"]:
            listed.setdefault(Path(vp).stem, set()).add(pid)
    assert {q.video_id: set(q.gt) for q in queries} == listed
    # a perfect score table (every ground truth first) gives 100% at every k
    rows = [(q.video_id, g, float(g in q.gt)) for q in queries for g in q.gallery]
    metrics, _ = metrics_from_scores(test, pd.DataFrame(rows, columns=["video_id", "image_id", "score"]))
    assert metrics["overall"]["R@1"] == 100.0 and metrics["overall"]["n"] == len(queries)


def test_truncated_and_missing_mp4_are_reported(mf_data, tmp_path):
    import shutil
    data = tmp_path / "mf"
    shutil.copytree(mf_data, data)
    test = movingfashion.read_test(data)
    first, second = test.queries[0].video_path, test.queries[1].video_path
    first.write_bytes(first.read_bytes()[:200])         # truncated
    second.unlink()                                      # missing (as one public video is)
    ds = QueryDataset(test, 6, 64)
    bad = ds[0]
    assert not bad["ok"] and str(first) in bad["error"]
    gone = ds[1]
    assert not gone["ok"] and f"{second}: file not found" in gone["error"]
    clips = movingfashion.read_training(data)
    clips[0].video_path.write_bytes(b"\x00" * 64)
    with pytest.raises(FrameReadError, match=str(clips[0].video_path)):
        ClipPairDataset(clips, 6, 64)[0]


def test_malformed_index(tmp_path):
    (tmp_path / "test.json").write_text('{"p1": {"img_path": "imgs/p1.jpg"}}')
    with pytest.raises(AnnotationError, match="p1: expected an img_path string and a video_paths list"):
        movingfashion.read_test(tmp_path)
    # a video list given as one string, and a product written twice, are errors too
    (tmp_path / "test.json").write_text('{"p1": {"img_path": "imgs/p1.jpg", "video_paths": "v.mp4"}}')
    with pytest.raises(AnnotationError, match="p1: expected an img_path string and a video_paths list"):
        movingfashion.read_test(tmp_path)
    (tmp_path / "test.json").write_text('{"p1": {"img_path": "a", "video_paths": []}, "p1": {"img_path": "b", "video_paths": []}}')
    with pytest.raises(AnnotationError, match="key 'p1' occurs twice"):
        movingfashion.read_test(tmp_path)
