"""LPR4M loader on the handwritten real-format fixture, and its bad-input behaviour.

Expected values come from tests/fixtures/lpr4m_real_small/EXPECTED.md (computed by hand).
"""
import copy
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from sgmn.data import lpr4m
from sgmn.data.datasets import ClipPairDataset, QueryDataset
from sgmn.data.frames import FrameReadError
from sgmn.data.records import AnnotationError
from sgmn.evaluate.run import build_queries, metrics_from_scores

FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"
L1 = "5b0e4c8a-2f1d-4a6b-8c3e-9d7f1a2b3c4d"
L2 = "c81d4e2f-6a3b-4f5c-b7d8-0e1f2a3b4c5d"
Q1, Q2, Q3 = f"{L1}-65000-74000", f"{L1}-130000-145000", f"{L2}-2710000-2719000"
G1a, G1b, G1d = ("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e",
                 "d4e5f6a7-b8c9-4dae-bf2a-3b4c5d6e7f80")
G2a = "6f7a8b9c-0d1e-4f2a-9b3c-4d5e6f7a8b9c"


def test_reads_11_and_12_column_parts_with_header():
    clips = lpr4m.read_training(FIXTURE)
    assert len(clips) == 5
    by_id = {c.video_id.split("-", 5)[-1]: c for c in clips}
    t4 = by_id["988000-991000"]
    assert t4.extra["spu_id"] == "2083471956" and t4.extra["count_type"] == "0"
    assert t4.title == "高端白酒 53度 酱香型 500ml" and t4.category_id == 20
    assert "spu_id" not in by_id["1203000-1206000"].extra
    assert by_id["1310500-1312500"].asr == ""           # empty ASR kept as ""
    assert all(c.live_id in (L1, L2) for c in clips)
    assert all(p.exists() for c in clips for p in c.frame_paths + [c.image_path])


def test_box_conventions():
    by_id = {c.video_id.split("-", 5)[-1]: c for c in lpr4m.read_training(FIXTURE)}
    t1 = by_id["1203000-1206000"]
    assert t1.frame_boxes[2] == [] and len(t1.frame_boxes[1]) == 2 and not t1.extra["pixel_boxes"]
    t2 = by_id["1310500-1312500"]                         # flat box per frame
    assert t2.frame_boxes == [[[0.125, 0.25, 0.5, 0.75]], [[0.1458, 0.1875, 0.5417, 0.8125]]]
    t3 = by_id["402000-405000"]                           # pixel boxes, [0,0,0,0] = none
    assert t3.extra["pixel_boxes"] and t3.frame_boxes[1] == []
    assert lpr4m.normalise_boxes(t3.frame_boxes, 48, 32) == [
        [[0.125, 0.125, 0.625, 0.875]], [], [[0.25, 0.25, 0.75, 0.75]]]
    t4 = by_id["988000-991000"]
    assert lpr4m.normalise_boxes(t4.frame_boxes, 48, 32)[0] == [[0, 0, 0.5, 1.0], [0.5, 0.25, 1.0, 1.0]]


def test_training_dataset_normalises_pixel_boxes_and_pads_frames():
    clips = lpr4m.read_training(FIXTURE)
    ds = ClipPairDataset(clips, num_frames=4, image_size=32)
    t3 = next(i for i, c in enumerate(clips) if c.video_id.endswith("402000-405000"))
    item = ds[t3]
    assert item["frames"].shape == (4, 3, 32, 32)
    assert item["frame_mask"].tolist() == [True, True, True, False]
    assert item["box_counts"].tolist() == [1, 0, 1, 0]
    assert torch.allclose(item["boxes"][0, 0], torch.tensor([0.125, 0.125, 0.625, 0.875]))
    assert item["frames"][3].abs().sum() == 0


def test_test_split_galleries_ground_truth_and_subsets():
    test = lpr4m.read_test(FIXTURE)
    assert [q.video_id for q in test.queries] == sorted([Q1, Q2, Q3])
    assert len(test.gallery[L1]) == 5 and len(test.gallery[L2]) == 3
    assert set(test.gt[Q2]) == {G1b, G1d}
    assert next(q for q in test.queries if q.video_id == Q3).asr == ""
    queries = {q.video_id: q for q in build_queries(test)}
    assert queries[Q1].subsets == {"scale": "large", "duration": "long", "count": "few"}
    assert queries[Q2].subsets == {"scale": "small", "duration": "short", "count": "few"}
    assert queries[Q3].subsets == {"scale": "medium", "duration": "medium", "count": "medium"}
    assert queries[Q3].gallery == tuple(test.gallery[L2])


