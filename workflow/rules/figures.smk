# Figures of the main dataset (`sgmn figures FIGURE`, sgmn/figures/): the paper's Figs. 5, 6 and 7b
# from the runs, Tables 4-6 as charts, the training curves and the probe figures, each as
# figures/{name}.png and .pdf and a report() output with its caption in workflow/report/. A run a
# figure compares is its input only when the config's run matrix has it; otherwise the figure
# draws it as "not run" (`--run VARIANT=-`), so a smaller config (smoke) still gets every figure.

FIGURES_DIR = "figures"
FIGURE_SEED = 0   # the qualitative figures show one run per variant
# paper figure -> the variants it compares, in the order sgmn.figures expects
FIGURE_RUNS = {
    "fig5_retrieval": ("sgmn", "gra_only"),                            # Fig. 5: SGMN vs GRA, top-3
    "fig6_attention": ("gra_only", "t7_te", "sgmn_wo_te", "sgmn"),     # Fig. 6: pairs w/o, with TE
    "fig7b_twins": ("t7_te_tmc_gci", "sgmn"),                          # Fig. 7b: w/o, with SMF
}
FIGURE_NAMES = ("fig5_retrieval", "fig6_attention", "fig7b_twins", "table4_subsets", "table5_beta",
                "table6_graphs", "training_curves", "probes_overview")
FIGURE_CATEGORY = "Figures"
QUALITATIVE = "Qualitative (paper Figs. 5-7)"
TABLE_CHARTS = "Tables 4-6 as charts"


def get_figure_outputs():
    """Every figure (PNG and PDF) and the report's HTML pages of the tables and the diff."""
    pages = [f"results/{DATASET}/report/{name}.html" for name in ("tables", "diff")]
    return [f"{FIGURES_DIR}/{name}.{ext}" for name in FIGURE_NAMES for ext in ("png", "pdf")] + pages


def _figure_run_dir(variant):
    """The main dataset's run of `variant` at FIGURE_SEED, or None when the config does not run it."""
    if variant in config["variants"] and FIGURE_SEED in seeds_of(variant):
        return f"results/{DATASET}/runs/{variant}/seed{FIGURE_SEED}"
    return None


def get_figure_run_files(figure, names):
    """Input function: the files `names` of each run `figure` compares that the config runs."""

    def files(wildcards):
        dirs = [_figure_run_dir(v) for v in FIGURE_RUNS[figure]]
        return [f"{d}/{name}" for d in dirs if d is not None for name in names]

    return files


def get_figure_run_args(figure):
    """Params function: `--run VARIANT=RUN_DIR` for each run (`VARIANT=-` when not run)."""

    def args(wildcards):
        return " ".join(f"--run {v}={_figure_run_dir(v) or '-'}" for v in FIGURE_RUNS[figure])

    return args


def get_main_data():
    return config["dataset"]["path"] or f"results/{DATASET}/data"


def get_training_checkpoints(wildcards):
    """final.pt of every (variant, seed) of the main run matrix; train_log.jsonl lies beside it."""
    return [f"results/{DATASET}/runs/{v}/seed{s}/final.pt" for v in sorted(config["variants"]) for s in seeds_of(v)]


def get_training_run_dirs(wildcards):
    return " ".join(os.path.dirname(p) for p in get_training_checkpoints(wildcards))


def get_probe_figure_args(wildcards):
    """`--probe NAME=PNG` for each configured probe (rule probe_table's figures)."""
    return " ".join(f"--probe {p}={PROBE_SPEC['figures']}/{p}.png" for p in PROBE_SPEC["probes"])


def get_probe_figure_stamps(wildcards):
    """Size and mtime of each probe figure that exists: a params rerun trigger. The figures are
    not inputs, so that `all` never pulls in the probes' training runs (`snakemake probes`)."""
    stamps = {}
    for probe in PROBE_SPEC["probes"]:
        path = f"{PROBE_SPEC['figures']}/{probe}.png"
        if os.path.exists(path):
            st = os.stat(path)
            stamps[path] = [st.st_size, st.st_mtime_ns]
    return json.dumps(stamps, sort_keys=True)


rule figure_retrieval:
    input:
        data=get_main_data(),
        runs=get_figure_run_files("fig5_retrieval", ["scores.parquet"]),
    output:
        png=report(
            f"{FIGURES_DIR}/fig5_retrieval.png",
            caption="../report/fig5_retrieval.rst",
            category=FIGURE_CATEGORY,
            subcategory=QUALITATIVE,
            labels={"figure": "Fig. 5", "shows": "top-3 shop images, SGMN vs GRA"},
        ),
        pdf=f"{FIGURES_DIR}/fig5_retrieval.pdf",
    params:
        runs=get_figure_run_args("fig5_retrieval"),
        format=config["dataset"]["format"],
    log:
        "logs/figures/fig5_retrieval.log",
    benchmark:
        "benchmarks/figures/fig5_retrieval.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures retrieval --data {input.data} --format {params.format} {params.runs}"
        " --out {output.png} > {log} 2>&1"


