"""Configuration: YAML files validated against one JSON schema, and the variant matrix.

The schema (`sgmn/schemas/config.schema.yaml`) gives every key a description and a default
and forbids unknown keys. Snakemake validates the top-level config with it; the CLI validates
every resolved variant config with the same file, so a mistyped key or an out-of-range value
fails in both places with a message naming the key and, for YAML files, the file and line.
"""
from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import yaml

from sgmn.data.jsonfile import DuplicateKey, no_duplicate_keys
from sgmn.fidelity import apply_fidelity

from sgmn.paths import REPO_ROOT, SCHEMA_PATH, VARIANTS_PATH  # noqa: F401  (re-exported)
RUN_MATRIX_KEYS = ("variants", "seeds", "seeds_by_variant", "variants_file", "probes", "curves",
                   "bench", "table2", "download")  # the DAG's keys, not one run's config


class ConfigError(ValueError):
    """A configuration that does not satisfy the schema; the message says where and why."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The schema as a fresh dict (callers may change it). Parsed once per file version:
    resolving a variant reads it several times, and the DAG resolves every variant at start."""
    if not path.exists():
        raise ConfigError(f"config schema not found at {path} (a broken install: reinstall the sgmn package)")
    stat = Path(path).stat()
    return copy.deepcopy(_parsed_schema(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _parsed_schema(path: str, mtime_ns: int, size: int) -> dict:
    return yaml_load(Path(path).read_text())


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last
    silently, so a section written twice would reset its keys) and reads 3e-4 as a number
    (YAML 1.1 needs a dot: `3.0e-4`; YAML 1.2 and JSON do not)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} occurs twice (first at line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_load(text: str):
    """YAML with StrictLoader (duplicate keys rejected, 3e-4 a float)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def coerce_yaml11_floats(config: dict, strict: dict) -> dict:
    """Where a YAML 1.1 reader (Snakemake's) left `3e-4` a string and StrictLoader read the same
    file's value as a number, put the number into `config` (in place; returns it)."""
    for key, value in strict.items():
        if key not in config:
            continue
        if isinstance(value, dict) and isinstance(config[key], dict):
            coerce_yaml11_floats(config[key], value)
        elif isinstance(value, float) and isinstance(config[key], str):
            try:
                if float(config[key]) == value:
                    config[key] = value
            except ValueError:
                pass
    return config


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path of a YAML mapping to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                walk(value, path)

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def load_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """Read a YAML mapping; syntax errors name the file and line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of config keys, got {type(data).__name__}")
    return data, _key_lines(text)


def _fill_defaults_validator():
    """A Draft 2020-12 validator that fills in `default`s while validating (as Snakemake does)."""
    base = jsonschema.Draft202012Validator
    validate_props = base.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, props, instance, schema)

    return jsonschema.validators.extend(base, {"properties": properties})


def validate(config: dict, source: str = "config", key_lines: dict | None = None,
             schema: dict | None = None) -> dict:
    """Validate `config` (a copy is returned with defaults filled in) or raise ConfigError."""
    schema = schema or load_schema()
    filled = copy.deepcopy(config)
    validator = _fill_defaults_validator()(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if not errors:
        return filled
    messages = []
    for err in errors:
        path = tuple(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            # name the offending key itself, and list what is allowed there
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            for key in extra:
                line = (key_lines or {}).get(path + (key,))
                where = f"{source}:{line}" if line else source
                dotted = ".".join(path + (key,))
                messages.append(f"{where}: unknown key '{dotted}'; allowed here: {', '.join(allowed)}")
            continue
        line = (key_lines or {}).get(path)
        where = f"{source}:{line}" if line else source
        dotted = ".".join(path) or "<top level>"
        messages.append(f"{where}: bad value for '{dotted}': {err.message}")
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))


def load_config(path: str | Path) -> dict:
    """Load and validate a YAML config, or a resolved variant config (JSON, with `variant`).

    A YAML config is validated but not resolved: its fidelity-dependent keys stay null until
    `resolve_variant` (or `resolve_run_config`) fills them, after a variant's overrides (which
    may change `fidelity`) are merged. A resolved JSON config comes back as it was written.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=no_duplicate_keys)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        except DuplicateKey as err:
            raise ConfigError(f"{path}: key {err.args[0]!r} occurs twice in one JSON object") from None
        lines = None
    else:
        data, lines = load_yaml(path)
    if "variant" in data:
        return revalidate_resolved(data, str(path), lines)
    return validate(data, str(path), lines)


def revalidate_resolved(data: dict, source: str, key_lines: dict | None = None) -> dict:
    """A resolved variant config (`variant` set), validated again and complete as
    `resolve_variant` wrote it: no run-matrix keys, no other method's section, no unset
    dataset.index."""
    run_keys = {k: data[k] for k in ("variant", "seed") if k in data}
    config = apply_fidelity(validate(strip_run_keys(data), source, key_lines))
    return {**without_unset_index(without_other_methods(without_run_matrix(config))), **run_keys}


def resolve_run_config(config: dict) -> dict:
    """A config ready to run: a resolved variant config as is; a base config (a YAML given
    directly to a command) resolved on its own, with no variant's overrides."""
    if "variant" in config:
        return config
    return apply_fidelity(without_run_matrix(validate(config)))


