"""Config schema: defaults, unknown keys and bad values named with file and line, variants."""
import json

import pytest

from sgmn import config as cfg
from sgmn.cli import main

REPO = cfg.REPO_ROOT


def test_default_and_smoke_configs_validate_and_fill_defaults():
    for name in ("default", "smoke"):
        c = cfg.load_config(REPO / "workflow" / "config" / f"{name}.yaml")
        assert c["train"]["margin"] == 0.2          # filled from the schema's default
        assert c["dataset"]["on_bad_line"] == "error"
        for variant in c["variants"]:
            cfg.resolve_variant(c, variant)


def test_unknown_key_names_file_line_and_allowed_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  clip: lpr-tiny-clip\ntrain:\n  steps: 3\n  learning_rate: 0.1\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_config(p)
    msg = str(err.value)
    assert f"{p}:5" in msg and "train.learning_rate" in msg and "allowed here" in msg and "lr" in msg


def test_out_of_range_value_names_file_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  frame_mask_prob: 1.5\n")
    with pytest.raises(cfg.ConfigError, match=rf"{p}:2: bad value for 'train.frame_mask_prob'"):
        cfg.load_config(p)


def test_bad_enum_value(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("dataset:\n  format: lpr5m\n")
    with pytest.raises(cfg.ConfigError, match="dataset.format"):
        cfg.load_config(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(cfg.ConfigError, match=str(p)):
        cfg.load_config(p)


def test_variant_overrides_are_validated(tmp_path):
    base = cfg.load_config(REPO / "workflow" / "config" / "default.yaml")
    variants = {"oops": {"overrides": {"train": {"stepz": 1}}}}
    with pytest.raises(cfg.ConfigError, match="train.stepz"):
        cfg.resolve_variant(base, "oops", variants)
    with pytest.raises(cfg.ConfigError, match="unknown variant"):
        cfg.resolve_variant(base, "nope", variants)


def test_variants_file_rejects_unknown_row_keys(tmp_path):
    p = tmp_path / "variants.yaml"
    p.write_text("variants:\n  a:\n    overides: {}\n")
    with pytest.raises(cfg.ConfigError, match=rf"{p}:2: variant 'a' has unknown keys"):
        cfg.load_variants(p)


def test_resolve_config_cli_round_trip(tmp_path):
    out = tmp_path / "v.json"
    assert main(["resolve-config", "--config", str(REPO / "workflow/config/smoke.yaml"),
                 "--variant", "clip_zeroshot", "--out", str(out)]) == 0
    resolved = json.loads(out.read_text())
    assert resolved["variant"] == "clip_zeroshot" and resolved["train"]["steps"] == 0
    assert "seeds" not in resolved and "variants" not in resolved
    again = cfg.load_config(out)  # a resolved config validates as is
    assert again == resolved


def _dag_resolved_configs(tmp_path) -> dict[str, dict]:
    """What the DAG's resolve_config jobs write: their `--json` parameter (from a dry run),
    passed through `sgmn resolve-config --json` as the rule does."""
    import shlex
    import subprocess
    import sys
    plan = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(REPO / "Snakefile"),
         "--directory", str(tmp_path / "dag"), "--configfile", str(REPO / "workflow/config/default.yaml")],
        capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    out = {}
    for line in plan.stdout.splitlines():
        command = line.strip().removeprefix("Shell command:").strip()
        if command.startswith("sgmn resolve-config --json"):
            argv = shlex.split(command)
            parts = argv[argv.index("--out") + 1].split("/")   # results/{ds}/configs/{variant}.json
            key = f"{parts[-3]}/{parts[-1].removesuffix('.json')}"
            dest = tmp_path / f"dag_{key.replace('/', '_')}.json"
            assert main(["resolve-config", "--json", argv[argv.index("--json") + 1], "--out", str(dest)]) == 0
            out[key] = json.loads(dest.read_text())
    return out


def test_cli_dag_and_bench_resolve_every_variant_identically(tmp_path):
    from sgmn.bench import bench_config
    default = REPO / "workflow/config/default.yaml"
    resolved = _dag_resolved_configs(tmp_path)
    base = cfg.load_config(default)
    variants, table2 = base["variants"], cfg.table2_config(base)
    dag = {k.split("/")[1]: v for k, v in resolved.items() if k.startswith("lpr_synth/")}
    assert sorted(dag) == sorted(variants)
    # Table 2's runs: the main config with table2's dataset and overrides, resolved the same way
    mf = {k.split("/")[1]: v for k, v in resolved.items() if k.startswith("mf_synth/")}
    assert sorted(mf) == sorted(table2["variants"]) and len(resolved) == len(dag) + len(mf)
    for variant, got in mf.items():
        assert got == cfg.resolve_variant(table2, variant), variant
        assert got["dataset"]["format"] == "movingfashion" and got.get("sgmn", {"te": False})["te"] is False
    for variant in variants:
        dest = tmp_path / f"cli_{variant}.json"
        assert main(["resolve-config", "--config", str(default), "--variant", variant, "--out", str(dest)]) == 0
        cli = json.loads(dest.read_text())
        assert cli == dag[variant], variant
        bench = bench_config("tiny", variant, "cpu")
        # the bench's own settings (one process, its device, no loader workers), then identical
        assert (bench["train"]["processes"], bench["train"]["device"], bench["train"]["num_workers"]) == (1, "cpu", 0)
        for key in ("processes", "device", "num_workers"):
            bench["train"][key] = cli["train"][key]
        assert bench == cli, variant


def test_official_variant_resolves_to_the_official_recipe_from_the_cli(tmp_path):
    """Regression: `fidelity: official` in a variant row must win over the paper values that a
    resolved base config would carry (the CLI once printed beta1 0.7 under an official label)."""
    from sgmn.fidelity import DIFFERENCES
    dest = tmp_path / "official.json"
    assert main(["resolve-config", "--config", str(REPO / "workflow/config/default.yaml"),
                 "--variant", "sgmn_official", "--out", str(dest)]) == 0
    resolved = json.loads(dest.read_text())
    assert resolved["fidelity"] == "official"
    assert resolved["sgmn"]["beta1"] == 1.0 and resolved["sgmn"]["triplet"] == "distance_weighted"
    assert resolved["train"]["optimizer"] == "bertadam" and resolved["train"]["clip_lr_scale"] == 0.001
    for diff in DIFFERENCES:
        section, key = diff.key
        assert resolved[section][key] == diff.official, diff.key


def test_resolve_variant_refuses_a_resolved_config(tmp_path):
    run = cfg.resolve_variant(cfg.load_config(REPO / "workflow/config/default.yaml"), "sgmn")
    with pytest.raises(cfg.ConfigError, match="unresolved base config"):
        cfg.resolve_variant(run, "sgmn_official")


def test_cli_reports_bad_config_with_exit_code_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  nope: 1\n")
    assert main(["resolve-config", "--config", str(p), "--out", str(tmp_path / "x.json")]) == 2
    assert f"{p}:2: unknown key 'train.nope'" in capsys.readouterr().err


def test_every_schema_key_has_a_description_and_a_default_and_nothing_else():
    """YAML flow mappings cut an unquoted comma short (a stray key); every key is documented."""
    keywords = {"description", "type", "enum", "default", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "multipleOf", "maxItems", "uniqueItems", "anyOf", "pattern", "properties", "additionalProperties", "items", "minItems", "$schema", "title"}

    def walk(node, path):
        assert set(node) <= keywords, f"{path}: unexpected keys {sorted(set(node) - keywords)}"
        for name, sub in node.get("properties", {}).items():
            assert isinstance(sub.get("description"), str) and sub["description"].strip(), f"{path}.{name}"
            assert "default" in sub, f"{path}.{name} has no default"
            walk(sub, f"{path}.{name}")

    walk(cfg.load_schema(), "config")


@pytest.mark.parametrize("name", ["lpr4m", "movingfashion"])
def test_real_data_configs_are_the_papers_recipe(name):
    c = cfg.load_layered(name)
    assert c["dataset"]["format"] == name and c["dataset"]["path"]
    assert (c["model"]["clip"], c["model"]["pretrained"]) == ("ViT-B-32", "openai")
    assert (c["model"]["num_frames"], c["model"]["image_size"]) == (10, 224)
    t = c["train"]
    assert (t["batch_size"], t["lr"], t["triplet_warmup_steps"]) == (256, 3e-4, 0)
    assert t["batch_size"] % t["processes"] == 0
    for variant in c["variants"]:
        resolved = cfg.resolve_variant(c, variant)
        assert resolved["train"]["optimizer"] in ("adam", "bertadam")
        if name == "movingfashion":   # no text in MovingFashion: no row may ask for it
            assert resolved["sgmn"]["te"] is False, variant
    if name == "lpr4m":
        assert c["text"]["encoder"] == "chinese_clip"
        assert cfg.resolve_variant(c, "sgmn")["sgmn"]["te"] is True


def test_lpr4m_config_plans_on_a_real_format_root(tmp_path):
    """The real-data DAG: no synth and no CLIP pretraining, one text cache, every row trained."""
    import subprocess
    import sys
    fixture = REPO / "tests" / "fixtures" / "lpr4m_real_small"
    plan = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "workflow/config/lpr4m.yaml"), "--config", f"dataset={{path: {fixture}}}"],
        capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    jobs = {}
    for line in plan.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
            jobs[rule] = jobs.get(rule, 0) + 1
    n = len(cfg.load_layered("lpr4m")["variants"])
    # each train job also evaluates its run (`train --metrics-out`): no evaluate jobs
    assert jobs == {"text_features": 1, "resolve_config": n, "train": n,
                    "summarize": 1, "bench_methods": 1, "tables": 1, "diff": 1, "report_pages": 1, "all": 1,
                    **{f"figure_{f}": 1 for f in ("attention", "probes", "retrieval", "table4", "table5",
                                                  "table6", "training", "twins")}}, jobs
    assert "torchrun --standalone --nproc_per_node 8" in plan.stdout
