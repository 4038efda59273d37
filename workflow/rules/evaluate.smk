import os


# A checkpoint that no training job of this DAG evaluates: Table 2's zero-shot row (a copy of a
# main-dataset run). Trained runs are evaluated inside rule train.
rule evaluate:
    wildcard_constraints:
        variant=config["table2"]["zero_shot"]["variant"],
    input:
        checkpoint="results/{ds}/runs/{variant}/seed{seed}/final.pt",
        data=get_data_dir,
        # the config too, so that a config change reaches the metrics even when final.pt is gone
        config="results/{ds}/configs/{variant}.json",
        text=get_text_input,
        frames=get_frame_store,
        index=get_index_input,
    output:
        metrics="results/{ds}/runs/{variant}/seed{seed}/metrics.json",
        scores="results/{ds}/runs/{variant}/seed{seed}/scores.parquet",
        per_query="results/{ds}/runs/{variant}/seed{seed}/per_query.parquet",
    log:
        "logs/evaluate/{ds}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{ds}/{variant}/seed{seed}.tsv"
    params:
        text=get_text_arg,
        frames=get_frame_store_arg,
    threads: get_train_threads
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn evaluate --data {input.data} --checkpoint {input.checkpoint} --out {output.metrics}"
        " --scores-out {output.scores} --per-query-out {output.per_query} {params.text} {params.frames}"
        " --threads {threads} > {log} 2>&1"


rule summarize:
    input:
        get_run_metrics,
    output:
        "results/{ds}/summary.csv",
    log:
        "logs/summarize/{ds}.log",
    benchmark:
        "benchmarks/summarize/{ds}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn summarize --metrics {input} --out {output} > {log} 2>&1"


def get_run_per_query(wildcards):
    """The per-query tables beside the runs' metrics (for the paired tests)."""
    return [p.replace("/metrics.json", "/per_query.parquet") for p in get_run_metrics(wildcards)]


# the published tables of the checkout, relative to the working directory
PAPER_DIR = os.path.relpath(os.path.join(workflow.basedir, "workflow", "paper"))


rule tables:
    input:
        metrics=get_run_metrics,
        per_query=get_run_per_query,
        paper=expand(os.path.join(PAPER_DIR, "table{n}.csv"), n=(1, 2, 3, 4, 5, 6, 7)),
        bench="results/{ds}/bench",
        table2=get_table2_inputs,
    output:
        directory("results/{ds}/tables"),
    params:
        # the whole top-level config (seeds, seeds_by_variant, variants, dataset)
        config=lambda wildcards: json.dumps(config, sort_keys=True),
        # not on the command line: a rerun trigger when a variant's `paper` rows change
        paper_rows=lambda wildcards: json.dumps(
            {v: VARIANTS[v].get("paper") for c in CONFIGS.values() for v in c["variants"]}, sort_keys=True
        ),
        table2=get_table2_arg,
        variants_file=config["variants_file"],
        paper_dir=PAPER_DIR,
        runs="results/{ds}/runs",
    log:
        "logs/tables/{ds}.log",
    benchmark:
        "benchmarks/tables/{ds}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn tables --runs {params.runs} --config-json {params.config:q} --variants-file {params.variants_file:q}"
        " --paper-dir {params.paper_dir:q} --bench {input.bench} {params.table2} --out {output} > {log} 2>&1"


rule bench_methods:
    """Table 3's measurements: per-query inference time and parameters of every registered
    method at the tiny (CPU default) and the paper's (ViT-B/32, 224 px, 10 frames) shapes. It
    takes both cores, so no other job disturbs the timing."""
    output:
        directory("results/{ds}/bench"),
    log:
        "logs/bench_methods/{ds}.log",
    benchmark:
        "benchmarks/bench_methods/{ds}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    params:
        scales=lambda wc: " ".join(f"--scale {s}" for s in config["bench"]["scales"]),
        methods=lambda wc: " ".join(config["bench"]["methods"]) or "all",
        repeats=config["bench"]["repeats"],
        device=config["bench"]["device"],
    shell:
        "sgmn bench --methods {params.methods} --inference-only {params.scales} --repeats {params.repeats}"
        " --device {params.device} --threads {threads} --out {output} > {log} 2>&1"
