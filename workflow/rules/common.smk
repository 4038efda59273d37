# Config validation and input functions; the logic lives in sgmn.config (tested Python).
import json

from snakemake.utils import validate

from sgmn.config import (coerce_yaml11_floats, load_variants, load_yaml, resolve_variant, table2_config,
                         uses_text, without_unset_index)
from sgmn.evaluate.curves import curve_variants
from sgmn.evaluate.fidelity_table import fidelity_variants

# Snakemake's YAML reader keeps the last of two equal keys silently (a section written twice
# resets its keys), and it reads 3e-4 as a string: read every config file again with the
# suite's strict loader first, and take its numbers
for _configfile in workflow.configfiles:
    coerce_yaml11_floats(config, load_yaml(_configfile)[0])
validate(config, "../../sgmn/schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
VARIANTS = load_variants(config["variants_file"])
# Every dataset of the DAG: the main one, and Table 2's second one when `table2.enabled`
# (sgmn.config.table2_config: the main config with table2's dataset, overrides and run matrix)
TABLE2 = table2_config(config)
CONFIGS = {DATASET: config}
if TABLE2 is not None:
    CONFIGS[TABLE2["dataset"]["name"]] = TABLE2


def _dag_index(cfg):
    """dataset.index.shards named: the runs read the index rule index builds in
    results/{name}/shard_index (dataset.index.path is for an index built by hand)."""
    index = cfg["dataset"]["index"]
    if index["shards"] and index["path"]:
        raise ValueError(f"dataset.index of '{cfg['dataset']['name']}': give shards (the DAG builds the index) "
                         "or path (an index built with `sgmn index`), not both")
    if index["shards"]:
        index["path"] = f"results/{cfg['dataset']['name']}/shard_index"


for _cfg in CONFIGS.values():
    _dag_index(_cfg)
# (dataset, variant) -> the variant's resolved config on that dataset
RESOLVED = {
    (ds, v): resolve_variant(cfg, v, VARIANTS, config["variants_file"])
    for ds, cfg in CONFIGS.items()
    for v in cfg["variants"]
}
# Table 2's zero-shot and fine-tuned rows start from main-dataset runs that the main run matrix
# may not list (e.g. the smoke config's): those runs are trained too
if TABLE2 is not None:
    for _role in ("zero_shot", "finetune"):
        _source = config["table2"][_role]["from"]
        if (DATASET, _source) not in RESOLVED:
            RESOLVED[DATASET, _source] = resolve_variant(config, _source, VARIANTS, config["variants_file"])
# the learning-curve runs (config `curves`, `snakemake curves`) go through the same rules
CURVE_RUNS = curve_variants(config, VARIANTS, config["variants_file"])
RESOLVED.update({(DATASET, v): c for v, c in CURVE_RUNS.items()})
# Table 7 under both recipes (`snakemake fidelity`): the paper rows and their *_official twins
FIDELITY_VARIANTS = fidelity_variants()
RESOLVED.update({(DATASET, v): resolve_variant(config, v, VARIANTS, config["variants_file"])
                 for v in FIDELITY_VARIANTS if (DATASET, v) not in RESOLVED and v in VARIANTS})
SEEDS = config["seeds"]

wildcard_constraints:
    ds="|".join(sorted(CONFIGS)),
    variant="|".join(sorted({v for _, v in RESOLVED})),
    seed=r"\d+",


def resolved(wildcards):
    """The resolved config of the job's (dataset, variant)."""
    return RESOLVED[wildcards.ds, wildcards.variant]


def get_final_outputs():
    outputs = [f"results/{DATASET}/summary.csv", f"results/{DATASET}/tables"]
    outputs += [f"results/{DATASET}/diff.md", f"results/{DATASET}/diff.json"]  # rule diff (report.smk)
    outputs += get_figure_outputs()  # figures/ (figures.smk) and the report's pages (rule report_pages)
    if config["dataset"]["path"] is None and config["dataset"]["format"] == "lpr4m":
        outputs.append(f"results/{DATASET}/data_stats.json")  # LPR-Synth only (synth_meta.json)
    if TABLE2 is not None:
        outputs.append(f"results/{TABLE2['dataset']['name']}/summary.csv")
    if config["download"]["url_lists"]:  # opt-in: rule download_report (workflow/rules/download.smk)
        outputs.append(f"{DOWNLOAD_DIR}/download_report.json")
    return outputs


def get_data_dir(wildcards):
    """A real dataset root, or the directory the synth rule writes."""
    return CONFIGS[wildcards.ds]["dataset"]["path"] or f"results/{wildcards.ds}/data"


def get_variant_json(wildcards):
    """The variant's full config; a change reruns only that variant (params rerun trigger)."""
    return json.dumps(resolved(wildcards), sort_keys=True)


def get_pretrain_json(wildcards):
    """Only the keys that shape the pretrained CLIP, so training changes do not redo it."""
    keep = {
        # frame_store only changes how frames are read, never what they hold (an unset index
        # is left out as in the runs' configs; a set one is the pretraining's way to its images)
        "dataset": {k: v for k, v in without_unset_index(config)["dataset"].items() if k != "frame_store"},
        "model": {k: config["model"][k] for k in ("clip", "image_size")},
        "pretrain": config["pretrain"],
        "train": {k: config["train"][k] for k in ("device", "precision", "num_workers")},
    }
    return json.dumps(keep, sort_keys=True)


def get_clip_weights_input(wildcards):
    """The pretrain_clip output when the variant starts from the DAG's CLIP (pretrained on the
    main dataset, for Table 2's runs too), else nothing."""
    if resolved(wildcards)["model"]["pretrained"] == "pipeline":
        return f"results/{DATASET}/clip/pretrained.pt"
    return []


def get_clip_weights_arg(wildcards):
    value = resolved(wildcards)["model"]["pretrained"]
    return f"results/{DATASET}/clip/pretrained.pt" if value == "pipeline" else value


def _table2_role(wildcards, role):
    """table2.zero_shot / table2.finetune when the job is that row of Table 2, else None."""
    if TABLE2 is None or wildcards.ds == DATASET:
        return None
    spec = config["table2"][role]
    return spec if wildcards.variant == spec["variant"] else None


def get_init_input(wildcards):
    """Table 2's fine-tuned row starts from the main dataset's run of table2.finetune.from."""
    spec = _table2_role(wildcards, "finetune")
    return f"results/{DATASET}/runs/{spec['from']}/seed{wildcards.seed}/final.pt" if spec else []


def get_init_arg(wildcards):
    init = get_init_input(wildcards)
    return f"--init-checkpoint {init}" if init else ""


def get_zero_shot_source(wildcards):
    """The main dataset's run that Table 2's zero-shot row evaluates as it is."""
    spec = _table2_role(wildcards, "zero_shot")
    if spec is None:
        raise ValueError(f"{wildcards.ds}/{wildcards.variant} is not table2.zero_shot's row")
    return f"results/{DATASET}/runs/{spec['from']}/seed{wildcards.seed}/final.pt"


def seeds_of(variant, ds=DATASET):
    """config.seeds_by_variant[variant] when set, else config.seeds (curves: their own; Table
    2's dataset: table2.seeds)."""
    if ds != DATASET:
        return CONFIGS[ds]["seeds"]
    if variant in CURVE_RUNS:
        return config["curves"]["seeds"]
    return config["seeds_by_variant"].get(variant, SEEDS)


def get_run_metrics(wildcards):
    return [
        f"results/{wildcards.ds}/runs/{variant}/seed{seed}/metrics.json"
        for variant in sorted(CONFIGS[wildcards.ds]["variants"])
        for seed in seeds_of(variant, wildcards.ds)
    ]


def get_table2_inputs(wildcards):
    """Table 2's metrics and per-query tables, read by the main dataset's tables rule."""
    if TABLE2 is None or wildcards.ds != DATASET:
        return []
    t2 = TABLE2["dataset"]["name"]
    runs = [f"results/{t2}/runs/{v}/seed{s}" for v in sorted(TABLE2["variants"]) for s in TABLE2["seeds"]]
    return [f"{r}/{name}" for r in runs for name in ("metrics.json", "per_query.parquet")]


def get_table2_arg(wildcards):
    return f"--table2-runs results/{TABLE2['dataset']['name']}/runs" if get_table2_inputs(wildcards) else ""


def get_text_input(wildcards):
    """The text feature cache when the variant has the text branch (sgmn.te), else nothing."""
    return f"results/{wildcards.ds}/text" if uses_text(resolved(wildcards)) else []


def frame_store_on(cfg=None):
    """dataset.frame_store, null resolved: on for generated LPR4M-layout data, off for a real root."""
    d = (cfg or config)["dataset"]
    on = d.get("frame_store")
    return d["path"] is None if on is None else on


def frame_store_inputs(base, run_config):
    """[the store under `base` at a run's input size] (rule frame_store), or [] without one."""
    return [f"{base}/frames_{run_config['model']['image_size']}"] if frame_store_on(run_config) else []


def get_index_input(wildcards):
    """The shard index the dataset's frames and images are read through (rule index, or one
    built by hand), as an input; [] for the plain layout."""
    path = CONFIGS[wildcards.ds]["dataset"]["index"]["path"]
    return [path] if path else []


def get_frame_store(wildcards):
    """The variant's frame store as an input (a list, empty without one)."""
    return frame_store_inputs(f"results/{wildcards.ds}", resolved(wildcards))


def get_frame_store_arg(wildcards):
    store = get_frame_store(wildcards)
    return f"--frame-store {store[0]}" if store else ""


def get_text_arg(wildcards):
    return f"--text-features results/{wildcards.ds}/text" if uses_text(resolved(wildcards)) else ""


def get_train_threads(wildcards):
    return resolved(wildcards)["train"]["threads"]
