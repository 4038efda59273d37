rule evaluate:
    input:
        checkpoint="results/{ds}/runs/{variant}/seed{seed}/final.pt",
        data=get_data_dir,
        # the config too, so that a config change reaches the metrics even when final.pt is gone
        config="results/{ds}/configs/{variant}.json",
        text=get_text_input,
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
    threads: get_train_threads
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn evaluate --data {input.data} --checkpoint {input.checkpoint} --out {output.metrics}"
        " --scores-out {output.scores} --per-query-out {output.per_query} {params.text} --threads {threads}"
        " > {log} 2>&1"


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
