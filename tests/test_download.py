"""LPR4M's URL lists fetched with img2dataset (rule download, sgmn.data.download): the command
line, the report, and end to end: LPR-Synth's frames and shop images served over HTTP on
127.0.0.1, fetched by the download rule into shards, every byte checked.

img2dataset pins pandas<3 and the suite uses pandas 3: the end-to-end test runs it from a virtual
environment of its own (fixture img2dataset_exe, tests/conftest.py)."""
import functools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sgmn import config as cfg
from sgmn.cli import main
from sgmn.data import download as dl

REPO = Path(__file__).resolve().parents[1]


def _defaults(**overrides) -> dict:
    return {**cfg.validate({})["download"], **overrides}


def test_img2dataset_command_line_has_the_release_flags():
    args = dl.img2dataset_args(_defaults(), "lists/train_frames.parquet", "out/train_frames")
    flags = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "lists/train_frames.parquet"
    assert flags["--resize_mode"] == "keep_ratio" and flags["--image_size"] == "256"     # LPR4M's release
    assert flags["--incremental_mode"] == "incremental" and flags["--input_format"] == "parquet"
    assert flags["--output_folder"] == "out/train_frames" and flags["--output_format"] == "files"
    assert "--disable_all_reencoding" not in flags and "--save_additional_columns" not in flags
    args = dl.img2dataset_args(_defaults(additional_columns=["id"], disable_all_reencoding=True,
                                         output_format="webdataset"), "a.csv.gz", "o")
    flags = dict(zip(args[1::2], args[2::2]))
    assert flags["--save_additional_columns"] == '["id"]' and flags["--disable_all_reencoding"] == "True"
    assert flags["--input_format"] == "csv.gz" and flags["--output_format"] == "webdataset"
    assert dl.img2dataset_command(_defaults(img2dataset="/opt/i2d env/bin/img2dataset"), "a b.tsv", "o") \
        .startswith("'/opt/i2d env/bin/img2dataset' 'a b.tsv' ")
    with pytest.raises(dl.DownloadError, match="download.input_format"):
        dl.img2dataset_args(_defaults(), "lists/urls", "o")
    assert dl.img2dataset_args(_defaults(input_format="txt"), "lists/urls", "o")[4] == "txt"


def test_download_section_is_off_by_default_and_not_part_of_a_run_config():
    base = cfg.load_config(REPO / "workflow/config/default.yaml")
    assert base["download"]["url_lists"] == {}
    assert "download" not in cfg.resolve_variant(base, base["variants"][0])   # runs are not rerun by it
    assert dl.download_dir(base) == "results/lpr_synth/download"
    with pytest.raises(dl.DownloadError, match="letters, digits"):
        dl.url_lists({"url_lists": {"train/frames": "a.parquet"}})


def _fake_shard(folder: Path, shard: int, rows: list[dict], finished: bool = True) -> None:
    """A shard as img2dataset 1.47 leaves it: a parquet row per url, the stats file once done."""
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    if finished:
        ok = sum(r["status"] == "success" for r in rows)
        stats = {"count": len(rows), "successes": ok,
                 "failed_to_download": sum(r["status"] == "failed_to_download" for r in rows),
                 "failed_to_resize": sum(r["status"] == "failed_to_resize" for r in rows),
                 "status_dict": {"success": ok}}
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats))


def _row(i, status="success", error=None):
    return {"id": f"f{i}", "url": f"http://h/{i}.jpg", "key": f"{i:09d}", "status": status, "error_message": error,
            "width": None, "height": None, "original_width": None, "original_height": None, "exif": None,
            "sha256": None}


