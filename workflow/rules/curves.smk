# Learning curves (`snakemake curves`): R@1 against train.steps; the runs are ordinary variants
# (CURVE_RUNS in common.smk) trained and evaluated by the main rules. Logic: sgmn.evaluate.curves.


def get_curve_metrics(wildcards):
    return [
        f"results/{DATASET}/runs/{name}/seed{seed}/metrics.json"
        for name in sorted(CURVE_RUNS)
        for seed in config["curves"]["seeds"]
    ]


def get_curve_outputs(wildcards):
    if not CURVE_RUNS:
        raise ValueError(
            "no learning-curve runs configured: snakemake curves --configfile workflow/config/curves.yaml"
        )
    fig = config["curves"]["figure"]
    return [f"results/{DATASET}/curves.csv", f"{fig}.png", f"{fig}.pdf"]


rule curve_table:
    input:
        get_curve_metrics,
    output:
        table=f"results/{DATASET}/curves.csv",
        png=config["curves"]["figure"] + ".png",
        pdf=config["curves"]["figure"] + ".pdf",
    params:
        spec=lambda wildcards: json.dumps(config["curves"], sort_keys=True),
        runs=f"results/{DATASET}/runs",
        figure=config["curves"]["figure"],
        margin=config["train"]["margin"],
    log:
        f"logs/curve_table/{DATASET}.log",
    benchmark:
        f"benchmarks/curve_table/{DATASET}.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn curves --runs {params.runs} --spec-json {params.spec:q} --out {output.table}"
        " --figure {params.figure} --margin {params.margin} > {log} 2>&1"
