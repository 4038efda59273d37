"""evaluate.gallery (sgmn.data.gallery_unit): all_images vs main_images on hand-made LPR4M test
sets, the id rule, the record in metrics / summary / tables, and a bad config value.

Expected ranks and R@1 are worked out by hand in the comments, never by the code under test.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sgmn import config as cfg
from sgmn.cli import main
from sgmn.data import lpr4m, records
from sgmn.data.gallery_unit import apply_gallery_unit, gallery_stats, split_view
from sgmn.evaluate.run import metrics_from_scores
from sgmn.evaluate.tables import build_tables, to_markdown

L1 = "5b0e4c8a-2f1d-4a6b-8c3e-9d7f1a2b3c4d"
L2 = "c81d4e2f-6a3b-4f5c-b7d8-0e1f2a3b4c5d"
A, B, C = ("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e",
           "c3d4e5f6-a7b8-4c9d-ae1f-2a3b4c5d6e7f")
# live 2 names its images by bare UUIDs, like the public release and LPR-Synth: P2 is an
# untitled second view of P
P, P2, Q = ("6f7a8b9c-0d1e-4f2a-9b3c-4d5e6f7a8b9c", "8091a2b3-c4d5-4e6f-a7b8-c9d0e1f2a3b4",
            "2b3c4d5e-6f70-4182-93a4-b5c6d7e8f901")
Q1, Q2, Q3, Q4 = (f"{L1}-1000-4000", f"{L1}-5000-8000", f"{L1}-9000-12000", f"{L2}-1000-4000")

GALLERY = {L1: [f"{A}-0", f"{A}-1", f"{A}-2", f"{B}-0", f"{B}-1", f"{C}-0", f"{C}-1"], L2: [P, P2, Q]}
# RICE's ground truth names items (no suffix); one query names a view, one a non-main view
GT = {Q1: [A], Q2: [B], Q3: [f"{A}-2"], Q4: [P, P2]}
TITLES = {f"{A}-0": "hairpin", f"{B}-0": "bracelet", f"{C}-0": "earring", P: "liquor 53", Q: "liquor 52"}
SCORES = {
    # all_images: A-1 (item A) first -> rank 1, hit.  main_images: B-0 0.8 > A-0 0.5 -> rank 2, miss
    Q1: {f"{A}-1": 0.9, f"{B}-0": 0.8, f"{A}-0": 0.5, f"{C}-0": 0.4, f"{B}-1": 0.3, f"{A}-2": 0.2, f"{C}-1": 0.1},
    # all_images: C-1 0.9 above B-0 0.8 -> rank 2, miss.  main_images: C-1 is gone -> B-0 rank 1, hit
    Q2: {f"{C}-1": 0.9, f"{B}-0": 0.8, f"{A}-0": 0.5, f"{C}-0": 0.4, f"{B}-1": 0.3, f"{A}-2": 0.2, f"{A}-1": 0.1},
    # all_images: A-2 first -> hit.  main_images: the ground truth becomes A-0 (0.1), under B-0 and C-0
    Q3: {f"{A}-2": 0.95, f"{B}-0": 0.9, f"{C}-0": 0.6, f"{C}-1": 0.5, f"{B}-1": 0.4, f"{A}-1": 0.3, f"{A}-0": 0.1},
    # all_images: P2 (a ground truth) first -> hit.  main_images: P2 gone, Q 0.8 > P 0.7 -> rank 2, miss
    Q4: {P2: 0.9, Q: 0.8, P: 0.7},
}
# R@1 by hand: all_images hits Q1, Q3, Q4 -> 3/4 = 75 %; main_images hits Q2 only -> 1/4 = 25 %.
# Gallery size per query: all_images 7, 7, 7, 3 -> 24/4 = 6.0; main_images 3, 3, 3, 2 -> 11/4 = 2.75.


def write_test_set(root, gallery=GALLERY, gt=GT, titles=TITLES):
    """The five test files of LPR4M's layout (docs/data_formats.md); no frames are needed to
    recompute metrics from a score table."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(gt)
    (root / f"test_videoid_asr_{n}.txt").write_text("".join(f"{v}\t\n" for v in gt))
    (root / f"test_image_title_{len(titles)}.txt").write_text("".join(f"{i}\t{t}\n" for i, t in titles.items()))
    (root / f"test_videoid_to_gtimage_{n}.json").write_text(json.dumps(gt))
    (root / f"test_liveid_to_gallery_{len(gallery)}.json").write_text(json.dumps(gallery))
    (root / f"test_frameid2gtbox_{n}_0.json").write_text("{}")
    return root


def write_scores(path, scores=SCORES):
    rows = [(v, i, s) for v, by_image in scores.items() for i, s in by_image.items()]
    pd.DataFrame(rows, columns=["video_id", "image_id", "score"]).to_csv(path, index=False)
    return path


