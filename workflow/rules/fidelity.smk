# Table 7 under both recipes (`snakemake fidelity`, outside the default run): rows A-E with
# fidelity paper (the default run's) and official (the *_official rows of the variants file),
# three seeds each, trained and evaluated by the main rules. Logic: sgmn.evaluate.fidelity_table.
from sgmn.evaluate.fidelity_table import SEEDS as FIDELITY_SEEDS


def get_fidelity_per_query(wildcards):
    missing = [v for v in FIDELITY_VARIANTS if v not in VARIANTS]
    if missing:
        raise ValueError(f"snakemake fidelity needs the variants {missing} in {config['variants_file']}")
    return [
        f"results/{DATASET}/runs/{variant}/seed{seed}/per_query.parquet"
        for variant in FIDELITY_VARIANTS
        for seed in FIDELITY_SEEDS
    ]


rule fidelity_table:
    input:
        get_fidelity_per_query,
    output:
        table=f"results/{DATASET}/fidelity/table7_fidelity.csv",
        tests=f"results/{DATASET}/fidelity/paired_tests.csv",
        md=f"results/{DATASET}/fidelity/fidelity.md",
    params:
        runs=f"results/{DATASET}/runs",
        seeds=" ".join(str(s) for s in FIDELITY_SEEDS),
    log:
        f"logs/fidelity_table/{DATASET}.log",
    benchmark:
        f"benchmarks/fidelity_table/{DATASET}.tsv"
    localrule: True
    conda:
        "../envs/tables.yaml"
    shell:
        "sgmn fidelity-table --runs {params.runs} --seeds {params.seeds} --out $(dirname {output.table})"
        " > {log} 2>&1"
