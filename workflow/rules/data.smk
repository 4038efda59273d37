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