@pytest.fixture
def data(tmp_path):
    return write_test_set(tmp_path / "lpr")


@pytest.mark.parametrize("unit, r1, size, hits", [
    ("all_images", 75.0, 6.0, {Q1: True, Q2: False, Q3: True, Q4: True}),
    ("main_images", 25.0, 2.75, {Q1: False, Q2: True, Q3: False, Q4: False}),
])
def test_r1_by_hand_through_the_cli(tmp_path, data, unit, r1, size, hits):
    out, per_query = tmp_path / "m.json", tmp_path / "pq.csv"
    assert main(["evaluate", "--data", str(data), "--scores", str(write_scores(tmp_path / "s.csv")),
                 "--gallery", unit, "--out", str(out), "--per-query-out", str(per_query)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["overall"]["R@1"] == pytest.approx(r1) and metrics["overall"]["n"] == 4
    assert metrics["gallery_unit"] == unit and metrics["mean_gallery_size"] == pytest.approx(size)
    assert metrics["n_misses"] == 0
    table = pd.read_csv(per_query).set_index("video_id")
    assert table["hit@1"].to_dict() == hits


def test_scores_default_to_all_images(tmp_path, data):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--data", str(data), "--scores", str(write_scores(tmp_path / "s.csv")),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["gallery_unit"] == "all_images"


def test_main_images_galleries_ground_truth_and_report(data):
    test = apply_gallery_unit(lpr4m.read_test(data), "main_images")
    assert test.gallery == {L1: [f"{A}-0", f"{B}-0", f"{C}-0"], L2: [P, Q]}
    # items map to their main image; P2, removed as a non-main view, leaves Q4's ground truth
    assert test.gt == {Q1: [f"{A}-0"], Q2: [f"{B}-0"], Q3: [f"{A}-0"], Q4: [P]}
    report = test.gallery_report
    assert (report["listed_images"], report["kept_images"]) == (10, 5)
    assert report["main_by"] == {"title": 2, "view_suffix": 3}
    assert report["view_suffixed_ids"] == 7 and report["queries_gt_changed"] == 4


def test_all_images_expands_items_and_keeps_bare_ids_exact(data):
    test = apply_gallery_unit(lpr4m.read_test(data), "all_images")
    assert test.gallery == GALLERY
    assert test.gt[Q1] == [f"{A}-0", f"{A}-1", f"{A}-2"] and test.gt[Q3] == [f"{A}-0", f"{A}-1", f"{A}-2"]
    assert test.gt[Q4] == [P, P2]


def test_a_ground_truth_of_only_non_main_views_stays_a_named_miss(tmp_path):
    data = write_test_set(tmp_path / "lpr", gt={Q4: [P2]})
    metrics, _ = metrics_from_scores(lpr4m.read_test(data), pd.DataFrame(
        [(Q4, i, s) for i, s in SCORES[Q4].items()], columns=["video_id", "image_id", "score"]),
        gallery="main_images")
    assert metrics["overall"]["R@1"] == 0.0 and metrics["n_misses"] == 1
    assert metrics["misses"][0]["reason"] == f"ground truth not in gallery: {P2}"


def test_an_item_without_view_0_leaves_the_main_gallery(tmp_path):
    data = write_test_set(tmp_path / "lpr", gallery={L1: [f"{A}-1", f"{B}-0"]}, gt={Q1: [A]}, titles={})
    test = apply_gallery_unit(lpr4m.read_test(data), "main_images")
    assert test.gallery == {L1: [f"{B}-0"]} and test.gallery_report["items_without_main_view"] == 1
    assert test.gt == {Q1: [A]}   # nothing of item A is left: a miss that names it


def test_a_split_without_titles_keeps_every_image():
    clip = records.Clip(video_id="v", live_id=None)
    test = records.TestSet(queries=[clip], gallery={"all": ["p1", "p2"]}, gt={"v": ["p2"]}, image_paths={}, titles={})
    main_test = apply_gallery_unit(test, "main_images")
    assert main_test.gallery == {"all": ["p1", "p2"]} and main_test.gt == {"v": ["p2"]}
    assert main_test.gallery_report["main_by"] == {"untitled_split": 2}


def test_view_suffix_rule():
    assert split_view(f"{A}-0") == (A, 0) and split_view(f"{A}_12") == (A, 12)
    assert split_view(A) == (A, None)
    digits = "12345678-1234-1234-1234-123456789012"   # a bare UUID whose last group is all digits
    assert split_view(digits) == (digits, None)
    assert split_view(Q1) == (Q1, None)                  # a clip id is not a view
    assert split_view("img-0") == ("img-0", None)        # only a UUID item carries a view


def test_units_do_not_stack_and_bad_units_are_named(data):
    test = apply_gallery_unit(lpr4m.read_test(data), "main_images")
    assert apply_gallery_unit(test, "main_images") is test
    with pytest.raises(ValueError, match="already has evaluate.gallery = main_images"):
        apply_gallery_unit(test, "all_images")
    with pytest.raises(ValueError, match="unknown gallery unit 'main_image'.*all_images, main_images"):
        apply_gallery_unit(lpr4m.read_test(data), "main_image")


def test_bad_config_value_is_a_schema_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("evaluate:\n  gallery: main_image\n")
    with pytest.raises(cfg.ConfigError, match=rf"{p}:2: bad value for 'evaluate.gallery'"):
        cfg.load_config(p)
    good = tmp_path / "good.yaml"
    good.write_text("evaluate:\n  gallery: main_images\n")
    assert cfg.load_config(good)["evaluate"]["gallery"] == "main_images"
    assert cfg.load_config(cfg.REPO_ROOT / "workflow/config/default.yaml")["evaluate"]["gallery"] == "all_images"


def test_gallery_stats_cli(tmp_path, data, capsys):
    assert main(["gallery-stats", "--data", str(data), "--out", str(tmp_path / "g.json")]) == 0
    stats = json.loads((tmp_path / "g.json").read_text())
    assert stats["titled_listed_images"] == 5
    assert stats["units"]["all_images"]["images_per_gallery"] == {"mean": 5.0, "min": 3, "max": 7}
    assert stats["units"]["main_images"]["images_per_gallery"] == {"mean": 2.5, "min": 2, "max": 3}
    assert stats["units"]["main_images"]["mean_gallery_size_per_query"] == 2.75
    assert json.loads(capsys.readouterr().out) == stats


def test_gallery_stats_counts_duplicates_once():
    clip = records.Clip(video_id=Q1, live_id=L1)
    test = records.TestSet(queries=[clip], gallery={L1: [f"{A}-0", f"{A}-0", f"{B}-1"]}, gt={Q1: [A]},
                   image_paths={}, titles={})
    units = gallery_stats(test)["units"]
    assert units["all_images"]["images"] == 2 and units["main_images"]["images"] == 1


def test_summary_carries_the_unit(tmp_path, data):
    scores = write_scores(tmp_path / "s.csv")
    paths = []
    for unit in ("all_images", "main_images"):
        paths.append(tmp_path / f"{unit}.json")
        assert main(["evaluate", "--data", str(data), "--scores", str(scores), "--gallery", unit,
                     "--out", str(paths[-1])]) == 0
    legacy = json.loads(paths[0].read_text())
    del legacy["gallery_unit"]            # a metrics file written before the key existed
    paths.append(tmp_path / "legacy.json")
    paths[-1].write_text(json.dumps(legacy))
    assert main(["summarize", "--metrics", *map(str, paths), "--out", str(tmp_path / "summary.csv")]) == 0
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("metrics")
    assert summary["gallery"].to_dict() == {str(paths[0]): "all_images", str(paths[1]): "main_images",
                                            str(paths[2]): "all_images"}
    assert summary["mean_gallery_size"].to_dict() == {str(paths[0]): 6.0, str(paths[1]): 2.75, str(paths[2]): 6.0}
    assert "gallery" in (tmp_path / "summary.md").read_text()


def _run(root, variant, **metrics):
    d = root / variant / "seed0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"overall": {"R@1": 50.0, "R@5": 60.0, "R@10": 70.0, "n": 10},
                                                **metrics}))


