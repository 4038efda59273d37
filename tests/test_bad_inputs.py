"""No silent wrong number: the malformed-input classes of the validation layer, on the
handwritten real-format fixture and on score tables. Each ends in an error naming the file and
line (or key), or in a listed problem; none changes n, a subset or a rank without a word."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from sgmn.cli import main
from sgmn.config import ConfigError, load_config
from sgmn.data import lpr4m
from sgmn.data.records import AnnotationError
from sgmn.evaluate.run import metrics_from_scores
from sgmn.evaluate.scores import ScoreTableError, read_scores

FIXTURE = Path(__file__).parent / "fixtures" / "lpr4m_real_small"
L1 = "5b0e4c8a-2f1d-4a6b-8c3e-9d7f1a2b3c4d"
L2 = "c81d4e2f-6a3b-4f5c-b7d8-0e1f2a3b4c5d"
Q1, Q2, Q3 = f"{L1}-65000-74000", f"{L1}-130000-145000", f"{L2}-2710000-2719000"
G1a = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"


def _file(root: Path, pattern: str) -> Path:
    return next(root.glob(pattern))


def _scores(root: Path) -> pd.DataFrame:
    """Every query against its gallery, the gallery's first image scored highest."""
    test = lpr4m.read_test(root)
    rows = [(q.video_id, g, -float(r)) for q in test.queries for r, g in enumerate(test.gallery_of(q))]
    return pd.DataFrame(rows, columns=["video_id", "image_id", "score"])


# ---------------------------------------------------------------- annotation files
def test_duplicate_json_key_is_named(data):
    path = _file(data, "test_liveid_to_gallery_*.json")
    text = path.read_text()
    # the same live written twice: the last would win silently
    path.write_text(text.replace("{", '{"' + L2 + '": ["x"], ', 1))
    with pytest.raises(AnnotationError, match=rf"{path}: key '{L2}' occurs twice"):
        lpr4m.read_test(data)


def test_gallery_given_as_a_string_is_an_error(data):
    path = _file(data, "test_liveid_to_gallery_*.json")
    gallery = json.loads(path.read_text())
    gallery[L1] = gallery[L1][0]
    path.write_text(json.dumps(gallery))
    with pytest.raises(AnnotationError, match=rf"{path}: the gallery of '{L1}' must be a list of image id strings"):
        lpr4m.read_test(data)


def test_ground_truth_null_is_an_error(data):
    path = _file(data, "test_videoid_to_gtimage_*.json")
    gt = json.loads(path.read_text())
    gt[Q1] = None
    path.write_text(json.dumps(gt))
    with pytest.raises(AnnotationError, match=rf"the ground truth of '{Q1}' must be a list"):
        lpr4m.read_test(data)


def test_byte_order_mark_loses_no_title_and_no_key(data):
    for pattern in ("test_image_title_*.txt", "test_videoid_to_gtimage_*.json"):
        path = _file(data, pattern)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    plain, bom = lpr4m.read_test(FIXTURE), lpr4m.read_test(data)
    assert bom.titles == plain.titles and bom.gt == plain.gt


def test_ids_with_surrounding_whitespace_are_stripped_and_reported(data):
    path = _file(data, "test_videoid_to_gtimage_*.json")
    gt = json.loads(path.read_text())
    gt = {(f" {k}" if k == Q1 else k): ([f"{v[0]} "] if k == Q1 else v) for k, v in
          ((k, v if isinstance(v, list) else [v]) for k, v in gt.items())}
    path.write_text(json.dumps(gt))
    test = lpr4m.read_test(data)
    assert Q1 in test.gt and test.gt[Q1] == lpr4m.read_test(FIXTURE).gt[Q1]
    assert any("2 id(s) had surrounding whitespace, stripped" in p for p in test.problems)


def _set_box(root: Path, frame_index: int, box):
    path = _file(root, "test_frameid2gtbox_*.json")
    boxes = json.loads(path.read_text())
    frame = sorted(f for f in boxes if f.startswith(Q1))[frame_index]
    boxes[frame] = box
    path.write_text(json.dumps(boxes))
    return path


