"""sgmn.figures: the pieces behind the paper's Figs. 5, 6, 7b and the table charts, on inputs
made here (handwritten tables, the smoke dataset, fabricated score tables), and the "not run"
panels when a figure's runs are missing."""
import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sgmn.cli import main
from sgmn.data import lpr4m
from sgmn.data.records import Clip
from sgmn.figures import ablations, attention, retrieval, twins
from sgmn.figures.common import RunRef, best_view
from sgmn.figures.montage import plot_montage
from sgmn.figures.training import plot_training
from sgmn.report import markdown_html

pytestmark = pytest.mark.usefixtures("one_thread")


def _written(paths):
    """Both files exist; the PNG decodes."""
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf"
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    assert pdf.read_bytes().startswith(b"%PDF")


def _sha1_order(ids):
    return sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())


# ---- common ---------------------------------------------------------------------------------
def test_run_ref_parses_a_run_and_a_run_not_in_the_matrix(tmp_path):
    (tmp_path / "scores.parquet").write_bytes(b"x")
    ref = RunRef.parse(f"sgmn={tmp_path}")
    assert ref == RunRef("sgmn", tmp_path) and ref.file("scores.parquet") == tmp_path / "scores.parquet"
    assert ref.file("final.pt") is None
    assert RunRef.parse("gra_only=-") == RunRef("gra_only", None) and RunRef("gra_only", None).file("x") is None
    with pytest.raises(ValueError, match="VARIANT=RUN_DIR"):
        RunRef.parse("sgmn")


def test_best_view_is_the_frame_with_the_largest_target_box():
    boxes = [[[0, 0, 0.2, 0.2], [0, 0, 0.9, 0.9]], [[0, 0, 0.5, 0.5]], []]
    clip = Clip("v", None, frame_paths=[Path("f0"), Path("f1"), Path("f2")], frame_boxes=boxes,
                extra={"target_index": [0, 0, -1]})
    assert best_view(clip) == Path("f1")                      # frame 0's large box is a distractor
    assert best_view(Clip("v", None, frame_paths=[Path("a"), Path("b"), Path("c")])) == Path("b")


# ---- Fig. 5 ---------------------------------------------------------------------------------
def test_top_k_ranks_by_score_and_marks_the_ground_truth():
    scores = pd.DataFrame({"video_id": ["q"] * 4 + ["r"] * 2, "image_id": ["a", "b", "c", "d", "a", "b"],
                           "score": [0.1, 0.9, 0.5, 0.7, 0.2, 0.3]})
    gt = retrieval.gt_pairs({"q": ["d"], "r": ["b", "x"]})
    top = retrieval.mark_hits(retrieval.top_k(scores), gt)
    q = top[top["video_id"] == "q"]
    assert q["image_id"].tolist() == ["b", "d", "c"] and q["rank"].tolist() == [1, 2, 3]
    assert q["hit"].tolist() == [False, True, False]
    assert retrieval.hit_at_1(top).to_dict() == {"q": False, "r": True}


def test_pick_queries_takes_disagreements_both_ways_in_a_fixed_order():
    a = pd.Series({"q1": True, "q2": True, "q3": False, "q4": False, "q5": True})
    b = pd.Series({"q1": False, "q2": True, "q3": True, "q4": False, "q5": False})
    picked, how = retrieval.pick_queries(a, b, 4, ("A", "B"))
    assert picked[:2] == _sha1_order(["q1", "q5"]) and picked[2] == "q3" and picked[3] in {"q2", "q4"}
    assert "2 of the 2 queries where only A's top-1 is right" in how and "1 of the 1 where only B's" in how
    ids, _ = retrieval.pick_queries(a, None, 2, pool=["q1", "q2", "q3"])
    assert ids == _sha1_order(["q1", "q2", "q3"])[:2]


def _scores(test, right: bool) -> pd.DataFrame:
    """Every (query, gallery image) pair: the ground truth scores 1 (right) or 0, the rest 0.5."""
    rows = [(q.video_id, i, (1.0 if right else 0.0) if i in test.gt[q.video_id] else 0.5)
            for q in test.queries for i in test.gallery_of(q)]
    return pd.DataFrame(rows, columns=["video_id", "image_id", "score"])


def _run(tmp_path, name, scores) -> RunRef:
    d = tmp_path / name / "seed0"
    d.mkdir(parents=True)
    scores.to_parquet(d / "scores.parquet")
    return RunRef(name, d)


