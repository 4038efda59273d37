# The SGMN suite's DAG. Run: snakemake --cores all   (default config: LPR-Synth on a CPU)
#                          snakemake --cores all --configfile workflow/config/smoke.yaml
from snakemake.utils import min_version

min_version("9.19")


configfile: "workflow/config/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/curves.smk"
include: "workflow/rules/fidelity.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        get_final_outputs(),


# Mechanism probes (workflow/config/probes.yaml): snakemake probes --cores all
rule probes:
    input:
        get_probe_outputs,


# Learning curves (workflow/config/curves.yaml): snakemake curves --cores all --configfile workflow/config/curves.yaml
rule curves:
    input:
        get_curve_outputs,


# Table 7 under the paper's and the official recipe (3 seeds each): snakemake fidelity --cores all
rule fidelity:
    input:
        rules.fidelity_table.output,
