"""Learning curves: the runs they define (names, steps, negatives), the table and the figure."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sgmn.cli import main
from sgmn.config import VARIANTS_PATH, load_config, load_variants, resolve_variant
from sgmn.evaluate.curves import curve_variants

SPEC = {"variants": ["gra_only"], "negatives": ["all", "hardest"], "steps": [10, 40], "seeds": [0, 1],
        "figure": "figures/curves"}


def test_each_point_is_its_own_run_with_its_steps_and_negatives():
    config = load_config("workflow/config/default.yaml")
    config["curves"] = SPEC
    runs = curve_variants(config, load_variants(VARIANTS_PATH), VARIANTS_PATH)
    assert sorted(runs) == ["curve_gra_only_all_s10", "curve_gra_only_all_s40",
                            "curve_gra_only_hardest_s10", "curve_gra_only_hardest_s40"]
    base = resolve_variant(config, "gra_only", variants_path=VARIANTS_PATH)
    for name, run in runs.items():
        steps = int(name.rsplit("_s", 1)[1])
        assert run["train"]["steps"] == steps and run["variant"] == name
        # all negatives for the whole run, or VSE++'s hardest from the first step
        assert run["train"]["triplet_warmup_steps"] == (steps if "_all_" in name else 0)
        assert run["train"]["warmup_steps"] == min(base["train"]["warmup_steps"], steps)
        assert run["sgmn"] == base["sgmn"] and "curves" not in run
    assert curve_variants(load_config("workflow/config/default.yaml"), load_variants(VARIANTS_PATH),
                          VARIANTS_PATH) == {}


def test_table_and_figure_from_metrics_with_a_run_missing(tmp_path):
    runs = tmp_path / "runs"
    r1 = {("all", 10, 0): 20.0, ("all", 10, 1): 22.0, ("all", 40, 0): 30.0, ("hardest", 10, 0): 5.0}
    for (neg, steps, seed), value in r1.items():
        d = runs / f"curve_gra_only_{neg}_s{steps}" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"overall": {"R@1": value, "R@5": 50.0, "R@10": 60.0},
                                                    "chance": {"R@1": 6.0}}))
        # a collapsed hardest-negative run ends at 2 x margin; the table keeps the last 3 logged steps
        losses = [0.9, 0.41, 0.40, 0.40] if neg == "hardest" else [0.5, 0.3, 0.2, 0.1]
        if (neg, steps) == ("all", 40):  # a run whose triplet sums over its 4 anchors logs 4x
            losses = [4 * v for v in losses]
            (d / "params.json").write_text(json.dumps({"config": {"sgmn": {"triplet_reduction": "sum"},
                                                                  "train": {"batch_size": 4}}}))
        (d / "train_log.jsonl").write_text("".join(json.dumps({"step": i, "similarity_loss": v}) + "\n"
                                                   for i, v in enumerate(losses)))
    out = tmp_path / "curves.csv"
    fig = tmp_path / "fig" / "curves"
    assert main(["curves", "--runs", str(runs), "--spec-json", json.dumps(SPEC), "--out", str(out),
                 "--figure", str(fig), "--margin", "0.2"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 2 * 2 * 2  # negatives x steps x seeds
    done = table[table["status"] == "ok"].set_index(["negatives", "steps", "seed"])["R@1"].to_dict()
    assert done == r1
    ends = table[table["status"] == "ok"].set_index(["negatives", "steps", "seed"])["similarity_loss_end"]
    assert ends[("hardest", 10, 0)] == pytest.approx((0.41 + 0.40 + 0.40) / 3)
    assert ends[("all", 10, 0)] == pytest.approx((0.3 + 0.2 + 0.1) / 3)
    assert ends[("all", 40, 0)] == pytest.approx((0.3 + 0.2 + 0.1) / 3)  # per anchor
    assert (table["status"] == "not run").sum() == 4 and table.loc[table["status"] == "not run", "R@1"].isna().all()
    assert fig.with_suffix(".png").stat().st_size > 1000 and fig.with_suffix(".pdf").exists()


def test_bad_curves_block_is_rejected(tmp_path, capfd):
    code = main(["curves", "--runs", str(tmp_path), "--spec-json", json.dumps({**SPEC, "negatives": ["easiest"]}),
                 "--out", str(tmp_path / "x.csv"), "--figure", str(tmp_path / "x")])
    assert code == 2 and "curves.negatives.0" in capfd.readouterr().err and not (tmp_path / "x.csv").exists()
