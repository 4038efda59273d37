"""End to end: LPR-Synth through the real loaders, and the smoke DAG through Snakemake."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sgmn.cli import main
from sgmn.data import lpr4m
from sgmn.data.datasets import ClipPairDataset, QueryDataset
from sgmn.data.subsets import subset_labels
from sgmn.evaluate.run import build_queries

REPO = Path(__file__).resolve().parents[1]


def test_synth_round_trips_through_the_lpr4m_loader(smoke_data):
    clips = lpr4m.read_training(smoke_data)
    n_lines = sum(len(p.read_text(encoding="utf-8").splitlines())
                  for p in smoke_data.glob("training_videoinfo_full_*.txt"))
    assert len(clips) == n_lines > 0
    for clip in clips:
        labels = subset_labels(clip.frame_boxes)  # fields 9-11 agree with the boxes
        assert (labels["scale"], labels["duration"], labels["count"]) == (
            clip.extra["scale_type"], clip.extra["duration_type"], clip.extra["count_type"])
    item = ClipPairDataset(clips, num_frames=8, image_size=64)[0]
    assert item["frames"].shape == (8, 3, 64, 64) and item["frame_mask"].any()

    test = lpr4m.read_test(smoke_data)
    assert not test.problems
    assert {c.live_id for c in clips}.isdisjoint(test.gallery)
    assert {c.image_id for c in clips}.isdisjoint({i for g in test.gallery.values() for i in g})
    queries = build_queries(test)
    assert all(set(q.gt) <= set(q.gallery) and q.subsets and q.category for q in queries)
    assert all(QueryDataset(test, 8, 64)[i]["ok"] for i in range(len(test.queries)))


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(REPO / "workflow/config/smoke.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path):
    if shutil.which("sgmn") is None:
        pytest.skip("the sgmn console script is not on PATH (pip install -e . in the active env)")
    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ds = tmp_path / "results" / "lpr_synth_smoke"
    summary = pd.read_csv(ds / "summary.csv")
    smoke = yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text())
    assert set(summary["variant"]) == set(smoke["variants"])
    run_dir = ds / "runs" / "gra_only" / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"scale", "duration", "count"}
    assert metrics["provenance"]["git"]["commit"] and metrics["provenance"]["versions"]["torch"]
    assert metrics["provenance"]["config"]["variant"] == "gra_only" and metrics["provenance"]["seed"] == 0
    # a trained run is evaluated inside its training job (`train --metrics-out`): no evaluate job
    assert not (tmp_path / "logs" / "evaluate").exists()
    assert "R@1" in (tmp_path / "logs" / "train" / "lpr_synth_smoke" / "gra_only" / "seed0.log").read_text()
    for rule in ("synth", "resolve_config", "pretrain_clip", "text_features", "train", "summarize", "tables"):
        assert list((tmp_path / "logs" / rule).rglob("*.log")), rule
        assert list((tmp_path / "benchmarks" / rule).rglob("*.tsv")), rule

    # every metric can be recomputed from the saved score table and the test files alone
    recomputed = tmp_path / "recomputed.json"
    assert main(["evaluate", "--data", str(ds / "data"), "--scores", str(run_dir / "scores.parquet"),
                 "--out", str(recomputed)]) == 0
    again = json.loads(recomputed.read_text())
    for key in ("overall", "subsets", "categories", "chance", "misses"):
        assert again[key] == metrics[key], key

    # nothing left to do; changing one variant's config reruns only that variant
    plan = _snakemake(tmp_path, "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr
    variants = yaml.safe_load((REPO / "sgmn/schemas/variants.yaml").read_text())
    variants["variants"]["clip_zeroshot"]["overrides"]["evaluate"] = {"batch_size": 3}
    changed = tmp_path / "variants_changed.yaml"
    changed.write_text(yaml.safe_dump(variants))
    plan = _snakemake(tmp_path, "-n", "--config", f"variants_file={changed}")
    ran = _planned_jobs(plan.stdout)
    # the figures drawn from the tables and from every run follow; Figs. 5, 6 and 7b (other variants) do not
    assert {rule for rule, _ in ran} == {"resolve_config", "train", "summarize", "tables", "diff", "all",
                                         "figure_table4", "figure_table5", "figure_table6", "figure_training",
                                         "report_pages"}, ran
    assert all("variant=clip_zeroshot" in wc for rule, wc in ran if rule in ("resolve_config", "train")), ran


def _planned_jobs(plan: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of each job in a `snakemake -n` plan."""
    jobs, rule, wildcards = set(), None, ""
    for line in plan.splitlines() + [""]:
        header = re.match(r"^(?:local)?rule (\w+):", line)
        if header or not line.strip():
            if rule:
                jobs.add((rule, wildcards))
            rule, wildcards = (header.group(1), "") if header else (None, "")
        elif rule and line.strip().startswith("wildcards:"):
            wildcards = line.strip()
    return jobs