def _first_box(root: Path):
    boxes = json.loads(_file(root, "test_frameid2gtbox_*.json").read_text())
    return boxes[sorted(f for f in boxes if f.startswith(Q1))[0]]


def test_box_slightly_outside_unit_square_is_clipped_and_listed(data):
    box = _first_box(data)
    assert max(v for b in (box if isinstance(box[0], list) else [box]) for v in b) <= 1
    flat = box[0] if isinstance(box[0], list) else box
    path = _set_box(data, 0, [[flat[0], flat[1], 1.004, flat[3]]])
    test = lpr4m.read_test(data)
    q = next(c for c in test.queries if c.video_id == Q1)
    assert not q.extra["pixel_boxes"]                     # 1.004 does not turn the clip into pixels
    assert q.frame_boxes[0][0][2] == 1.0
    assert any(f"{path}: boxes of {Q1}: 1 normalised coordinate" in p for p in test.problems)


@pytest.mark.parametrize("box, message", [
    ([[0.1, 0.2, 1.5, 0.6]], "outside \\[0, 1\\] by more than 0.01 and too small for pixels"),
    ([[-0.2, 0.2, 0.5, 0.6]], "negative box coordinate -0.2"),
    ([[0.6, 0.2, 0.1, 0.6]], "swapped corners"),
    ([[0.1, 0.2, 30.0, 20.0]], "mixes normalised boxes"),
])
def test_ambiguous_boxes_are_errors_naming_the_clip(data, box, message):
    path = _set_box(data, 0, box)
    with pytest.raises(AnnotationError, match=rf"{path}: boxes of {Q1}: .*{message}"):
        lpr4m.read_test(data)


def test_pixel_box_past_its_frame_is_an_error(data):
    path = _file(data, "test_frameid2gtbox_*.json")
    boxes = json.loads(path.read_text())
    for f in [f for f in boxes if f.startswith(Q1)]:
        boxes[f] = [[2.0, 2.0, 300.0, 20.0]]               # the fixture's frames are 48 x 32
    path.write_text(json.dumps(boxes))
    test = lpr4m.read_test(data)
    with pytest.raises(AnnotationError, match=rf"{path}: boxes of {Q1}: pixel box .* reaches past its 48x32 frame"):
        metrics_from_scores(test, _scores(data))


def test_query_without_boxes_is_listed(data):
    path = _file(data, "test_frameid2gtbox_*.json")
    boxes = {f: b for f, b in json.loads(path.read_text()).items() if not f.startswith(Q2)}
    path.write_text(json.dumps(boxes))
    test = lpr4m.read_test(data)
    assert f"{path}: no boxes for {Q2} (its subsets are unknown)" in test.problems


# ---------------------------------------------------------------- score tables
def _csv(tmp_path, df: pd.DataFrame, text_edit=None) -> Path:
    path = tmp_path / "scores.csv"
    df.to_csv(path, index=False)
    if text_edit:
        path.write_text(text_edit(path.read_text()))
    return path


def test_empty_id_cell_names_the_line(tmp_path):
    df = _scores(FIXTURE)
    df.loc[3, "video_id"] = ""
    with pytest.raises(ScoreTableError, match=r"scores.csv:5: empty video_id"):
        read_scores(_csv(tmp_path, df))


@pytest.mark.parametrize("value, what", [("", "is not a number"), ("NA", "is not a number"),
                                         ("high", "is not a number"), ("nan", "is not a number"),
                                         ("-inf", "is not finite")])
def test_bad_score_cells_name_the_line(tmp_path, value, what):
    df = _scores(FIXTURE).astype({"score": object})
    df.loc[2, "score"] = value
    with pytest.raises(ScoreTableError, match=rf"scores.csv:4: score .* {what}"):
        read_scores(_csv(tmp_path, df))


