# Config validation and input functions; the logic lives in sgmn.config (tested Python).
import json

from snakemake.utils import validate

from sgmn.config import coerce_yaml11_floats, load_variants, load_yaml, resolve_variant, uses_text
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
RESOLVED = {
    v: resolve_variant(config, v, VARIANTS, config["variants_file"])
    for v in config["variants"]
}
# the learning-curve runs (config `curves`, `snakemake curves`) go through the same rules
CURVE_RUNS = curve_variants(config, VARIANTS, config["variants_file"])
RESOLVED.update(CURVE_RUNS)
# Table 7 under both recipes (`snakemake fidelity`): the paper rows and their *_official twins
FIDELITY_VARIANTS = fidelity_variants()
RESOLVED.update({v: resolve_variant(config, v, VARIANTS, config["variants_file"])
                 for v in FIDELITY_VARIANTS if v not in RESOLVED and v in VARIANTS})
SEEDS = config["seeds"]

wildcard_constraints:
    ds=DATASET,
    variant="|".join(sorted(RESOLVED)),
    seed=r"\d+",


def get_final_outputs():
    outputs = [f"results/{DATASET}/summary.csv", f"results/{DATASET}/tables"]
    if config["dataset"]["path"] is None and config["dataset"]["format"] == "lpr4m":
        outputs.append(f"results/{DATASET}/data_stats.json")  # LPR-Synth only (synth_meta.json)
    return outputs


def get_data_dir(wildcards):
    """A real dataset root, or the directory the synth rule writes."""
    return config["dataset"]["path"] or f"results/{DATASET}/data"


def get_variant_json(wildcards):
    """The variant's full config; a change reruns only that variant (params rerun trigger)."""
    return json.dumps(RESOLVED[wildcards.variant], sort_keys=True)


def get_pretrain_json(wildcards):
    """Only the keys that shape the pretrained CLIP, so training changes do not redo it."""
    keep = {
        # frame_store only changes how frames are read, never what they hold
        "dataset": {k: v for k, v in config["dataset"].items() if k != "frame_store"},
        "model": {k: config["model"][k] for k in ("clip", "image_size")},
        "pretrain": config["pretrain"],
        "train": {k: config["train"][k] for k in ("device", "precision", "num_workers")},
    }
    return json.dumps(keep, sort_keys=True)


def _pretrained(variant):
    return RESOLVED[variant]["model"]["pretrained"]


def get_clip_weights_input(wildcards):
    """The pretrain_clip output when the variant starts from the DAG's CLIP, else nothing."""
    if _pretrained(wildcards.variant) == "pipeline":
        return f"results/{DATASET}/clip/pretrained.pt"
    return []


def get_clip_weights_arg(wildcards):
    value = _pretrained(wildcards.variant)
    return f"results/{DATASET}/clip/pretrained.pt" if value == "pipeline" else value


def seeds_of(variant):
    """config.seeds_by_variant[variant] when set, else config.seeds (curves: their own)."""
    if variant in CURVE_RUNS:
        return config["curves"]["seeds"]
    return config["seeds_by_variant"].get(variant, SEEDS)


def get_run_metrics(wildcards):
    return [
        f"results/{DATASET}/runs/{variant}/seed{seed}/metrics.json"
        for variant in sorted(config["variants"])
        for seed in seeds_of(variant)
    ]


def get_text_input(wildcards):
    """The text feature cache when the variant has the text branch (sgmn.te), else nothing."""
    return f"results/{DATASET}/text" if uses_text(RESOLVED[wildcards.variant]) else []


def frame_store_on(cfg=None):
    """dataset.frame_store, null resolved: on for generated LPR4M-layout data, off for a real root."""
    d = (cfg or config)["dataset"]
    on = d.get("frame_store")
    return (d["path"] is None if on is None else on) and d["format"] == "lpr4m"


def frame_store_inputs(base, run_config):
    """[the store under `base` at a run's input size] (rule frame_store), or [] without one."""
    return [f"{base}/frames_{run_config['model']['image_size']}"] if frame_store_on() else []


def get_frame_store(wildcards):
    """The variant's frame store as an input (a list, empty without one)."""
    return frame_store_inputs(f"results/{DATASET}", RESOLVED[wildcards.variant])


def get_frame_store_arg(wildcards):
    store = get_frame_store(wildcards)
    return f"--frame-store {store[0]}" if store else ""


def get_text_arg(wildcards):
    return f"--text-features results/{DATASET}/text" if uses_text(RESOLVED[wildcards.variant]) else ""


def get_train_threads(wildcards):
    return RESOLVED[wildcards.variant]["train"]["threads"]
