# Cheap statistics of a generated dataset, no training (sgmn.evaluate.data_stats): motion
# concentration on the sold box, visibility, in-batch near twins, text-only and chance R@1.
# Synthetic LPR4M-layout data only (it reads synth_meta.json); get_final_outputs asks for it then.


rule data_stats:
    input:
        data=get_data_dir,
        text="results/{ds}/text",
    output:
        "results/{ds}/data_stats.json",
    params:
        batch_size=config["train"]["batch_size"],
    log:
        "logs/data_stats/{ds}.log",
    benchmark:
        "benchmarks/data_stats/{ds}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn data-stats --data {input.data} --text-features {input.text}"
        " --batch-size {params.batch_size} --out {output} > {log} 2>&1"
