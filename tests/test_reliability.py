"""Reliability of real training processes: kill -9 then rerun, and same seed twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgmn import config as cfg
from sgmn.io import write_json

REPO = Path(__file__).resolve().parents[1]
SGMN = [sys.executable, "-m", "sgmn.cli"]


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    base = cfg.load_config(REPO / "workflow" / "config" / "smoke.yaml")
    base = cfg.deep_merge(base, {"model": {"pretrained": "none", "num_frames": 4},
                                 "train": {"steps": 40, "batch_size": 8, "checkpoint_every": 5,
                                           "warmup_steps": 2}})
    path = tmp_path_factory.mktemp("cfg") / "gra_only.json"
    write_json(cfg.resolve_variant(base, "gra_only"), path)
    return path


def _train_cmd(config, data, out):
    return SGMN + ["train", "--config", str(config), "--seed", "0", "--data", str(data),
                   "--clip-weights", "none", "--out", str(out), "--threads", "1"]


def _train_and_evaluate(config, data, out) -> dict:
    subprocess.run(_train_cmd(config, data, out), check=True, capture_output=True)
    return _evaluate(data, out)


def _evaluate(data, out) -> dict:
    subprocess.run(SGMN + ["evaluate", "--data", str(data), "--checkpoint", str(out / "final.pt"),
                           "--out", str(out / "metrics.json"), "--threads", "1"],
                   check=True, capture_output=True)
    return json.loads((out / "metrics.json").read_text())


def _same_results(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("overall", "subsets", "categories", "misses"))


def _weights(out):
    return torch.load(out / "final.pt", weights_only=False)["model"]


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(run_config, smoke_data, tmp_path):
    reference = _train_and_evaluate(run_config, smoke_data, tmp_path / "full")

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run_config, smoke_data, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "ckpt" / "latest.pt"
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                step = torch.load(ckpt, weights_only=False)["step"]
            except Exception:  # being replaced right now: read it again
                step = 0
            if step >= 10:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "final.pt").exists()
    assert 10 <= torch.load(ckpt, weights_only=False)["step"] < 40

    resumed = subprocess.run(_train_cmd(run_config, smoke_data, out), check=True,
                             capture_output=True, text=True)
    assert "resuming from" in resumed.stderr
    for key, value in _weights(tmp_path / "full").items():
        assert torch.equal(value, _weights(out)[key]), key
    assert _same_results(reference, _evaluate(smoke_data, out))


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics(run_config, smoke_data, tmp_path):
    first = _train_and_evaluate(run_config, smoke_data, tmp_path / "a")
    second = _train_and_evaluate(run_config, smoke_data, tmp_path / "b")
    assert _same_results(first, second)
    for key, value in _weights(tmp_path / "a").items():
        assert torch.equal(value, _weights(tmp_path / "b")[key]), key


@pytest.mark.slow
def test_train_metrics_out_equals_a_separate_evaluate(run_config, smoke_data, tmp_path):
    """The DAG evaluates inside the training process (`train --metrics-out`): the same metrics,
    score table and per-query hits as `sgmn evaluate` of the same final.pt in a new process."""
    import pandas as pd
    config = json.loads(run_config.read_text())
    config["train"]["steps"] = 5
    short = tmp_path / "short.json"
    write_json(config, short)
    out = tmp_path / "run"
    subprocess.run(_train_cmd(short, smoke_data, out) + [
        "--metrics-out", str(out / "in_process.json"), "--scores-out", str(out / "in_process_scores.parquet"),
        "--per-query-out", str(out / "in_process_pq.parquet")], check=True, capture_output=True)
    subprocess.run(SGMN + ["evaluate", "--data", str(smoke_data), "--checkpoint", str(out / "final.pt"),
                           "--out", str(out / "separate.json"), "--scores-out", str(out / "separate_scores.parquet"),
                           "--per-query-out", str(out / "separate_pq.parquet"), "--threads", "1"],
                   check=True, capture_output=True)
    in_process, separate = (json.loads((out / f"{n}.json").read_text()) for n in ("in_process", "separate"))
    assert in_process["overall"]["n"] > 0
    assert {k: v for k, v in in_process.items() if k != "provenance"} == \
        {k: v for k, v in separate.items() if k != "provenance"}
    for name in ("scores", "pq"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"in_process_{name}.parquet"),
                                      pd.read_parquet(out / f"separate_{name}.parquet"))


def test_train_scores_out_needs_metrics_out(tmp_path):
    from sgmn.cli import main
    with pytest.raises(SystemExit, match="--metrics-out"):
        main(["train", "--config", "c.json", "--seed", "0", "--data", "d", "--out", str(tmp_path),
              "--scores-out", str(tmp_path / "s.parquet")])