def test_metrics_from_a_score_table_with_per_live_galleries():
    test = lpr4m.read_test(FIXTURE)
    rows = []
    for q in test.queries:
        for rank, g in enumerate(test.gallery_of(q)):
            rows.append((q.video_id, g, -float(rank)))
    # Q1: G1a first -> hit@1; Q2: G1b second in L1 order -> hit@1? L1 order is G1a..G1e, so
    # G1a outranks G1b -> rank 2; Q3: G2a first -> hit@1. An L1 image scored for Q3 is ignored.
    rows.append((Q3, G1a, 100.0))
    scores = pd.DataFrame(rows, columns=["video_id", "image_id", "score"])
    metrics, per_query = metrics_from_scores(test, scores)
    assert metrics["overall"]["R@1"] == pytest.approx(200 / 3, abs=1e-3)
    assert metrics["overall"]["R@5"] == 100.0
    assert per_query.set_index("video_id").loc[Q2, "rank"] == 2


def test_malformed_line_names_file_and_line(data):
    part = data / "training_videoinfo_full_0.txt"
    lines = part.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = "\t".join(lines[1].split("\t")[:7]) + "\n"
    part.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"{part}:2: expected 11 or 12 tab-separated fields .*, got 7"):
        lpr4m.read_training(data)
    skipped = []
    clips = lpr4m.read_training(data, on_bad_line="skip", skipped=skipped)
    assert len(clips) == 4 and len(skipped) == 1 and f"{part}:2" in skipped[0]


def test_bad_box_field_and_non_utf8_name_the_line(data):
    part = data / "training_videoinfo_full_0.txt"
    lines = part.read_bytes().splitlines(keepends=True)
    fields = lines[0].split(b"\t")
    fields[2] = b"[[0.1, 0.2]]"
    lines[0] = b"\t".join(fields)
    lines[2] = lines[2].replace(b"\t", b"\t\xff\xfe", 1)
    part.write_bytes(b"".join(lines))
    with pytest.raises(AnnotationError, match=rf"{part}:1: box list has 1 entries for 3 frames"):
        lpr4m.read_training(data)
    skipped = []
    lpr4m.read_training(data, on_bad_line="skip", skipped=skipped)
    assert [s.split(": ")[0] for s in skipped] == [f"{part}:1", f"{part}:3"]
    assert "UTF-8" in skipped[1]


def test_corrupt_and_missing_frames(data):
    clips = lpr4m.read_training(data)
    clips[0].frame_paths[1].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    clips[1].frame_paths[0].unlink()
    ds = ClipPairDataset(clips, num_frames=4, image_size=32)
    with pytest.raises(FrameReadError, match=rf"{clips[0].frame_paths[1]}: cannot decode image.*annotation {clips[0].source}"):
        ds[0]
    with pytest.raises(FrameReadError, match=rf"{clips[1].frame_paths[0]}: file not found"):
        ds[1]
    masked = ClipPairDataset(clips, num_frames=4, image_size=32, on_bad_frame="mask")
    assert masked[0]["frame_mask"].tolist() == [True, False, True, False]
    assert len(masked.frame_errors) == 1 and str(clips[0].frame_paths[1]) in masked.frame_errors[0]


def test_missing_gallery_image_and_unreadable_query_are_reported_misses(data):
    test = lpr4m.read_test(data)
    q1 = next(q for q in test.queries if q.video_id == Q1)
    for p in q1.frame_paths:
        p.unlink()
    item = QueryDataset(test, 4, 32)[test.queries.index(q1)]
    assert not item["ok"] and "no readable frame" in item["error"]
    metrics, _ = metrics_from_scores(test, pd.DataFrame({"video_id": [Q3], "image_id": [G2a], "score": [1.0]}),
                                     unreadable={Q1: item["error"]})
    reasons = {m["video_id"]: m["reason"] for m in metrics["misses"]}
    assert reasons[Q1].startswith("unreadable") and Q2 in reasons and metrics["overall"]["n"] == 3


def test_ground_truth_absent_from_gallery_is_a_recorded_miss(data):
    gt_file = next(data.glob("test_videoid_to_gtimage_*.json"))
    gt = json.loads(gt_file.read_text())
    gt[Q3] = [G1a]  # an L1 image for an L2 query
    gt_file.write_text(json.dumps(gt))
    test = lpr4m.read_test(data)
    scores = pd.DataFrame({"video_id": [Q3] * 3, "image_id": test.gallery[L2], "score": [3.0, 2.0, 1.0]})
    metrics, _ = metrics_from_scores(test, scores)
    miss = next(m for m in metrics["misses"] if m["video_id"] == Q3)
    assert "ground truth not in gallery" in miss["reason"]


