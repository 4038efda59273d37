rule train:
    input:
        config="results/{ds}/configs/{variant}.json",
        data=get_data_dir,
        clip=get_clip_weights_input,
    output:
        # ckpt/latest.pt stays undeclared: Snakemake must not delete it when a job fails
        "results/{ds}/runs/{variant}/seed{seed}/final.pt",
    params:
        clip=get_clip_weights_arg,
    log:
        "logs/train/{ds}/{variant}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{ds}/{variant}/seed{seed}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn train --config {input.config} --seed {wildcards.seed} --data {input.data}"
        " --clip-weights {params.clip} --out $(dirname {output}) --threads {threads} > {log} 2>&1"
