"""LPR4M's published URL lists fetched with img2dataset: its command line, and the report of
what arrived.

LPR4M publishes its frames and shop images as URL lists, fetched with img2dataset
(`--resize_mode keep_ratio`, shortest side 256) into shards. img2dataset runs in its own
environment (it pins pandas<3; workflow/envs/img2dataset.yaml), so this module never imports
it: `img2dataset_args` builds its command line from the config's `download` section (rule
download) and `build_report` reads what it wrote (rule download_report, `sgmn download-report`).

What img2dataset writes into an output folder, per shard `SSSSS` (5 digits):
- `SSSSS/` (output_format files: one `{key}.jpg` + `{key}.json` per downloaded url) or
  `SSSSS.tar` (webdataset: the same members in a tar);
- `SSSSS.parquet`: one row per url of the shard, downloaded or not (`url`, `key`, `status`,
  `error_message`, the list's additional columns, ...), opened when the shard starts;
- `SSSSS_stats.json`: `count`, `successes`, `failed_to_download`, `failed_to_resize`,
  `status_dict`, written when the shard is done. Its incremental mode skips the shards that
  have one, so a rerun resumes; a shard with a parquet but no stats file did not finish.
Nothing else may be written into the folder: its incremental mode reads the shard id of every
`*.json` at the top of the folder.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

# The img2dataset release of workflow/envs/img2dataset.yaml and of the tests' environment
# (tests/test_download.py; tests/test_pins.py checks the env file pins the same).
IMG2DATASET_VERSION = "1.47.0"

# url-list suffix -> img2dataset --input_format (longest suffix first)
INPUT_FORMATS = {".csv.gz": "csv.gz", ".tsv.gz": "tsv.gz", ".jsonl.gz": "jsonl.gz", ".json.gz": "json.gz",
                 ".txt.gz": "txt.gz", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv",
                 ".jsonl": "jsonl", ".json": "json", ".txt": "txt"}
# columns img2dataset writes into its parquet besides the url list's own
I2D_COLUMNS = ("key", "caption", "url", "status", "error_message", "width", "height", "original_width",
               "original_height", "exif", "md5", "sha256", "sha512")
_STATS = re.compile(r"^(\d+)_stats\.json$")
_SHARD_PARQUET = re.compile(r"^(\d+)\.parquet$")


class DownloadError(ValueError):
    """A URL list or an img2dataset output folder that cannot be read; the message names it."""


LIST_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def url_lists(download: dict) -> dict[str, str]:
    """The config's `download.url_lists` (name -> URL list), each name checked: it names a folder
    and a wildcard of the DAG."""
    lists = dict(download.get("url_lists") or {})
    bad = sorted(name for name in lists if not LIST_NAME.match(name))
    if bad:
        raise DownloadError(f"download.url_lists: names {bad} are not made of letters, digits, _ and -")
    return lists


def download_dir(config: dict) -> str:
    """Where the downloads go: `download.dir`, or results/{dataset.name}/download."""
    return (config.get("download") or {}).get("dir") or f"results/{config['dataset']['name']}/download"


def input_format_of(url_list: str | Path, configured: str | None = None) -> str:
    """img2dataset's --input_format of a URL list: `configured`, or from the file's suffix."""
    if configured:
        return configured
    name = str(url_list).lower()
    for suffix, fmt in INPUT_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise DownloadError(f"URL list {url_list}: cannot tell its format from the name; set download.input_format "
                        f"(suffixes understood: {', '.join(INPUT_FORMATS)})")


def img2dataset_args(download: dict, url_list: str, output_folder: str) -> list[str]:
    """img2dataset's command line (without the executable) for one URL list, from the config's
    `download` section: the release's resizing (keep_ratio, shortest side image_size), resumable
    (incremental mode), progress on stdout."""
    args = [str(url_list), "--output_folder", str(output_folder),
            "--input_format", input_format_of(url_list, download.get("input_format")),
            "--url_col", download["url_col"],
            "--output_format", download["output_format"],
            "--resize_mode", download["resize_mode"],
            "--image_size", str(download["image_size"]),
            "--processes_count", str(download["processes"]),
            "--thread_count", str(download["threads"]),
            "--number_sample_per_shard", str(download["number_sample_per_shard"]),
            "--timeout", str(download["timeout"]),
            "--retries", str(download["retries"]),
            "--incremental_mode", download["incremental_mode"],
            "--enable_wandb", "False"]
    if download["disable_all_reencoding"]:
        args += ["--disable_all_reencoding", "True"]
    if download["additional_columns"]:
        # python-fire reads the value as a Python literal: a list of column names
        args += ["--save_additional_columns", json.dumps(list(download["additional_columns"]))]
    return args


def img2dataset_command(download: dict, url_list: str, output_folder: str) -> str:
    """The shell command of the download rule: the configured img2dataset executable and its
    arguments, quoted."""
    return shlex.join([download["img2dataset"], *img2dataset_args(download, url_list, output_folder)])


def _list_files(url_list: Path, fmt: str) -> list[Path]:
    if url_list.is_dir():  # img2dataset reads every *.{fmt} of a directory, sorted
        files = sorted(url_list.glob(f"*.{fmt}"))
        if not files:
            raise DownloadError(f"URL list {url_list}: a directory without *.{fmt} files")
        return files
    if not url_list.exists():
        raise FileNotFoundError(f"URL list {url_list} not found")
    return [url_list]


def count_urls(url_list: str | Path, fmt: str | None = None) -> int:
    """Rows of a URL list (a file, or a directory of them) as img2dataset reads it."""
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
    url_list = Path(url_list)
    fmt = input_format_of(url_list, fmt)
    total = 0
    for path in _list_files(url_list, fmt):
        try:
            if fmt == "parquet":
                total += pq.ParquetFile(path).metadata.num_rows
            elif fmt.startswith("txt"):
                opts = pa_csv.ReadOptions(column_names=["url"])
                total += pa_csv.read_csv(path, read_options=opts).num_rows
            elif fmt.startswith("csv"):
                total += pa_csv.read_csv(path).num_rows
            elif fmt.startswith("tsv"):
                total += pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter="\t")).num_rows
            elif fmt.startswith("jsonl"):
                total += pa_json.read_json(path).num_rows
            elif fmt.startswith("json"):
                import pandas as pd
                total += len(pd.read_json(path))
            else:
                raise DownloadError(f"URL list {path}: unknown input format {fmt!r}")
        except DownloadError:
            raise
        except Exception as err:  # pyarrow's errors name no file
            raise DownloadError(f"URL list {path}: cannot read it as {fmt} ({err})") from None
    return total


def _shard_ids(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    return {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.match(p.name))}


def read_folder(folder: str | Path) -> dict:
    """Counts of one img2dataset output folder, summed over its per-shard `*_stats.json`, and
    every url that did not arrive, from the per-shard parquet files of the finished shards.

    A shard with a parquet file but no stats file did not finish (img2dataset gave up on it or
    was stopped): it is listed in `incomplete_shards`, and its urls count as not attempted."""
    import pyarrow.parquet as pq
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"img2dataset output folder {folder} not found")
    stats_files, parquets = _shard_ids(folder, _STATS), _shard_ids(folder, _SHARD_PARQUET)
    counts = {"attempted": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    status: dict[str, int] = {}
    failed, notes = [], []
    for shard, path in sorted(stats_files.items()):
        try:
            stats = json.loads(path.read_text())
            counts["attempted"] += int(stats["count"])
            for key in ("successes", "failed_to_download", "failed_to_resize"):
                counts[key] += int(stats[key])
            for message, n in stats.get("status_dict", {}).items():
                status[message] = status.get(message, 0) + int(n)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DownloadError(f"{path}: not an img2dataset stats file ({err!r})") from None
        n_failed = int(stats["failed_to_download"]) + int(stats["failed_to_resize"])
        if not n_failed:
            continue
        if shard not in parquets:
            raise DownloadError(f"{path}: {n_failed} failed url(s) but no {shard:05d}.parquet to list them")
        try:
            rows = pq.read_table(parquets[shard]).to_pylist()
        except Exception as err:  # a truncated or foreign file
            raise DownloadError(f"{parquets[shard]}: cannot read it ({err})") from None
        listed = [r for r in rows if r.get("status") != "success"]
        if len(listed) != n_failed:  # img2dataset drops a sample whose writing raised
            notes.append(f"{parquets[shard].name}: {len(listed)} rows not 'success' but {path.name} "
                         f"counts {n_failed} failures")
        for r in listed:
            extra = {k: v for k, v in r.items() if k not in I2D_COLUMNS}
            failed.append({"shard": shard, "key": r.get("key"), "url": r.get("url"), "status": r.get("status"),
                           "error_message": r.get("error_message"), **extra})
    return {"folder": str(folder), "shards": len(stats_files), **counts, "status": status,
            "incomplete_shards": sorted(set(parquets) - set(stats_files)), "failed": failed, "notes": notes}


def build_report(lists: list[tuple[str, str | Path, str | Path | None]], input_format: str | None = None) -> dict:
    """The download report of several URL lists: `lists` holds (name, img2dataset output
    folder, URL list or None). Per list and in total: urls in the list, attempted, successes,
    failed (to download / to resize), not attempted; and every failed url with its error and
    the list's additional columns (e.g. the frame or image id). `complete` is true when every
    url of every list was attempted and every shard finished; failed urls do not make it
    false (img2dataset's incremental mode does not retry them)."""
    out, problems = {}, []
    for name, folder, url_list in lists:
        entry = read_folder(folder)
        entry["url_list"] = None if url_list is None else str(url_list)
        entry["urls"] = None if url_list is None else count_urls(url_list, input_format)
        entry["failed_count"] = entry["failed_to_download"] + entry["failed_to_resize"]
        entry["not_attempted"] = None if entry["urls"] is None else entry["urls"] - entry["attempted"]
        if entry["incomplete_shards"]:
            problems.append(f"{name}: {len(entry['incomplete_shards'])} shard(s) did not finish "
                            f"({', '.join(f'{s:05d}' for s in entry['incomplete_shards'][:10])}"
                            f"{', ...' if len(entry['incomplete_shards']) > 10 else ''})")
        if entry["not_attempted"]:
            if entry["not_attempted"] > 0:
                problems.append(f"{name}: {entry['not_attempted']} of {entry['urls']} urls not attempted")
            else:
                problems.append(f"{name}: {entry['attempted']} urls attempted but {url_list} holds "
                                f"{entry['urls']} (another list downloaded into {folder}?)")
        out[name] = entry
    keys = ("urls", "attempted", "successes", "failed_to_download", "failed_to_resize", "failed_count",
            "not_attempted")
    total = {k: (None if any(e[k] is None for e in out.values()) else sum(e[k] for e in out.values()))
             for k in keys}
    return {"format": "sgmn-download-report", "version": 1, "complete": not problems, "problems": problems,
            "total": total, "lists": out}