def test_duplicate_score_rows_name_both_lines(tmp_path):
    df = _scores(FIXTURE)
    df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    with pytest.raises(ScoreTableError, match=rf"scores.csv:{len(df) + 1}: duplicate score .* first at .*scores.csv:3"):
        read_scores(_csv(tmp_path, df))


def test_blank_lines_bom_and_whitespace_ids(tmp_path):
    df = _scores(FIXTURE)
    path = _csv(tmp_path, df, lambda t: "\ufeff" + t.replace(f"{Q1},", f" {Q1} ,", 1) + "\n\n")
    clean, report = read_scores(path)
    assert report == {"stripped_ids": 1}
    pd.testing.assert_frame_equal(clean, df)


@pytest.mark.parametrize("name", ["scores.pq", "scores.PARQUET", "scores.bin"])
def test_parquet_is_recognised_by_content(tmp_path, name):
    df = _scores(FIXTURE)
    path = tmp_path / name
    df.to_parquet(path, index=False)
    clean, _ = read_scores(path)
    pd.testing.assert_frame_equal(clean, df)


def test_parquet_null_id_names_the_row(tmp_path):
    df = _scores(FIXTURE).astype({"image_id": object})
    df.loc[4, "image_id"] = None
    path = tmp_path / "s.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(ScoreTableError, match=r"s.parquet: row 5: empty image_id"):
        read_scores(path)


def test_table_matching_no_query_is_an_error():
    test = lpr4m.read_test(FIXTURE)
    df = _scores(FIXTURE)
    df["video_id"] = "not-a-query-" + df["video_id"]
    with pytest.raises(ScoreTableError, match="no row of the score table matches a query"):
        metrics_from_scores(test, df)


def test_scores_of_a_clip_without_ground_truth_are_listed():
    test = lpr4m.read_test(FIXTURE)
    df = pd.concat([_scores(FIXTURE), pd.DataFrame([("stray-clip", G1a, 1.0)], columns=["video_id", "image_id", "score"])])
    metrics, _ = metrics_from_scores(test, df)
    assert metrics["unknown_query_ids"] == ["stray-clip"] and metrics["overall"]["n"] == 3


def test_evaluate_scores_cli_reports_a_bad_table_in_one_line(tmp_path, capfd):
    df = _scores(FIXTURE).astype({"score": object})
    df.loc[0, "score"] = "x"
    code = main(["evaluate", "--data", str(FIXTURE), "--scores", str(_csv(tmp_path, df)),
                 "--out", str(tmp_path / "m.json")])
    err = capfd.readouterr().err
    assert code == 2 and "scores.csv:2: score 'x' is not a number" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- outputs and configs
def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        df = _scores(FIXTURE)
        path = _csv(tmp_path, df)
        out = tmp_path / "m.json"
        assert main(["evaluate", "--data", str(FIXTURE), "--scores", str(path), "--out", str(out)]) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_out_that_is_a_directory_is_one_line_naming_it(tmp_path, capfd):
    path = _csv(tmp_path, _scores(FIXTURE))
    (tmp_path / "outdir").mkdir()
    code = main(["evaluate", "--data", str(FIXTURE), "--scores", str(path), "--out", str(tmp_path / "outdir")])
    err = capfd.readouterr().err
    assert code == 2 and f"output {tmp_path / 'outdir'} is a directory" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "outdir").iterdir()]


def test_yaml_duplicate_section_and_exponent_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n  steps: 10\nsgmn:\n  te: false\ntrain:\n  steps: 20\n")
    with pytest.raises(ConfigError, match=rf"{p}:6: invalid YAML: key 'train' occurs twice \(first at line 1\)"):
        load_config(p)
    p.write_text("train:\n  lr: 3e-4\n")
    assert load_config(p)["train"]["lr"] == pytest.approx(3e-4)


def test_json_config_with_a_duplicate_key(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"variant": "x", "train": {"lr": 0.1, "lr": 0.2}}')
    with pytest.raises(ConfigError, match="key 'lr' occurs twice"):
        load_config(p)
