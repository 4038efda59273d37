# LPR4M's frames and shop images from its published URL lists (config `download`, opt-in: off
# while download.url_lists is empty). The logic lives in sgmn.data.download (tested Python).
#   snakemake download_report --cores all --configfile workflow/config/lpr4m.yaml
import shlex

from sgmn.data.download import download_dir, img2dataset_command, url_lists

DOWNLOAD = config["download"]
DOWNLOAD_DIR = download_dir(config)
URL_LISTS = url_lists(DOWNLOAD)


def _local_url_list(name):
    """A list on this filesystem is an input of its download (a remote one, e.g. s3://, is not)."""
    path = URL_LISTS[name]
    return [] if "://" in path else path


def get_download_markers(wildcards):
    if not URL_LISTS:
        raise ValueError("download_report: download.url_lists is empty; name the URL lists in the config")
    return [f"{DOWNLOAD_DIR}/{name}.done" for name in sorted(URL_LISTS)]


def get_download_report_args(wildcards):
    """--list NAME FOLDER URL_LIST per list ('-' for a remote list: its rows are not counted)."""
    args = []
    for name in sorted(URL_LISTS):
        path = URL_LISTS[name]
        args += ["--list", name, f"{DOWNLOAD_DIR}/{name}", "-" if "://" in path else path]
    if DOWNLOAD["input_format"]:
        args += ["--input-format", DOWNLOAD["input_format"]]
    return shlex.join(args)


# img2dataset into {DOWNLOAD_DIR}/{name}/, which is not a declared output: Snakemake deletes a
# failed job's outputs, and the finished shards must survive a failure for img2dataset's
# incremental mode to resume (the marker is the output). Progress goes to the log.
rule download:
    input:
        lambda wc: _local_url_list(wc.name),
    output:
        touch(f"{DOWNLOAD_DIR}/{{name}}.done"),
    wildcard_constraints:
        name=r"[A-Za-z0-9_-]+",
    params:
        command=lambda wc: img2dataset_command(DOWNLOAD, URL_LISTS[wc.name], f"{DOWNLOAD_DIR}/{wc.name}"),
    threads: DOWNLOAD["processes"]
    log:
        "logs/download/{name}.log",
    benchmark:
        "benchmarks/download/{name}.tsv"
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    conda:
        "../envs/img2dataset.yaml"
    shell:
        "PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 {params.command} > {log} 2>&1"


# Counts per list (from img2dataset's *_stats.json) and every failed url (from its per-shard
# parquet); fails when a shard did not finish or urls were not attempted (the log says which).
rule download_report:
    input:
        get_download_markers,
    output:
        f"{DOWNLOAD_DIR}/download_report.json",
    params:
        lists=get_download_report_args,
    log:
        "logs/download_report/download_report.log",
    benchmark:
        "benchmarks/download_report/download_report.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn download-report {params.lists} --require-complete --out {output} > {log} 2>&1"