def test_fig5_shows_queries_where_only_one_model_is_right(smoke_data, tmp_path):
    test = lpr4m.read_test(smoke_data)
    good, bad = _run(tmp_path, "sgmn", _scores(test, True)), _run(tmp_path, "gra_only", _scores(test, False))
    out = retrieval.plot_retrieval(smoke_data, [good, bad], tmp_path / "fig5")
    _written(out.paths)
    assert out.not_run == []
    n = len(test.queries)
    assert out.notes[0].startswith(f"4 of the {n} queries where only SGMN's top-1 is right and 0 of the 0")
    assert out.notes[1:] == _sha1_order([q.video_id for q in test.queries])[:4]


def test_fig5_draws_a_missing_run_as_not_run(smoke_data, tmp_path):
    test = lpr4m.read_test(smoke_data)
    out = retrieval.plot_retrieval(smoke_data, [_run(tmp_path, "sgmn", _scores(test, True)), RunRef("gra_only", None)],
                                   tmp_path / "fig5", n_queries=2)
    _written(out.paths)
    assert out.not_run == ["gra_only"]


# ---- Fig. 7b --------------------------------------------------------------------------------
PRODUCTS = {"a": {"family_id": "F", "view": "main"}, "b": {"family_id": "F", "view": "main"},
            "c": {"family_id": "F", "view": "main"}, "d": {"family_id": "F", "view": "second"},
            "x": {"family_id": None, "view": "main"}, "y": {"family_id": "G", "view": "main"}}


def test_twin_groups_keep_main_views_of_one_family_with_clips():
    gallery = {"L1": ["a", "b", "c", "d", "x", "y"]}
    gt = {"v1": ["a"], "v2": ["b"], "v3": ["a", "d"], "v4": ["y"], "v5": ["x"]}
    groups = twins.twin_groups(PRODUCTS, gallery, gt)
    assert len(groups) == 1                     # G has one product, x none, c no clip, d a second view
    g = groups[0]
    assert (g.live, g.family, g.images) == ("L1", "F", ("a", "b"))
    assert g.clips == {"a": tuple(_sha1_order(["v1", "v3"])), "b": ("v2",)}


def test_twin_margins_are_own_score_minus_the_best_twin():
    g = twins.TwinGroup("L1", "F", ("a", "b", "c"), {"a": ("v1",), "b": ("v2",)})
    scores = pd.DataFrame({"video_id": ["v1"] * 3 + ["v2"] * 3, "image_id": ["a", "b", "c"] * 2,
                           "score": [0.9, 0.5, 0.6, 0.8, 0.7, 0.1]})
    m = twins.twin_margins(scores, [g]).set_index("video_id")
    assert m.loc["v1", "margin"] == pytest.approx(0.3) and m.loc["v2", "margin"] == pytest.approx(-0.1)
    mat = twins.score_matrix(scores, ["v2", "v1"], ["a", "c"])
    np.testing.assert_allclose(mat, [[0.8, 0.1], [0.9, 0.6]])
    gain, _, n = twins.paired_margin_gain(m.reset_index(), m.reset_index().assign(margin=m["margin"].to_numpy() + 0.05))
    assert gain == pytest.approx(0.05) and n == 2


def _with_twins(smoke_data, tmp_path):
    """A copy of the smoke data whose first live's first three sold main images are made one
    near-twin family "F" (the smoke split has none); returns (root, live)."""
    root = tmp_path / "data"
    shutil.copytree(smoke_data, root)
    test = lpr4m.read_test(root)
    meta = json.loads((root / "synth_meta.json").read_text())
    live = min(test.gallery)
    sold = {i for ids in test.gt.values() for i in ids}
    members = [i for i in test.gallery[live] if i in sold and meta["products"][i]["view"] == "main"][:3]
    assert len(members) == 3
    for p in meta["products"].values():
        p["family_id"] = None
    for i in members:
        meta["products"][i]["family_id"] = "F"
    (root / "synth_meta.json").write_text(json.dumps(meta))
    return root, live


def test_fig7b_on_a_twin_group_and_without_runs(smoke_data, tmp_path):
    root, live = _with_twins(smoke_data, tmp_path)
    test = lpr4m.read_test(root)
    out = twins.plot_twins(root, [_run(tmp_path, "t7_te_tmc_gci", _scores(test, False)),
                                  _run(tmp_path, "sgmn", _scores(test, True))], tmp_path / "fig7b")
    _written(out.paths)
    assert out.not_run == [] and out.notes == [f"{live}/F"]
    out = twins.plot_twins(root, [RunRef("t7_te_tmc_gci", None), RunRef("sgmn", None)], tmp_path / "none")
    _written(out.paths)
    assert out.not_run == ["t7_te_tmc_gci", "sgmn"]
    out = twins.plot_twins(smoke_data.parent / "missing", [RunRef("a", None), RunRef("b", None)], tmp_path / "m")
    assert out.not_run == ["near-twin annotation"]


