import shlex
from pathlib import Path


rule synth:
    output:
        directory("results/{ds}/data"),
    params:
        preset=lambda wc: CONFIGS[wc.ds]["dataset"]["synth"]["preset"],
        seed=lambda wc: CONFIGS[wc.ds]["dataset"]["synth"]["seed"],
        format=lambda wc: CONFIGS[wc.ds]["dataset"]["format"],
        knobs=lambda wc: " ".join(
            f"--set {k}={json.dumps(v)}"
            for k, v in CONFIGS[wc.ds]["dataset"]["synth"]["overrides"].items()
        ),
    log:
        "logs/synth/{ds}.log",
    benchmark:
        "benchmarks/synth/{ds}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn synth --preset {params.preset} --seed {params.seed} --format {params.format}"
        " {params.knobs} --out {output} > {log} 2>&1"


rule frame_store:
    input:
        get_data_dir,
    output:
        directory("results/{ds}/frames_{size}"),
    wildcard_constraints:
        size=r"\d+",
    params:
        # videos keep the frames sampled at the dataset's L (MovingFashion layout)
        num_frames=lambda wc: CONFIGS[wc.ds]["model"]["num_frames"],
    log:
        "logs/frame_store/{ds}/{size}.log",
    benchmark:
        "benchmarks/frame_store/{ds}/{size}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn frame-store --data {input} --size {wildcards.size} --num-frames {params.num_frames}"
        " --out {output} > {log} 2>&1"


rule resolve_config:
    output:
        "results/{ds}/configs/{variant}.json",
    params:
        config=get_variant_json,
    log:
        "logs/resolve_config/{ds}/{variant}.log",
    benchmark:
        "benchmarks/resolve_config/{ds}/{variant}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn resolve-config --json {params.config:q} --out {output} > {log} 2>&1"


# LPR4M's frames and images read from img2dataset's shards (dataset.index.shards): the index of
# id -> shard member, and the report of the annotation ids without a file (sgmn index). Planned
# only for a dataset that names shard folders; every run of it then reads through the index.
def get_index_shards(wildcards):
    """The shard folders; one that the download rule fills (under download.dir) is not a declared
    output, so the download report, written once every list has finished, stands in for it."""
    inputs = []
    for folder in CONFIGS[wildcards.ds]["dataset"]["index"]["shards"]:
        downloaded = URL_LISTS and Path(folder).resolve().is_relative_to(Path(DOWNLOAD_DIR).resolve())
        inputs.append(f"{DOWNLOAD_DIR}/download_report.json" if downloaded else folder)
    return list(dict.fromkeys(inputs))


def get_index_args(wildcards):
    index = CONFIGS[wildcards.ds]["dataset"]["index"]
    args = [a for folder in index["shards"] for a in ("--shards", folder)] + ["--id-pattern", index["id_pattern"]]
    return shlex.join(args + (["--id-field", index["id_field"]] if index["id_field"] else []))


rule index:
    input:
        data=get_data_dir,
        shards=get_index_shards,
    output:
        directory("results/{ds}/shard_index"),
    params:
        args=get_index_args,
    log:
        "logs/index/{ds}.log",
    benchmark:
        "benchmarks/index/{ds}.tsv"
    threads: 8
    resources:
        # ~70 bytes a row at the build's peak: ~35 GB for LPR4M's ~480M frames
        mem_mb=40000,
        runtime=24 * 60,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn index {params.args} --data {input.data} --out {output} --processes {threads} > {log} 2>&1"


# The frame store of a dataset read through a shard index: rule frame_store with --index.
INDEXED_DATASETS = sorted(ds for ds, cfg in CONFIGS.items() if cfg["dataset"]["index"]["path"])
if INDEXED_DATASETS:

    ruleorder: frame_store_indexed > frame_store

    rule frame_store_indexed:
        input:
            data=get_data_dir,
            index=get_index_input,
        output:
            directory("results/{ds}/frames_{size}"),
        wildcard_constraints:
            ds="|".join(INDEXED_DATASETS),
            size=r"\d+",
        params:
            num_frames=lambda wc: CONFIGS[wc.ds]["model"]["num_frames"],
        log:
            "logs/frame_store/{ds}/{size}.log",
        benchmark:
            "benchmarks/frame_store/{ds}/{size}.tsv"
        resources:
            mem_mb=2000,
            runtime=60,
        conda:
            "../envs/sgmn.yaml"
        shell:
            "sgmn frame-store --data {input.data} --index {input.index} --size {wildcards.size}"
            " --num-frames {params.num_frames} --out {output} > {log} 2>&1"
