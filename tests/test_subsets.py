"""Hand-computed cases for the LPR4M subset statistics and bins (spec: lpr4m_format.md, Subsets)."""

import pytest

from sgmn.data.subsets import THRESHOLDS, bin_value, clip_statistics, subset_labels


def box(w, h, x=0.0, y=0.0):
    return [x, y, x + w, y + h]


def test_statistics_hand_case():
    # frame 0: areas 0.1 and 0.3 -> mean 0.2; frame 1: no box -> 0; frame 2: area 0.4
    frames = [[box(0.5, 0.2), box(0.5, 0.6)], [], [box(0.5, 0.8)]]
    st = clip_statistics(frames)
    assert st["scale"] == pytest.approx((0.2 + 0.0 + 0.4) / 3)
    assert st["duration"] == pytest.approx(2 / 3)
    assert st["count"] == pytest.approx(3 / 3)


def test_degenerate_boxes_are_not_boxes():
    frames = [[[0, 0, 0, 0], [0.5, 0.5, 0.4, 0.6], [0.1, 0.2, 0.3, 0.2]], [box(0.5, 0.4)]]
    st = clip_statistics(frames)
    assert st == pytest.approx({"scale": 0.1, "duration": 0.5, "count": 0.5})


def test_zero_frames_raises():
    with pytest.raises(ValueError, match="zero"):
        clip_statistics([])


def test_pixel_boxes_rejected():
    with pytest.raises(ValueError, match="normalised"):
        clip_statistics([[[10, 20, 100, 200]]])


def test_flat_box_rejected():
    with pytest.raises(ValueError, match="flat"):
        clip_statistics([[0.1, 0.1, 0.5, 0.5]])


@pytest.mark.parametrize(
    "frames, expected",
    [
        # scale exactly 0.2 -> small, also when float subtraction gives 0.20000000000000007
        ([[box(0.5, 0.4)]], "small"),
        ([[[0.0, 0.6, 1.0, 0.8]]], "small"),
        ([[box(0.5, 0.41)]], "medium"),  # 0.205
        ([[box(0.8, 0.5)]], "medium"),  # exactly 0.4
        ([[box(0.9, 0.5)]], "large"),  # 0.45
        # a frame without box counts 0: (0.6 + 0) / 2 = 0.3
        ([[box(1.0, 0.6)], []], "medium"),
    ],
)
def test_scale_bins(frames, expected):
    assert subset_labels(frames)["scale"] == expected


@pytest.mark.parametrize(
    "n_with, n_frames, expected",
    [(2, 5, "short"), (3, 5, "medium"), (7, 10, "medium"), (8, 10, "long"), (0, 4, "short"), (4, 4, "long")],
)
def test_duration_bins_on_thresholds(n_with, n_frames, expected):
    frames = [[box(0.1, 0.1)] if i < n_with else [] for i in range(n_frames)]
    assert clip_statistics(frames)["duration"] == pytest.approx(n_with / n_frames)
    assert subset_labels(frames)["duration"] == expected


@pytest.mark.parametrize(
    "per_frame, expected",
    [([3], "few"), ([6, 0], "few"), ([4], "medium"), ([7], "medium"), ([8, 6], "medium"), ([8], "abundant")],
)
def test_count_bins_on_thresholds(per_frame, expected):
    frames = [[box(0.05, 0.05, x=0.1 * j) for j in range(n)] for n in per_frame]
    assert subset_labels(frames)["count"] == expected


def test_labels_have_every_subset():
    labels = subset_labels([[box(0.1, 0.1)]])
    assert set(labels) == set(THRESHOLDS)
    assert labels == {"scale": "small", "duration": "long", "count": "few"}


def test_bin_value_direct():
    assert [bin_value("count", x) for x in (0, 3, 3.0001, 7, 7.5)] == ["few", "few", "medium", "medium", "abundant"]
    with pytest.raises(ValueError):
        bin_value("scale", float("nan"))


def test_many_clips_at_once_match_each_clip_alone():
    """statistics_of_clips / labels_of_clips over several clips (LPR4M's 20k test clips go in
    one pass) give each clip what it gets alone: no box or frame leaks into a neighbour."""
    import random
    from sgmn.data.subsets import labels_of_clips, statistics_of_clips
    hand = [[box(0.5, 0.2), box(0.5, 0.6)], [], [box(0.5, 0.8)]]        # scale 0.2, duration 2/3, count 1
    rng = random.Random(0)
    clips = [hand, [[]], [[box(0.9, 0.9)] * 8]]
    for _ in range(40):
        clips.append([[box(rng.uniform(0, 0.7), rng.uniform(0, 0.7)) for _ in range(rng.randint(0, 9))]
                      for _ in range(rng.randint(1, 12))])
    stats = statistics_of_clips(clips)
    assert stats["scale"][0] == pytest.approx(0.2) and stats["duration"][0] == pytest.approx(2 / 3)
    assert (stats["scale"][1], stats["duration"][1], stats["count"][1]) == (0, 0, 0)
    assert stats["count"][2] == 8 and stats["scale"][2] == pytest.approx(0.81)
    for i, clip in enumerate(clips):
        assert {k: v[i] for k, v in stats.items()} == pytest.approx(clip_statistics(clip))
    assert labels_of_clips(clips) == [subset_labels(c) for c in clips]
    assert labels_of_clips(clips)[2] == {"scale": "large", "duration": "long", "count": "abundant"}


def test_many_clips_name_the_bad_one():
    from sgmn.data.subsets import statistics_of_clips
    good = [[box(0.5, 0.5)]]
    with pytest.raises(ValueError, match="clip 1: box coordinates outside"):
        statistics_of_clips([good, [[[10, 20, 100, 200]]], good])
    with pytest.raises(ValueError, match="clip 2: clip has zero"):
        statistics_of_clips([good, good, []])
    with pytest.raises(ValueError, match="clip 1: box coordinates must be finite"):
        statistics_of_clips([good, [[[0.1, float("nan"), 0.2, 0.3]]]])
