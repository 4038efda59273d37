# Frozen text features of SGMN's text branch (Eq. 4): every ASR text and title encoded once.


def _text_needs_pipeline_clip():
    return config["text"]["encoder"] == "clip" and config["model"]["pretrained"] == "pipeline"


def get_text_clip_input(wildcards):
    """The DAG's pretrained CLIP when the CLIP text tower encodes the texts, else nothing."""
    return f"results/{DATASET}/clip/pretrained.pt" if _text_needs_pipeline_clip() else []


def get_text_clip_arg(wildcards):
    if _text_needs_pipeline_clip():
        return f"results/{DATASET}/clip/pretrained.pt"
    value = config["model"]["pretrained"]
    return "none" if value == "pipeline" else value


def get_text_json(wildcards):
    """Only the keys that shape the text features, so other changes do not redo them."""
    keep = {
        # the shard index changes where images are read, never the texts
        "dataset": {k: v for k, v in config["dataset"].items() if k != "index"},
        "model": {k: config["model"][k] for k in ("clip", "pretrained")},
        "text": config["text"],
    }
    return json.dumps(keep, sort_keys=True)


rule text_features:
    input:
        data=get_data_dir,
        clip=get_text_clip_input,
    output:
        directory("results/{ds}/text"),
    params:
        config=get_text_json,
        clip=get_text_clip_arg,
    log:
        "logs/text_features/{ds}.log",
    benchmark:
        "benchmarks/text_features/{ds}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/sgmn.yaml"
    shell:
        # the resolved config goes to a private temporary directory, removed on exit
        "(tmp=$(mktemp -d) && trap 'rm -rf \"$tmp\"' EXIT"
        " && sgmn resolve-config --json {params.config:q} --variant text_features --out \"$tmp/config.json\""
        " && sgmn text-features --config \"$tmp/config.json\" --data {input.data}"
        " --clip-weights {params.clip:q} --out {output} --threads {threads}) > {log} 2>&1"