def deep_merge(base: dict, overrides: dict) -> dict:
    """Return base updated recursively with overrides (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_layered(*names: str, overrides: dict | None = None) -> dict:
    """workflow/config/default.yaml updated by each named config (e.g. "smoke", "lpr4m") and then
    `overrides`, validated: the config Snakemake runs with `--configfile workflow/config/<name>.yaml`."""
    config_dir = REPO_ROOT / "workflow" / "config"
    config, _ = load_yaml(config_dir / "default.yaml")
    for name in names:
        config = deep_merge(config, load_yaml(config_dir / f"{name}.yaml")[0])
    return validate(deep_merge(config, overrides or {}))


def without_run_matrix(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RUN_MATRIX_KEYS}


def load_variants(path: str | Path = VARIANTS_PATH) -> dict[str, dict]:
    """The ablation matrix: variant id -> {description, paper, overrides}.

    A relative path that does not exist from the working directory is taken relative to the
    suite's checkout (so `snakemake --directory elsewhere` finds the default matrix).
    """
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"variants file {path} not found")
    stat = path.stat()
    return copy.deepcopy(_checked_variants(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _checked_variants(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    """load_variants' parse and checks, once per file version (every resolve_variant reads it)."""
    path = Path(path)
    data, lines = load_yaml(path)
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: expected a non-empty mapping under 'variants'")
    allowed = {"description", "paper", "overrides"}
    for vid, row in variants.items():
        line = lines.get(("variants", vid))
        where = f"{path}:{line}" if line else str(path)
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: variant '{vid}' must be a mapping")
        extra = set(row) - allowed
        if extra:
            raise ConfigError(f"{where}: variant '{vid}' has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
        if not isinstance(row.get("overrides", {}), dict):
            raise ConfigError(f"{where}: variant '{vid}': overrides must be a mapping")
    return variants


def resolve_variant(config: dict, variant: str, variants: dict[str, dict] | None = None,
                    variants_path: str | Path = VARIANTS_PATH) -> dict:
    """The full, validated config of one variant: base config + the variant's overrides.

    The one resolution path of the CLI, the DAG, the bench, the curves and the probes: the
    variant's overrides are merged into the *unresolved* base config (fidelity-dependent keys
    still null unless set explicitly), then `apply_fidelity` runs once, so a variant that sets
    `fidelity: official` gets every official value. A base config that was resolved already
    (a run config, `variant` set) is refused: its paper values would pass as explicit choices.
    """
    if "variant" in config:
        raise ConfigError(f"resolve_variant needs an unresolved base config, got the resolved config "
                          f"of variant '{config['variant']}'")
    variants = variants if variants is not None else load_variants(variants_path)
    if variant not in variants:
        raise ConfigError(f"unknown variant '{variant}'; known: {', '.join(sorted(variants))}")
    merged = deep_merge(config, variants[variant].get("overrides") or {})
    merged.pop("variants", None)
    merged.pop("seeds", None)
    resolved = apply_fidelity(validate(merged, f"{variants_path} (variant '{variant}')"))
    resolved = without_unset_index(without_other_methods(without_run_matrix(resolved)))
    resolved["variant"] = variant
    return resolved


def without_other_methods(config: dict) -> dict:
    """The config without the sections of the methods it does not run (a run's config holds its
    own method's keys only, so adding a method's keys to the schema reruns no other method)."""
    methods = load_schema()["properties"]["method"]["enum"]
    return {k: v for k, v in config.items() if k not in methods or k == config.get("method", "sgmn")}


def without_unset_index(config: dict) -> dict:
    """The config without `dataset.index` while it is unset (no shards, no path): a run that
    reads the plain layout keeps the config it had before the key existed (no rerun)."""
    dataset = config.get("dataset") or {}
    index = dataset.get("index")
    if index is None or index.get("shards") or index.get("path"):
        return config
    return {**config, "dataset": {k: v for k, v in dataset.items() if k != "index"}}


def table2_config(config: dict) -> dict | None:
    """The base config of Table 2's dataset (None when `table2.enabled` is off): the main config
    with `table2.overrides` merged in, `table2.dataset` in place of `dataset`, and Table 2's
    variants and seeds as its run matrix; validated like any base config."""
    t2 = config.get("table2") or {}
    if not t2.get("enabled"):
        return None
    base = {k: v for k, v in config.items() if k not in RUN_MATRIX_KEYS or k == "variants_file"}
    merged = deep_merge(base, t2.get("overrides") or {})
    merged.update(dataset=t2["dataset"], variants=list(t2["variants"]), seeds=list(t2["seeds"]))
    if merged["dataset"]["name"] == config["dataset"]["name"]:
        raise ConfigError(f"table2.dataset.name '{merged['dataset']['name']}' is the main dataset's name; "
                          "Table 2's results need a directory of their own")
    for role in ("zero_shot", "finetune"):
        if t2[role]["variant"] not in merged["variants"]:
            raise ConfigError(f"table2.{role}.variant '{t2[role]['variant']}' is not in table2.variants")
    return validate(merged, "table2 (the main config with table2.overrides and table2.dataset)")


def strip_run_keys(config: dict) -> dict:
    """A resolved config without the keys that are not part of the schema (for re-validation)."""
    return {k: v for k, v in config.items() if k not in ("variant", "seed")}


def uses_text(config: dict) -> bool:
    """Whether a resolved config's method reads the ASR / title features: the `te` switch of
    the method's own section (`sgmn.te`, `rice.te`; a method without one uses no text)."""
    return bool(config.get(config.get("method", "sgmn"), {}).get("te", False))