# ---- Fig. 6 ---------------------------------------------------------------------------------
def test_cls_attention_is_the_last_blocks_own_attention():
    """The recomputed softmax(QK^T / sqrt(d)) equals what nn.MultiheadAttention returns with
    need_weights=True on the same input (averaged over heads, CLS row, patch columns)."""
    from sgmn.models.clip import create_clip

    torch.manual_seed(0)
    visual = create_clip("lpr-tiny-clip", "none", 64).visual.eval()
    images = torch.randn(3, 3, 64, 64)
    block = visual.transformer.resblocks[-1]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        visual(images)
        handle.remove()
        h = block.ln_1(seen["x"])
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=True)   # (N, T, T)
    gh, gw = visual.grid_size
    expected = weights[:, 0, 1:].reshape(3, gh, gw)
    got = attention.cls_attention(visual, images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert not block._forward_pre_hooks                        # the hook is removed again


def test_patch_coverage_and_attention_shares():
    cov = attention.patch_coverage(np.array([[0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]]), 2, 2)
    np.testing.assert_allclose(cov, [[1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    frame = attention.ViewFrame("v", Path("f"), (0, 0, 0.5, 0.5), ((0.5, 0.5, 1, 1), (0, 0, 0.5, 1)), "")
    att = np.array([[[0.6, 0.1], [0.2, 0.1]]])
    # target: patch 0; others: patches 3 and 2 (patch 0 is the target's, counted once)
    np.testing.assert_allclose(attention.attention_shares(att, [frame]), [[0.6, 0.3]])
    np.testing.assert_allclose(attention.area_shares([frame], 2, 2), [[0.25, 0.5]])


def test_crowded_frames_need_distractors_beside_the_target():
    boxes = [[[0, 0, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6], [0.7, 0.7, 0.8, 0.8]], [[0, 0, 0.3, 0.3]]]
    crowded = Clip("c1", None, frame_paths=[Path("a0"), Path("a1")], frame_boxes=boxes, asr="text",
                   extra={"target_index": [1, 0]})
    alone = Clip("c2", None, frame_paths=[Path("b0"), Path("b1")], frame_boxes=boxes, extra={"target_index": [-1, 0]})
    (view,) = attention.crowded_frames([crowded, alone], min_distractors=2)
    assert (view.video_id, view.path, view.target) == ("c1", Path("a0"), (0.5, 0.5, 0.6, 0.6))
    assert view.others == ((0, 0, 0.3, 0.3), (0.7, 0.7, 0.8, 0.8)) and view.asr == "text"


def test_fig6_pipeline_with_stub_attention_and_not_run_columns(smoke_data, tmp_path, monkeypatch):
    frames = attention.crowded_frames(lpr4m.read_test(smoke_data).queries, 1)
    assert frames, "the smoke split has clips with other products in view"
    runs = []
    for name in ("sgmn_wo_te", "sgmn"):
        d = tmp_path / name / "seed0"
        d.mkdir(parents=True)
        (d / "final.pt").write_bytes(b"")
        pd.DataFrame({"video_id": [f.video_id for f in frames],
                      "hit@1": [name == "sgmn"] * len(frames)}).to_parquet(d / "per_query.parquet")
        runs.append(RunRef(name, d))
    peak = np.zeros((4, 4))
    peak[0, 0] = 1.0
    monkeypatch.setattr(attention, "model_attention", lambda ckpt, fr: np.repeat(peak[None], len(fr), 0))
    out = attention.plot_attention(smoke_data, [RunRef("gra_only", None), RunRef("t7_te", None), *runs],
                                   tmp_path / "fig6", min_distractors=1)
    _written(out.paths)
    assert out.not_run == ["gra_only", "t7_te"]
    assert out.notes[0].startswith(f"4 of the {len(frames)} clips (of the {len(frames)} summed up below) where "
                                   "only the model with TE")
    assert out.notes[1:] == [f.video_id for f in frames[:4]]
    with pytest.raises(ValueError, match="pairs"):
        attention.plot_attention(smoke_data, runs[:1], tmp_path / "odd")


# ---- tables, training, probes --------------------------------------------------------------
def test_table_charts_from_handwritten_tables_and_without_them(tmp_path):
    t4 = pd.DataFrame({"row_id": ["rice_box"] * 2 + ["sgmn"] * 2, "variant": ["rice_box"] * 2 + [None] * 2,
                       "subset": ["overall", "scale/small"] * 2, "n_seeds": [3, 3, 0, 0],
                       "R@1": [50.0, 48.0, np.nan, np.nan], "R@1_ci": [1.0, 2.0, np.nan, np.nan],
                       "R@1_paper": [33.0, 32.7, 41.5, 38.3]})
    t5 = pd.DataFrame({"row_id": ["b0", "b7", "b1"], "beta1": [0.0, 0.7, 1.0], "n_seeds": [1, 3, 0],
                       "R@1": [12.0, 13.0, np.nan], "R@1_ci": [np.nan, 0.5, np.nan], "R@1_paper": [39.1, 43.4, 40.9]})
    t6 = pd.DataFrame({"row_id": ["A", "H"], "g_i2i": [False, True], "g_v2v": [False, True], "g_cross": [False, True],
                       "n_seeds": [1, 0], "R@1": [12.0, np.nan], "R@1_ci": [np.nan, np.nan], "R@1_paper": [38.6, 43.4]})
    for n, table in ((4, t4), (5, t5), (6, t6)):
        table.to_csv(tmp_path / f"table{n}.csv", index=False)
    out4 = ablations.plot_table4(tmp_path / "table4.csv", tmp_path / "t4")
    out5 = ablations.plot_table5(tmp_path / "table5.csv", tmp_path / "t5")
    out6 = ablations.plot_table6(tmp_path / "table6.csv", tmp_path / "t6")
    for out in (out4, out5, out6):
        _written(out.paths)
    assert (out4.not_run, out5.not_run, out6.not_run) == (["table4 sgmn"], ["table5 b1"], ["table6 H"])
    assert ablations.graph_label(t6.iloc[1]) == "H: I2I + V2V + I2V+V2I"
    assert main(["figures", "table5", "--table", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")]) == 0
    _written([tmp_path / "m.png", tmp_path / "m.pdf"])


def test_training_curves_and_probe_montage(tmp_path):
    runs = tmp_path / "runs"
    trained, untrained, missing = runs / "sgmn" / "seed0", runs / "clip_zeroshot" / "seed0", runs / "gra_only" / "seed0"
    for d in (trained, untrained):
        d.mkdir(parents=True)
        (d / "final.pt").write_bytes(b"")
    rows = [{"step": s, "loss": 3.0 - s / 10, "similarity_loss": 1.0, "text_loss": 2.0 - s / 10} for s in (10, 20)]
    (trained / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_training([trained, untrained, missing], tmp_path / "training")
    _written(out.paths)
    assert sorted(out.not_run) == ["clip_zeroshot", "gra_only"]
    out = plot_montage({"smf": out.paths[0], "te": tmp_path / "nope.png"}, tmp_path / "probes", "probes")
    _written(out.paths)
    assert out.not_run == ["te"]


def test_report_page_renders_tables_and_escapes_html():
    page = markdown_html("# T\n\n| a | b |\n|:--|--:|\n| 1 | <script>x</script> |\n", "title <1>")
    assert "<table>" in page and "<th style=\"text-align:left\">a</th>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "<title>title &lt;1&gt;</title>" in page


def test_every_report_caption_exists_and_renders_without_warnings():
    """Each caption a rule names (and the workflow description) is valid Jinja + reStructuredText
    the way `snakemake --report` renders it: no docutils warning or error."""
    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    repo = Path(__file__).resolve().parents[1]
    rules = "".join(p.read_text() for p in (repo / "workflow/rules").glob("*.smk"))
    captions = {repo / "workflow/rules" / c for c in re.findall(r'caption="([^"]+)"', rules)}
    captions.add(repo / "workflow/report/workflow.rst")
    assert len(captions) >= 11 and all(c.is_file() for c in captions), sorted(map(str, captions))

    snakemake = SimpleNamespace(config={"dataset": {"name": "lpr_synth", "path": None}, "variants": ["sgmn"],
                                        "seeds": [0, 1, 2]}, wildcards=SimpleNamespace(ds="lpr_synth"))

    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    links = "\n\n.. _Tables: #\n.. _Paper diff: #\n.. _Figures: #\n"   # the targets Snakemake appends
    for caption in sorted(captions):
        text = env.from_string(caption.read_text() + links).render(snakemake=snakemake)
        body = publish_parts(text, writer="html", settings_overrides={"report_level": 2, "halt_level": 5})["body"]
        assert "system-message" not in body, (caption.name, body)
