"""Data-parallel training (sgmn.train.distributed): two gloo processes on CPU equal one process.

The global batch is split over two ranks; the loss (over the gathered global batch), the
gradients after DDP's averaging and the trained weights must equal a single process's on the
whole batch, and the frame-masking augmentation must not depend on the number of processes.
"""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from sgmn.data.datasets import collate, frame_masking
from sgmn.models.clip import create_clip
from sgmn.models.sgmn import SGMN, gra_only
from sgmn.train import distributed, loop
from sgmn.train.distributed import gather, local_slice

B, L, WORLD = 8, 4, 2


def _model() -> SGMN:
    torch.manual_seed(0)
    return gra_only(create_clip("lpr-tiny-clip").visual)


def _full_model() -> SGMN:
    """Full SGMN (text, TMC, GCI, SMF; the paper's recipe) without dropout, so ranks agree."""
    from sgmn.config import validate
    from sgmn.fidelity import apply_fidelity
    torch.manual_seed(0)
    cfg = apply_fidelity(validate({"fidelity": "paper"}))["sgmn"]
    model = SGMN(create_clip("lpr-tiny-clip").visual, cfg, L, B, 0.2, text_dim=16)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _text(batch: dict) -> dict:
    g = torch.Generator().manual_seed(3)
    present = torch.ones(B, dtype=torch.bool)
    present[2] = False  # one empty ASR: masked, no NaN
    return {**batch, "asr_feat": torch.randn(B, 16, generator=g), "title_feat": torch.randn(B, 16, generator=g),
            "asr_present": present, "title_present": torch.ones(B, dtype=torch.bool)}


def _global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(B, L, generator=g) < 0.6
    mask[:, 0] = True
    # products 0 and 1 appear on both ranks: cross-rank pairs of one product are not negatives
    return {"frames": torch.randn(B, L, 3, 64, 64, generator=g), "frame_mask": mask,
            "image": torch.randn(B, 3, 64, 64, generator=g),
            "product": torch.tensor([0, 1, 2, 3, 0, 5, 6, 1])}


def _half(batch: dict, rank: int) -> dict:
    n = B // WORLD
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


class _Clips(Dataset):
    """16 in-memory clip / image pairs (the loop test's dataset)."""

    def __init__(self):
        g = torch.Generator().manual_seed(2)
        self.frames = torch.randn(16, L, 3, 64, 64, generator=g)
        self.mask = torch.rand(16, L, generator=g) < 0.7
        self.mask[:, 0] = True
        self.image = torch.randn(16, 3, 64, 64, generator=g)

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"frames": self.frames[i], "frame_mask": self.mask[i], "image": self.image[i],
                "product": i % 12}


def _loss_fn(m, batch, generator):
    """retrieval.train_run's loss_fn: masking drawn for the global batch, this rank's slice used."""
    getattr(m, "module", m).hardest_negatives = batch["step"] >= 1
    batch["frame_mask"] = local_slice(frame_masking(gather(batch["frame_mask"]).cpu(), 1.0, 0.9, generator))
    return m(batch)