def test_empty_gallery_is_a_recorded_miss(data):
    gal_file = next(data.glob("test_liveid_to_gallery_*.json"))
    gal = json.loads(gal_file.read_text())
    gal[L2] = []
    gal_file.write_text(json.dumps(gal))
    metrics, _ = metrics_from_scores(lpr4m.read_test(data), pd.DataFrame(columns=["video_id", "image_id", "score"]))
    assert any(m["video_id"] == Q3 and "empty gallery" in m["reason"] for m in metrics["misses"])


def test_invalid_test_json_names_file_and_line(data):
    gal_file = next(data.glob("test_liveid_to_gallery_*.json"))
    gal_file.write_text('{\n  "a": [1,\n}')
    with pytest.raises(AnnotationError, match=rf"{gal_file}:3: invalid JSON"):
        lpr4m.read_test(data)


def test_missing_test_file_is_named(data):
    next(data.glob("test_image_title_*.txt")).unlink()
    with pytest.raises(FileNotFoundError, match="test_image_title_"):
        lpr4m.read_test(data)


def test_missing_gallery_image_is_reported_and_ranked_last(data):
    from sgmn.evaluate.run import evaluate_model
    from sgmn.models.clip import create_clip
    from sgmn.models.sgmn import gra_only

    (data / "images" / f"{G1a}.jpg").unlink()
    model = gra_only(create_clip("lpr-tiny-clip").visual)
    config = {"dataset": {"format": "lpr4m"}, "model": {"image_size": 64, "num_frames": 4},
              "evaluate": {"batch_size": 4}}
    scores, metrics, per_query = evaluate_model(model, config, data)
    assert G1a not in set(scores["image_id"])
    assert "file not found" in metrics["gallery_errors"][G1a]
    assert metrics["missing_gallery_scores"] == 2          # Q1 and Q2 rank against L1's gallery
    ranks = per_query.set_index("video_id")["rank"]
    assert ranks[Q1] == 5                                  # its only ground truth, unscored, is last
    assert metrics["overall"]["n"] == 3 and metrics["n_misses"] == 0


def test_score_table_runs_a_learned_pairwise_score_without_autograd():
    """Regression: SEAM's and AsymNet's `score` is a network with trainable weights; the score
    table once called it with autograd on and failed on `.numpy()`."""
    import torch
    from sgmn.evaluate.run import score_table
    test = lpr4m.read_test(FIXTURE)
    queries = [q.video_id for q in test.queries]
    images = sorted({g for gallery in test.gallery.values() for g in gallery})
    head = torch.nn.Linear(4, 1)                                   # requires grad
    def pairwise(clip_emb, image_emb):                              # (Q, D), (G, D) -> (Q, G)
        pairs = clip_emb[:, None, :] * image_emb[None, :, :]
        return head(pairs).squeeze(-1)
    q_emb, i_emb = torch.randn(len(queries), 4), torch.randn(len(images), 4)
    table = score_table(test, queries, q_emb, images, i_emb, pairwise)
    first = test.queries[0]
    row = table[(table["video_id"] == first.video_id)].iloc[0]
    expected = pairwise(q_emb[[0]], i_emb[[images.index(row["image_id"])]]).item()
    assert row["score"] == pytest.approx(expected, rel=1e-5)
    assert len(table) == sum(len(test.gallery_of(q)) for q in test.queries)


def _boxes_or_error(value, n, slow):
    """parse_boxes' result, notes and error message, with the vectorised path on or off."""
    with pytest.MonkeyPatch.context() as m:
        if slow:
            m.setattr(lpr4m, "_clean_boxes", lambda value: None)
        notes: list[str] = []
        try:
            return lpr4m.parse_boxes(copy.deepcopy(value), n, notes), notes
        except ValueError as err:
            return "error", str(err)


_coord = st.one_of(st.sampled_from([0, 0.0, 0.25, 0.5, 1, 1.0, 1.005, -0.005, 1.5, 3.0, 120, 640.0,
                                    float("nan"), float("inf"), True]),
                   st.floats(-1, 700, allow_nan=False))
