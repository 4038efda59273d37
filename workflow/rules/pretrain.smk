rule pretrain_clip:
    input:
        data=get_data_dir,
        index=get_index_input,
    output:
        weights="results/{ds}/clip/pretrained.pt",
        config="results/{ds}/clip/pretrain_config.json",
    params:
        config=get_pretrain_json,
    log:
        "logs/pretrain_clip/{ds}.log",
    benchmark:
        "benchmarks/pretrain_clip/{ds}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "(sgmn resolve-config --json {params.config:q} --variant pretrain --out {output.config}"
        " && sgmn pretrain-clip --config {output.config} --data {input.data}"
        " --out {output.weights} --threads {threads}) > {log} 2>&1"