def _train(run_dir, optimizer: str) -> SGMN:
    model = _model()
    loop.train(model, _Clips(), collate, _loss_fn, run_dir, steps=3, batch_size=B, lr=1e-3,
               warmup_steps=1, weight_decay=0.01, optimizer=optimizer, seed=5, checkpoint_every=2,
               device="cpu", config={"t": 1}, clip_lr_scale=0.5, freeze_stem=True)
    return model


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.cuda.is_available = lambda: False  # the gloo backend on CPU, also on a GPU machine
    torch.set_num_threads(1)
    assert distributed.init_from_env() == (rank, WORLD, rank)
    try:
        result = {"world": distributed.world(), "main": distributed.is_main()}
        # gather / local_slice round trip for float, int and bool tensors
        full = _global_batch()
        part = _half(full, rank)
        result["roundtrip"] = all(torch.equal(gather(part[k]), full[k]) and
                                  torch.equal(local_slice(full[k]), part[k])
                                  for k in ("frame_mask", "product", "image"))
        masked = local_slice(frame_masking(gather(part["frame_mask"]), 1.0, 0.9,
                                           loop.step_generator(3, 7)))
        result["masking"] = masked

        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with torch.no_grad():
            model.hardest_negatives = False
            result["loss_all_negatives"] = model(part)["similarity_loss"].item()
            model.hardest_negatives = True
        loss = ddp(part)["similarity_loss"]
        result["loss"] = loss.item()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss.backward()
        opt.step()
        result["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        # the full model: text features, frame tokens (SMF) and the graph (GCI) span the global batch
        full_model = _full_model()
        ddp_full = torch.nn.parallel.DistributedDataParallel(full_model)
        out = ddp_full(_half(_text(full), rank))
        result["full_losses"] = {k: v.item() for k, v in out.items()}
        sum(out.values()).backward()
        torch.optim.SGD(full_model.parameters(), lr=0.1).step()
        result["full_params"] = {k: v.detach().clone() for k, v in full_model.state_dict().items()}

        trained = _train(os.path.join(out_dir, "run"), "bertadam")
        result["trained"] = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_is_the_identity_when_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() == (0, 1, 0)
    assert distributed.world() == (0, 1, 0) and distributed.is_main()
    x = torch.randn(4, 3, requires_grad=True)
    assert gather(x) is x and local_slice(x) is x
    labels = torch.tensor([1, 2, 3])
    assert gather(labels) is labels and gather(labels > 1).dtype == torch.bool
    assert distributed.gather_objects(["a"]) == [["a"]]
    distributed.barrier()  # a no-op
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env() == (0, 1, 0)
    assert not torch.distributed.is_initialized()


def test_global_batch_must_split_evenly_over_the_processes():
    with pytest.raises(ValueError, match="not divisible by the 3 training processes"):
        loop.StepBatchSampler(50, 8, seed=0, start=0, total=4, rank=0, world_size=3)
    one = loop.StepBatchSampler(50, 8, seed=4, start=0, total=6)
    halves = [list(loop.StepBatchSampler(50, 8, seed=4, start=0, total=6, rank=r, world_size=2))
              for r in range(2)]
    assert [a + b for a, b in zip(*halves)] == list(one)  # rank r takes the contiguous slice r


def test_two_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["world"] for r in ranks] == [(0, WORLD, 0), (1, WORLD, 1)]
    assert [r["main"] for r in ranks] == [True, False]
    assert all(r["roundtrip"] for r in ranks)

    # single process, whole batch
    full = _global_batch()
    assert torch.equal(torch.cat([r["masking"] for r in ranks]),
                       frame_masking(full["frame_mask"], 1.0, 0.9, loop.step_generator(3, 7)))
    model = _model()
    with torch.no_grad():
        model.hardest_negatives = False
        loss_all = model(full)["similarity_loss"].item()
        model.hardest_negatives = True
    loss = model(full)["similarity_loss"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    opt.step()
    for r in ranks:  # (a) every rank's loss is the global-batch loss
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert r["loss_all_negatives"] == pytest.approx(loss_all, rel=1e-5)
    for k, v in model.state_dict().items():  # (b) one DDP step == one single-process step
        for r in ranks:
            torch.testing.assert_close(r["params"][k], v, rtol=0, atol=1e-6, msg=k)

    # full SGMN: every loss term, and one step, equal the single process's on the global batch
    full_model = _full_model()
    out = full_model(_text(full))
    assert set(out) == {"similarity_loss", "text_loss", "graph_loss", "kl_loss", "matching_loss"}
    sum(out.values()).backward()
    torch.optim.SGD(full_model.parameters(), lr=0.1).step()
    for r in ranks:
        for k, v in out.items():
            assert r["full_losses"][k] == pytest.approx(v.item(), rel=1e-4, abs=1e-6), k
    for k, v in full_model.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["full_params"][k], v, rtol=0, atol=1e-5, msg=k)

    # the loop: 3 BertAdam steps (clip lr scale, frozen stem, a checkpoint at step 2)
    single = _train(tmp_path / "single", "bertadam")
    for k, v in single.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["trained"][k], v, rtol=0, atol=1e-5, msg=k)
    # rank 0 alone wrote the log (one line per logged step) and removed the finished checkpoint
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "single" / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [rec["step"] for rec in ref] == [3]
    assert log[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-4)
    assert not (tmp_path / "run" / "ckpt" / "latest.pt").exists()


def test_torchrun_cli_train_equals_a_single_process_run(smoke_data, tmp_path):
    """`torchrun -m sgmn.cli train` (the DAG's command for train.processes > 1) on real files."""
    import subprocess
    import sys
    from pathlib import Path

    from sgmn import config as cfg
    from sgmn.io import write_json
    from sgmn.train.retrieval import build_model, train_run
    repo = Path(__file__).resolve().parents[1]
    base = cfg.deep_merge(cfg.load_config(repo / "workflow" / "config" / "smoke.yaml"), {
        "model": {"pretrained": "none", "num_frames": 4},
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2,
                  "processes": 2, "device": "cpu", "frame_mask_prob": 1.0, "triplet_warmup_steps": 1,
                  "optimizer": "bertadam", "clip_lr_scale": 0.5, "freeze_stem": True}})
    resolved = cfg.resolve_variant(base, "gra_only")
    write_json(resolved, tmp_path / "cfg.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "sgmn.cli", "train", "--config", str(tmp_path / "cfg.json"), "--seed", "0",
         "--data", str(smoke_data), "--clip-weights", "none", "--threads", "1",
         "--out", str(tmp_path / "ddp")],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:  # the single-process reference meanwhile, in this process
        one = torch.load(train_run(cfg.load_config(tmp_path / "cfg.json"), 0, smoke_data, "none",
                                   tmp_path / "one"), weights_only=False)["model"]
    finally:
        output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, output[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "final.pt", weights_only=False)["model"]
    for k, v in one.items():
        torch.testing.assert_close(ddp[k], v, rtol=0, atol=1e-5, msg=k)
    torch.manual_seed(0)
    init = build_model(resolved, "none").state_dict()
    assert not torch.equal(ddp["visual.proj"], init["visual.proj"])  # it trained
    assert torch.equal(ddp["visual.conv1.weight"], init["visual.conv1.weight"])  # frozen stem
    for name in ("params.json", "data_report.json", "train_log.jsonl"):
        assert (tmp_path / "ddp" / name).exists(), name
    assert not (tmp_path / "ddp" / "ckpt" / "latest.pt").exists()
    log = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == len(ref) == 1 and log[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-4)