TABLE2_SMOKE = {"variants": ["gra_only"],
                "table2": {"enabled": True, "dataset": {"name": "mf_synth_smoke", "format": "movingfashion",
                                                       "path": None, "synth": {"preset": "smoke", "seed": 0}},
                           "variants": ["seam", "sgmn_wo_finetune", "sgmn"], "seeds": [0]}}


@pytest.mark.slow
def test_table2_dag_on_mf_synth(tmp_path):
    """Table 2 in the main DAG: MF-Synth generated and stored, a two-stage baseline trained there,
    the main dataset's SGMN w/o TE evaluated there as it is, and SGMN fine-tuned from it."""
    if shutil.which("sgmn") is None:
        pytest.skip("the sgmn console script is not on PATH (pip install -e . in the active env)")
    # a config file, not --config: Snakemake reads a nested --config value's booleans as strings
    extra = tmp_path / "table2.yaml"
    extra.write_text(yaml.safe_dump(TABLE2_SMOKE))
    run = _snakemake(tmp_path, "--configfile", str(REPO / "workflow/config/smoke.yaml"), str(extra))
    assert run.returncode == 0, run.stderr[-3000:]
    main_runs, mf = tmp_path / "results" / "lpr_synth_smoke" / "runs", tmp_path / "results" / "mf_synth_smoke"
    assert (mf / "data" / "test.json").exists() and (mf / "frames_64" / "index.json").exists()
    # zero-shot: the main run's very checkpoint; fine-tuned: trained there from it
    source = main_runs / "sgmn_wo_te" / "seed0" / "final.pt"
    assert (mf / "runs" / "sgmn_wo_finetune" / "seed0" / "final.pt").read_bytes() == source.read_bytes()
    # rule evaluate scores only that untrained copy; every trained run is evaluated in its job
    assert [p.parent.name for p in (tmp_path / "logs" / "evaluate").rglob("*.log")] == ["sgmn_wo_finetune"]
    params = json.loads((mf / "runs" / "sgmn" / "seed0" / "params.json").read_text())
    assert params["init_checkpoint"].endswith("lpr_synth_smoke/runs/sgmn_wo_te/seed0/final.pt")
    assert params["config"]["sgmn"]["te"] is False and params["config"]["dataset"]["format"] == "movingfashion"
    seam = json.loads((mf / "runs" / "seam" / "seed0" / "params.json").read_text())["config"]
    assert seam["method"] == "seam" and "sgmn" not in seam      # a run holds its own method's keys only
    table2 = pd.read_csv(tmp_path / "results" / "lpr_synth_smoke" / "tables" / "table2.csv")
    measured = table2.dropna(subset=["R@1"]).set_index("row_id")
    assert set(measured.index) == {"seam", "sgmn_wo_finetune", "sgmn"}
    assert table2["R@1_paper"].notna().all() and len(table2) == 7        # every published row listed
    for row in measured.index:
        metrics = json.loads((mf / "runs" / measured.loc[row, "variant"] / "seed0" / "metrics.json").read_text())
        assert measured.loc[row, "R@1"] == pytest.approx(metrics["overall"]["R@1"])
    tests = pd.read_csv(tmp_path / "results" / "lpr_synth_smoke" / "tables" / "paired_tests.csv")
    assert {"sgmn vs seam", "sgmn vs sgmn_wo_finetune"} <= set(tests[tests["table"] == 2]["comparison"])