VARIANTS = {"rice_box": {"paper": [{"table": 1, "row": "rice"}]}, "sgmn": {"paper": [{"table": 1, "row": "sgmn"}]}}


def test_tables_show_the_unit(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "sgmn", gallery_unit="main_images", mean_gallery_size=55.0)
    _run(runs, "rice_box", gallery_unit="main_images", mean_gallery_size=55.0)
    tables = build_tables(runs, VARIANTS, {"sgmn": [0], "rice_box": [0]}, tables=(1,), with_table4=False)
    t1 = tables["table1"].set_index("row_id")
    assert t1.loc["sgmn", "gallery"] == "main_images" and t1.loc["sgmn", "mean_gallery_size"] == 55.0
    assert pd.isna(t1.loc["fashionnet", "gallery"])          # a published row without runs
    assert ("Gallery unit (evaluate.gallery, docs/data_formats.md): main_images in every run shown; "
            "mean gallery size per query: 55.0.") in to_markdown(tables)


def test_tables_say_when_runs_mix_units(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "sgmn", gallery_unit="main_images", mean_gallery_size=55.0)
    _run(runs, "rice_box")                                    # predates the key: all images
    tables = build_tables(runs, VARIANTS, {"sgmn": [0], "rice_box": [0]}, tables=(1,), with_table4=False)
    assert tables["table1"].set_index("row_id").loc["rice", "gallery"] == "all_images"
    md = to_markdown(tables)
    assert "mixed across runs (all_images, main_images;" in md and "mean gallery size per query: 55.0." in md
