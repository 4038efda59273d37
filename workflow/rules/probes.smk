# Mechanism probes (`snakemake probes`): each component on / off along its phenomenon's axis, on
# one generated dataset per axis value, from the main DAG's pretrained CLIP. The spec is the
# config's `probes` block (workflow/config/probes.yaml, also read when no probe is configured);
# the logic lives in sgmn.evaluate.probes (tested Python).
import re
import shlex

from sgmn.evaluate.probes import ARMS, probe_points, resolve_arm, spec_of

PROBE_SPEC = spec_of(config)
PROBE_POINTS = {(p.probe, p.point): p for p in probe_points(PROBE_SPEC)}
PROBE_MODELS = {
    (probe, arm): resolve_arm(config, PROBE_SPEC, probe, arm)
    for probe in PROBE_SPEC["probes"]
    for arm in ARMS
}
PROBE_SEEDS = PROBE_SPEC["seeds"]
PROBE_ROOT = f"results/{DATASET}/probes"


wildcard_constraints:
    probe="|".join(re.escape(p) for p in PROBE_SPEC["probes"]),
    point="|".join(sorted({re.escape(p.point) for p in PROBE_POINTS.values()})),
    arm="|".join(ARMS),


def _probe_model(wildcards):
    return PROBE_MODELS[(wildcards.probe, wildcards.arm)]


def _probe_has_text(probe, arm):
    return uses_text(PROBE_MODELS[(probe, arm)])


def get_probe_knobs(wildcards):
    """The point's generator overrides as `--set knob=JSON` arguments."""
    knobs = PROBE_POINTS[(wildcards.probe, wildcards.point)].knobs
    return " ".join(f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in knobs.items())


def get_probe_model_json(wildcards):
    """The model's full config; a change reruns only that probe's runs (params rerun trigger)."""
    return json.dumps(_probe_model(wildcards), sort_keys=True)


def get_probe_clip_input(wildcards):
    if _probe_model(wildcards)["model"]["pretrained"] == "pipeline":
        return f"results/{wildcards.ds}/clip/pretrained.pt"
    return []


def get_probe_clip_arg(wildcards):
    value = _probe_model(wildcards)["model"]["pretrained"]
    return f"results/{wildcards.ds}/clip/pretrained.pt" if value == "pipeline" else value


def get_probe_text_input(wildcards):
    """The point's text features when the model has the text branch, else nothing."""
    if _probe_has_text(wildcards.probe, wildcards.arm):
        return f"results/{wildcards.ds}/probes/{wildcards.probe}/{wildcards.point}/text"
    return []


def get_probe_text_arg(wildcards):
    text = get_probe_text_input(wildcards)
    return f"--text-features {text}" if text else ""


def get_probe_frame_store(wildcards):
    return frame_store_inputs(f"{PROBE_ROOT}/{wildcards.probe}/{wildcards.point}", _probe_model(wildcards))


def get_probe_frame_store_arg(wildcards):
    store = get_probe_frame_store(wildcards)
    return f"--frame-store {store[0]}" if store else ""


def get_probe_threads(wildcards):
    return _probe_model(wildcards)["train"]["threads"]


def get_probe_per_query(wildcards):
    return [
        f"{PROBE_ROOT}/{p.probe}/{p.point}/runs/{arm}/seed{seed}/per_query.parquet"
        for p in PROBE_POINTS.values()
        for arm in ARMS
        for seed in PROBE_SEEDS
    ]


def get_probe_subset_data(wildcards):
    """The datasets whose synth_meta.json defines the variant_in_gallery subset."""
    return [
        f"{PROBE_ROOT}/{p.probe}/{p.point}/data"
        for p in PROBE_POINTS.values()
        if "variant_in_gallery" in PROBE_SPEC["probes"][p.probe]["subsets"]
    ]


PROBE_FIGURES = [
    f"{PROBE_SPEC['figures']}/{probe}.{ext}" for probe in PROBE_SPEC["probes"] for ext in ("png", "pdf")
]


def get_probe_outputs(wildcards):
    """The `probes` target; the probes generate LPR-Synth, so a real-data config has none."""
    if config["dataset"]["path"] is not None or config["dataset"]["format"] != "lpr4m":
        raise ValueError(
            "the probes generate LPR-Synth datasets and start from the DAG's pretrained CLIP: "
            "run them with an LPR-Synth config (dataset.path null, format lpr4m)"
        )
    return [f"{PROBE_ROOT}/probes.csv", f"{PROBE_ROOT}/probes.md", *PROBE_FIGURES]


rule probe_synth:
    output:
        directory("results/{ds}/probes/{probe}/{point}/data"),
    params:
        preset=PROBE_SPEC["dataset"]["preset"],
        seed=PROBE_SPEC["dataset"]["seed"],
        knobs=get_probe_knobs,
    log:
        "logs/probe_synth/{ds}/{probe}/{point}.log",
    benchmark:
        "benchmarks/probe_synth/{ds}/{probe}/{point}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn synth --preset {params.preset} --seed {params.seed} --format lpr4m"
        " {params.knobs} --out {output} > {log} 2>&1"