rule figure_attention:
    input:
        data=get_main_data(),
        runs=get_figure_run_files("fig6_attention", ["final.pt", "per_query.parquet"]),
    output:
        png=report(
            f"{FIGURES_DIR}/fig6_attention.png",
            caption="../report/fig6_attention.rst",
            category=FIGURE_CATEGORY,
            subcategory=QUALITATIVE,
            labels={"figure": "Fig. 6", "shows": "CLS attention without / with TE"},
        ),
        pdf=f"{FIGURES_DIR}/fig6_attention.pdf",
    params:
        runs=get_figure_run_args("fig6_attention"),
        format=config["dataset"]["format"],
    log:
        "logs/figures/fig6_attention.log",
    benchmark:
        "benchmarks/figures/fig6_attention.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/sgmn.yaml"
    shell:
        "sgmn figures attention --data {input.data} --format {params.format} {params.runs}"
        " --threads {threads} --out {output.png} > {log} 2>&1"


rule figure_twins:
    input:
        data=get_main_data(),
        runs=get_figure_run_files("fig7b_twins", ["scores.parquet"]),
    output:
        png=report(
            f"{FIGURES_DIR}/fig7b_twins.png",
            caption="../report/fig7b_twins.rst",
            category=FIGURE_CATEGORY,
            subcategory=QUALITATIVE,
            labels={"figure": "Fig. 7b", "shows": "near-twin scores without / with SMF"},
        ),
        pdf=f"{FIGURES_DIR}/fig7b_twins.pdf",
    params:
        runs=get_figure_run_args("fig7b_twins"),
        format=config["dataset"]["format"],
    log:
        "logs/figures/fig7b_twins.log",
    benchmark:
        "benchmarks/figures/fig7b_twins.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures twins --data {input.data} --format {params.format} {params.runs}"
        " --out {output.png} > {log} 2>&1"


rule figure_table4:
    input:
        tables=f"results/{DATASET}/tables",
    output:
        png=report(
            f"{FIGURES_DIR}/table4_subsets.png",
            caption="../report/table4_subsets.rst",
            category=FIGURE_CATEGORY,
            subcategory=TABLE_CHARTS,
            labels={"figure": "Table 4", "shows": "R@1 by subset"},
        ),
        pdf=f"{FIGURES_DIR}/table4_subsets.pdf",
    log:
        "logs/figures/table4_subsets.log",
    benchmark:
        "benchmarks/figures/table4_subsets.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures table4 --table {input.tables}/table4.csv --out {output.png} > {log} 2>&1"


rule figure_table5:
    input:
        tables=f"results/{DATASET}/tables",
    output:
        png=report(
            f"{FIGURES_DIR}/table5_beta.png",
            caption="../report/table5_beta.rst",
            category=FIGURE_CATEGORY,
            subcategory=TABLE_CHARTS,
            labels={"figure": "Table 5", "shows": "R@1 against beta1"},
        ),
        pdf=f"{FIGURES_DIR}/table5_beta.pdf",
    log:
        "logs/figures/table5_beta.log",
    benchmark:
        "benchmarks/figures/table5_beta.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures table5 --table {input.tables}/table5.csv --out {output.png} > {log} 2>&1"


rule figure_table6:
    input:
        tables=f"results/{DATASET}/tables",
    output:
        png=report(
            f"{FIGURES_DIR}/table6_graphs.png",
            caption="../report/table6_graphs.rst",
            category=FIGURE_CATEGORY,
            subcategory=TABLE_CHARTS,
            labels={"figure": "Table 6", "shows": "R@1 by graph combination"},
        ),
        pdf=f"{FIGURES_DIR}/table6_graphs.pdf",
    log:
        "logs/figures/table6_graphs.log",
    benchmark:
        "benchmarks/figures/table6_graphs.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures table6 --table {input.tables}/table6.csv --out {output.png} > {log} 2>&1"


rule figure_training:
    input:
        get_training_checkpoints,
    output:
        png=report(
            f"{FIGURES_DIR}/training_curves.png",
            caption="../report/training_curves.rst",
            category=FIGURE_CATEGORY,
            subcategory="Training and probes",
            labels={"figure": "training curves", "shows": "loss against step, every run"},
        ),
        pdf=f"{FIGURES_DIR}/training_curves.pdf",
    params:
        runs=get_training_run_dirs,
    log:
        "logs/figures/training_curves.log",
    benchmark:
        "benchmarks/figures/training_curves.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures training --run-dir {params.runs} --out {output.png} > {log} 2>&1"


rule figure_probes:
    output:
        png=report(
            f"{FIGURES_DIR}/probes_overview.png",
            caption="../report/probes_overview.rst",
            category=FIGURE_CATEGORY,
            subcategory="Training and probes",
            labels={"figure": "probes", "shows": "each component on vs off (snakemake probes)"},
        ),
        pdf=f"{FIGURES_DIR}/probes_overview.pdf",
    params:
        probes=get_probe_figure_args,
        stamps=get_probe_figure_stamps,
    log:
        "logs/figures/probes_overview.log",
    benchmark:
        "benchmarks/figures/probes_overview.tsv"
    localrule: True
    conda:
        "../envs/figures.yaml"
    shell:
        "sgmn figures probes {params.probes} --out {output.png} > {log} 2>&1"