_box = st.one_of(st.lists(_coord, min_size=4, max_size=4), st.just([0, 0, 0, 0]),
                 st.lists(_coord, min_size=3, max_size=5), st.just(["0.1", 0.2, 0.3, 0.4]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(
    st.lists(_box, min_size=1, max_size=6),                                          # one flat box per frame
    st.integers(1, 3).flatmap(lambda k: st.lists(st.lists(_box, min_size=k, max_size=k), min_size=1, max_size=5)),
    st.lists(st.lists(_box, min_size=0, max_size=3), min_size=1, max_size=5)))      # ragged
def test_vectorised_boxes_agree_with_the_per_box_path(value):
    """Whatever the list, the fast path of parse_boxes (_clean_boxes) returns what the per-box path
    returns (boxes, pixel flag, notes) or raises the same error: it only takes clean lists."""
    n = len(value)
    assert _boxes_or_error(value, n, False) == _boxes_or_error(value, n, True)


def test_vectorised_boxes_take_regular_clean_lists():
    """The fast path is the one used for a clean list, regular or ragged (LPR4M's test split),
    and it drops [0,0,0,0] as no box."""
    flat = [[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], [10, 20, 30, 40]]
    assert lpr4m._clean_boxes(flat) == [[[0.1, 0.2, 0.3, 0.4]], [], [[10.0, 20.0, 30.0, 40.0]]]
    nested = [[[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0]], [[0.5, 0.5, 0.6, 0.7], [0.1, 0.1, 0.2, 0.2]]]
    assert lpr4m._clean_boxes(nested) == [[[0.1, 0.2, 0.3, 0.4]], [[0.5, 0.5, 0.6, 0.7], [0.1, 0.1, 0.2, 0.2]]]
    ragged = [[[0.1, 0.2, 0.3, 0.4]], [], [[0.5, 0.5, 0.6, 0.7], [0, 0, 0, 0], [0.1, 0.1, 0.2, 0.2]]]
    assert lpr4m._clean_boxes(ragged) == [[[0.1, 0.2, 0.3, 0.4]], [], [[0.5, 0.5, 0.6, 0.7], [0.1, 0.1, 0.2, 0.2]]]
    for unclean in ([[0.3, 0.2, 0.1, 0.4]], [[0.1, 0.2, 0.1, 0.4]], [[0.1, float("nan"), 0.3, 0.4]],
                    [[0.1, 0.2, 0.3]], [[[0.1, 0.2, 0.3, 0.4], 5]], [["0.1", 0.2, 0.3, 0.4]], [None], [[]]):
        assert lpr4m._clean_boxes(unclean) is None


def test_frame_paths_are_built_on_access_and_behave_as_a_list():
    """FolderMedia's frames are lpr4m.FramePaths: the Paths of LPR4M's layout (frames/{clip}/
    {frame}.jpg; a frame id that is a path as it is), by index, slice, iteration, ==, + and
    pickling (DataLoader workers), without building a Path per frame when the clip is read."""
    import pickle
    clip = lpr4m.read_training(FIXTURE)[0]
    paths = clip.frame_paths
    assert isinstance(paths, lpr4m.FramePaths)
    expected = [FIXTURE / "frames" / f.rsplit("-", 1)[0] / f"{f}.jpg" for f in paths.ids]
    assert list(paths) == expected and paths == expected and paths[-1] == expected[-1]
    assert paths[1:] == expected[1:] and len(paths) == len(expected)
    assert paths + [clip.image_path] == expected + [clip.image_path]
    assert pickle.loads(pickle.dumps(paths)) == expected
    assert lpr4m.FramePaths(Path("/r"), ["sub/x.jpg"])[0] == Path("/r/sub/x.jpg")


def test_readers_pause_the_cycle_collector_only_while_reading(monkeypatch):
    """Annotations are parsed with gc off (speed: scripts/bench_evaluate.py), by the readers
    themselves, so every caller gets it (read_split, data stats, the shard index); it is on again
    after a read and after a failed one, and stays off for a caller that had turned it off."""
    import gc
    from sgmn.data import movingfashion, splits
    seen = []
    find_one = lpr4m.find_one

    def spying_find_one(root, pattern):
        seen.append(gc.isenabled())
        if Path(root).name == "bad":
            raise lpr4m.AnnotationError(root, 1, "bad")
        return find_one(root, pattern)

    monkeypatch.setattr(lpr4m, "find_one", spying_find_one)
    assert gc.isenabled()
    assert len(splits.read_split(FIXTURE, "lpr4m", "test").queries) > 0
    with pytest.raises(lpr4m.AnnotationError):
        lpr4m.read_test(Path("bad"))
    assert len(seen) > 1 and not any(seen) and gc.isenabled()
    gc.disable()
    try:
        lpr4m.read_test(FIXTURE)
        assert not gc.isenabled()
    finally:
        gc.enable()
    for reader in (lpr4m.read_training, movingfashion.read_training, movingfashion.read_test):
        assert reader.__wrapped__, reader      # the same decorator on every annotation reader