rule probe_frame_store:
    input:
        "results/{ds}/probes/{probe}/{point}/data",
    output:
        directory("results/{ds}/probes/{probe}/{point}/frames_{size}"),
    wildcard_constraints:
        size=r"\d+",
    log:
        "logs/probe_frame_store/{ds}/{probe}/{point}/{size}.log",
    benchmark:
        "benchmarks/probe_frame_store/{ds}/{probe}/{point}/{size}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn frame-store --data {input} --size {wildcards.size} --out {output} > {log} 2>&1"


rule probe_resolve_config:
    output:
        "results/{ds}/probes/{probe}/configs/{arm}.json",
    params:
        config=get_probe_model_json,
    log:
        "logs/probe_resolve_config/{ds}/{probe}/{arm}.log",
    benchmark:
        "benchmarks/probe_resolve_config/{ds}/{probe}/{arm}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn resolve-config --json {params.config:q} --out {output} > {log} 2>&1"


rule probe_text_features:
    input:
        data="results/{ds}/probes/{probe}/{point}/data",
        clip=get_text_clip_input,
    output:
        directory("results/{ds}/probes/{probe}/{point}/text"),
    params:
        config=get_text_json,
        clip=get_text_clip_arg,
    log:
        "logs/probe_text_features/{ds}/{probe}/{point}.log",
    benchmark:
        "benchmarks/probe_text_features/{ds}/{probe}/{point}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/sgmn.yaml"
    shell:
        # as rule text_features: the resolved config in a private temporary directory
        "(tmp=$(mktemp -d) && trap 'rm -rf \"$tmp\"' EXIT"
        " && sgmn resolve-config --json {params.config:q} --variant text_features --out \"$tmp/config.json\""
        " && sgmn text-features --config \"$tmp/config.json\" --data {input.data}"
        " --clip-weights {params.clip:q} --out {output} --threads {threads}) > {log} 2>&1"


rule probe_train:
    input:
        config="results/{ds}/probes/{probe}/configs/{arm}.json",
        data="results/{ds}/probes/{probe}/{point}/data",
        clip=get_probe_clip_input,
        text=get_probe_text_input,
        frames=get_probe_frame_store,
    output:
        # ckpt/latest.pt stays undeclared: Snakemake must not delete it when a job fails
        "results/{ds}/probes/{probe}/{point}/runs/{arm}/seed{seed}/final.pt",
    params:
        clip=get_probe_clip_arg,
        text=get_probe_text_arg,
        frames=get_probe_frame_store_arg,
    log:
        "logs/probe_train/{ds}/{probe}/{point}/{arm}/seed{seed}.log",
    benchmark:
        "benchmarks/probe_train/{ds}/{probe}/{point}/{arm}/seed{seed}.tsv"
    threads: get_probe_threads
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn train --config {input.config} --seed {wildcards.seed} --data {input.data}"
        " --clip-weights {params.clip} --out $(dirname {output}) {params.text} {params.frames}"
        " --threads {threads} > {log} 2>&1"


rule probe_evaluate:
    input:
        checkpoint="results/{ds}/probes/{probe}/{point}/runs/{arm}/seed{seed}/final.pt",
        data="results/{ds}/probes/{probe}/{point}/data",
        config="results/{ds}/probes/{probe}/configs/{arm}.json",
        text=get_probe_text_input,
        frames=get_probe_frame_store,
    output:
        metrics="results/{ds}/probes/{probe}/{point}/runs/{arm}/seed{seed}/metrics.json",
        scores="results/{ds}/probes/{probe}/{point}/runs/{arm}/seed{seed}/scores.parquet",
        per_query="results/{ds}/probes/{probe}/{point}/runs/{arm}/seed{seed}/per_query.parquet",
    params:
        text=get_probe_text_arg,
        frames=get_probe_frame_store_arg,
    log:
        "logs/probe_evaluate/{ds}/{probe}/{point}/{arm}/seed{seed}.log",
    benchmark:
        "benchmarks/probe_evaluate/{ds}/{probe}/{point}/{arm}/seed{seed}.tsv"
    threads: get_probe_threads
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn evaluate --data {input.data} --checkpoint {input.checkpoint} --out {output.metrics}"
        " --scores-out {output.scores} --per-query-out {output.per_query} {params.text} {params.frames}"
        " --threads {threads} > {log} 2>&1"


rule probe_table:
    input:
        per_query=get_probe_per_query,
        data=get_probe_subset_data,
    output:
        csv=f"{PROBE_ROOT}/probes.csv",
        md=f"{PROBE_ROOT}/probes.md",
        figures=PROBE_FIGURES,
    params:
        # in the YAML's order (not sorted): the order of the probes and of each axis' values
        spec=json.dumps(PROBE_SPEC),
        root=PROBE_ROOT,
        figures=PROBE_SPEC["figures"],
    log:
        f"logs/probe_table/{DATASET}.log",
    benchmark:
        f"benchmarks/probe_table/{DATASET}.tsv"
    localrule: True
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn probes --spec-json {params.spec:q} --root {params.root} --out {output.csv}"
        " --figures {params.figures:q} > {log} 2>&1"
