# The SGMN suite's DAG. Run: snakemake --cores all   (default config: LPR-Synth on a CPU)
#                          snakemake --cores all --configfile workflow/config/smoke.yaml
from snakemake.utils import min_version

min_version("9.19")


configfile: "workflow/config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        get_final_outputs(),