def test_report_counts_lists_failures_and_flags_unfinished_shards(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    _fake_shard(folder, 0, [_row(0), _row(1, "failed_to_download", "HTTP Error 404: File not found")])
    _fake_shard(folder, 1, [_row(2), _row(3, "failed_to_resize", "image too small")])
    _fake_shard(folder, 2, [_row(4)], finished=False)            # stopped mid-shard
    urls = tmp_path / "frames.csv"
    urls.write_text("url,id\n" + "".join(f"http://h/{i}.jpg,f{i}\n" for i in range(6)))
    report = dl.build_report([("frames", folder, urls)])
    entry = report["lists"]["frames"]
    assert (entry["urls"], entry["attempted"], entry["successes"], entry["failed_count"], entry["not_attempted"]) \
        == (6, 4, 2, 2, 2)
    assert entry["incomplete_shards"] == [2] and not report["complete"] and len(report["problems"]) == 2
    assert [(f["shard"], f["id"], f["status"]) for f in entry["failed"]] == [
        (0, "f1", "failed_to_download"), (1, "f3", "failed_to_resize")]
    assert entry["failed"][0]["error_message"] == "HTTP Error 404: File not found"
    assert report["total"]["failed_to_download"] == 1 and report["total"]["failed_to_resize"] == 1

    out = tmp_path / "report.json"
    assert main(["download-report", "--list", "frames", str(folder), str(urls), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["lists"]["frames"]["not_attempted"] == 2
    with pytest.raises(SystemExit, match="did not finish"):       # the report is written first
        main(["download-report", "--list", "frames", str(folder), str(urls), "--require-complete",
              "--out", str(tmp_path / "again.json")])
    assert json.loads((tmp_path / "again.json").read_text())["complete"] is False
    (folder / "00002.parquet").unlink()
    urls.write_text("url,id\n" + "".join(f"http://h/{i}.jpg,f{i}\n" for i in range(4)))
    assert main(["download-report", "--list", "frames", str(folder), str(urls), "--require-complete",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["complete"] is True


# ---- end to end: the rule, img2dataset in its own venv, LPR-Synth over HTTP -------------------

class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet; the requests are counted instead
        pass

    def do_GET(self):
        self.server.requested.append(self.path)
        super().do_GET()


@pytest.fixture
def served(smoke_data):
    """LPR-Synth's files over HTTP on 127.0.0.1 (a free port; a thread, stopped at teardown)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(smoke_data)))
    server.requested = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _snakemake(workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "workflow/config/smoke.yaml"), str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _arrived(folder: Path) -> dict[str, tuple[str, bytes]]:
    """id -> (url, bytes) of every sample of an img2dataset `files` folder (json sidecar + jpg)."""
    out = {}
    for meta_path in sorted(folder.glob("[0-9]*/*.json")):
        meta = json.loads(meta_path.read_text())
        assert meta["status"] == "success" and meta["id"] not in out
        out[meta["id"]] = (meta["url"], meta_path.with_suffix(".jpg").read_bytes())
    return out


@pytest.mark.slow
def test_download_rule_fetches_lpr_synth_byte_identical(tmp_path, smoke_data, served, img2dataset_exe):
    if shutil.which("sgmn") is None:
        pytest.skip("the sgmn console script is not on PATH (pip install -e . in the active env)")
    server, base = served
    frames = {p.stem: p for p in sorted(smoke_data.glob("frames/*/*.jpg"))}
    images = {p.stem: p for p in sorted(smoke_data.glob("images/*.jpg"))}
    assert len(frames) > 400 and images
    lists = tmp_path / "lists"
    lists.mkdir()
    # the frame / image id rides along as an extra column and lands in each sample's json
    frame_rows = [{"url": f"{base}/{p.relative_to(smoke_data).as_posix()}", "id": fid} for fid, p in frames.items()]
    missing = f"{base}/frames/no-such-clip/no-such-frame.jpg"
    frame_rows.insert(7, {"url": missing, "id": "no-such-frame"})                      # a 404
    pq.write_table(pa.Table.from_pylist(frame_rows), lists / "frames.parquet")
    (lists / "images.csv").write_text("url,id\n" + "".join(
        f"{base}/{p.relative_to(smoke_data).as_posix()},{iid}\n" for iid, p in images.items()))
    config = tmp_path / "download.yaml"
    config.write_text(yaml.safe_dump({"download": {
        "url_lists": {"frames": str(lists / "frames.parquet"), "images": str(lists / "images.csv")},
        "img2dataset": img2dataset_exe, "additional_columns": ["id"],
        # the release's keep_ratio / 256 decodes, resizes and re-encodes every image: only with
        # re-encoding off are the stored bytes the served ones, which is what is checked here
        "disable_all_reencoding": True,
        "processes": 1, "threads": 8, "number_sample_per_shard": 200, "timeout": 5, "retries": 0}}))
    work = tmp_path / "work"

    plan = _snakemake(work, config, "-n", "-p", "download_report")
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = [line.split()[1].rstrip(":") for line in plan.stdout.splitlines()
            if line.startswith(("rule ", "localrule "))]
    assert sorted(jobs) == ["download", "download", "download_report"], jobs
    assert "--resize_mode keep_ratio --image_size 256" in plan.stdout and "--incremental_mode incremental" in plan.stdout

    run = _snakemake(work, config, "download_report")
    assert run.returncode == 0, run.stderr[-3000:]
    root = work / "results" / "lpr_synth_smoke" / "download"
    for name, served_files in (("frames", frames), ("images", images)):
        arrived = _arrived(root / name)
        assert set(arrived) == set(served_files), name
        for sid, (url, data) in arrived.items():
            assert url.endswith(served_files[sid].relative_to(smoke_data).as_posix())
            assert data == served_files[sid].read_bytes(), sid
    report = json.loads((root / "download_report.json").read_text())
    assert report["complete"] and report["total"]["failed_count"] == 1
    assert report["total"]["successes"] == len(frames) + len(images) == report["total"]["urls"] - 1
    assert report["lists"]["images"]["failed"] == [] and report["lists"]["frames"]["shards"] == 3
    [failed] = report["lists"]["frames"]["failed"]
    assert (failed["url"], failed["id"], failed["status"]) == (missing, "no-such-frame", "failed_to_download")
    assert "404" in failed["error_message"]
    log = (work / "logs" / "download" / "frames.log").read_text()
    assert "success" in log and "count: " in log                    # img2dataset's progress lines

    # resumable: a job stopped during shard 1 leaves no marker (its declared output), no report and
    # no stats file of that shard, but the finished shards stay; the rerun fetches only shard 1's urls
    (root / "frames.done").unlink()
    (root / "download_report.json").unlink()
    (root / "frames" / "00001_stats.json").unlink()
    server.requested.clear()
    rerun = _snakemake(work, config, "download_report")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    shard1 = {r["url"].removeprefix(base) for r in frame_rows[200:400]}
    assert sorted(server.requested) == sorted(shard1)
    assert set(_arrived(root / "frames")) == set(frames)
    assert json.loads((root / "download_report.json").read_text())["total"] == report["total"]

    # webdataset output: the same bytes in one tar per shard
    wds = tmp_path / "wds"
    cmd = dl.img2dataset_command(_defaults(img2dataset=img2dataset_exe, output_format="webdataset",
                                           additional_columns=["id"], disable_all_reencoding=True, processes=1,
                                           threads=8), str(lists / "images.csv"), str(wds))
    fetched = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})  # no update check online
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    members = {}
    with tarfile.open(wds / "00000.tar") as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    for name, data in members.items():
        if name.endswith(".json"):
            meta = json.loads(data)
            assert members[name.removesuffix(".json") + ".jpg"] == images[meta["id"]].read_bytes()
    assert sum(n.endswith(".jpg") for n in members) == len(images)
    assert dl.build_report([("images", wds, lists / "images.csv")])["complete"]

    # the shards, indexed (`sgmn index`, ids from the urls as for LPR4M), feed training and
    # evaluation exactly as the directly written files do
    annotations = tmp_path / "annotations"           # LPR4M's annotation files, no frames/ or images/
    annotations.mkdir()
    for path in smoke_data.iterdir():
        if path.is_file():
            shutil.copy2(path, annotations / path.name)
    index = tmp_path / "shard_index"
    assert main(["index", "--shards", str(root / "frames"), "--shards", str(root / "images"), "--data",
                 str(annotations), "--out", str(index), "--processes", "1"]) == 0
    indexed = json.loads((index / "report.json").read_text())
    assert indexed["annotations"]["missing"] == 0 and indexed["failed_downloads"]["count"] == 1
    direct, through_index = _train_and_evaluate(tmp_path / "direct", smoke_data), \
        _train_and_evaluate(tmp_path / "indexed", annotations, index)
    for key in ("overall", "subsets", "categories", "misses"):
        assert through_index[0][key] == direct[0][key], key
    assert through_index[1].equals(direct[1])                       # every score, bit for bit


def _train_and_evaluate(out: Path, data: Path, index: Path | None = None):
    """Smoke-sized GRA-only training from a random CLIP, then evaluation: (metrics, scores)."""
    import pandas as pd
    run_config = cfg.resolve_variant(cfg.load_layered("smoke"), "gra_only")
    run_config["dataset"]["path"] = str(data)
    run_config["train"].update(steps=3, warmup_steps=1, checkpoint_every=3)   # 24 training clips read
    if index is not None:
        run_config["dataset"]["index"] = {"path": str(index)}
    out.mkdir()
    (out / "config.json").write_text(json.dumps(run_config))
    assert main(["train", "--config", str(out / "config.json"), "--seed", "0", "--data", str(data),
                 "--clip-weights", "none", "--out", str(out / "run")]) == 0
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(out / "run" / "final.pt"), "--out",
                 str(out / "metrics.json"), "--scores-out", str(out / "scores.parquet")]) == 0
    return json.loads((out / "metrics.json").read_text()), pd.read_parquet(out / "scores.parquet")
