"""Mechanism probes: each SGMN component switched on and off along the axis of its phenomenon.

A probe (``workflow/config/probes.yaml``, the top-level config key ``probes``) names a
component, two models (``on`` and ``off``: config overrides merged on top of the main config
and validated like a row of ``variants.yaml``), an axis of LPR-Synth generator settings (axis
value -> generator knobs), optionally a second factor crossed with it (``cross``), the axis
value where the phenomenon is absent (``control``, the negative control) and the query subsets
to report. Every point (one axis value, and one level of the crossed factor) is its own
generated dataset; both models are trained on it with the same seeds, and the paired test of
:func:`sgmn.evaluate.tables.paired_test` compares them query by query.

Layout (the DAG, ``workflow/rules/probes.smk``, writes it; :func:`build_probe_table` reads it)::

    {root}/{probe}/{point}/data                      the point's dataset (sgmn synth)
    {root}/{probe}/{point}/text                      its text features (probes with a text model)
    {root}/{probe}/configs/{on,off}.json             the two resolved model configs
    {root}/{probe}/{point}/runs/{arm}/seed{N}/       final.pt, metrics.json, per_query.parquet, scores.parquet

with ``root = results/{dataset}/probes``. The table (``probes.csv``) has one row per (probe,
point, subset): ``probe, axis, value, component, seeds, pairs, r1_on, r1_off, diff, ci_low,
ci_high, p`` and then ``subset, condition, control, point, n_queries, per_seed_diff, seed_sd,
status``. A point whose runs are missing is a row with NaN numbers and ``status`` ``not run``;
nothing here fails on a partial results tree.

Only the spec helpers are light at import (the Snakefile imports this module); pandas, numpy and
matplotlib load inside the functions that need them.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sgmn import config as cfg

ARMS: tuple[str, ...] = ("on", "off")
SUBSETS: tuple[str, ...] = ("all", "variant_in_gallery")
COLUMNS: list[str] = ["probe", "axis", "value", "component", "seeds", "pairs", "r1_on", "r1_off",
                      "diff", "ci_low", "ci_high", "p"]
EXTRA_COLUMNS: list[str] = ["subset", "condition", "control", "point", "n_queries", "per_seed_diff",
                            "seed_sd", "status"]
DEFAULT_SPEC_PATH = cfg.REPO_ROOT / "workflow" / "config" / "probes.yaml"
_NAME = re.compile(r"^[A-Za-z0-9_.+]+$")  # probe ids, axis names and values: path-safe, no '-'


@dataclass(frozen=True)
class ProbePoint:
    """One generated dataset of a probe: an axis value (and a level of the crossed factor)."""
    probe: str
    point: str            # directory name: "{axis}-{value}" or "{axis}-{value}_{cross}-{level}"
    axis: str
    value: str
    condition: str        # "" or "{cross}={level}"
    control: bool         # the axis value where the phenomenon is absent
    knobs: dict = field(hash=False, compare=False)  # generator overrides: common, cross, value


# ---------------------------------------------------------------------------------------------
# The spec (the `probes` config block)
# ---------------------------------------------------------------------------------------------


def load_spec_file(path: str | Path = DEFAULT_SPEC_PATH) -> dict:
    """The ``probes`` block of a config YAML (e.g. workflow/config/probes.yaml), validated by the
    config schema (defaults filled in) and checked by :func:`check_spec`."""
    data, lines = cfg.load_yaml(path)
    if not isinstance(data.get("probes"), dict):
        raise cfg.ConfigError(f"{path}: expected a 'probes' mapping at the top level")
    block = cfg.validate({"probes": data["probes"]}, str(path), lines)["probes"]
    return check_spec(block, str(path))


def spec_of(config: dict, default_path: str | Path = DEFAULT_SPEC_PATH) -> dict:
    """The probes of a top-level config: its ``probes`` block, or, when that names no probe (the
    schema's default), the one of ``default_path`` (so ``snakemake probes`` runs without
    --configfile)."""
    block = config.get("probes") or {}
    if not block.get("probes"):
        return load_spec_file(default_path)
    return check_spec(cfg.validate({"probes": block}, "config 'probes'")["probes"], "config 'probes'")


def check_spec(spec: dict, source: str = "probes") -> dict:
    """What the schema cannot say: path-safe names, a control among the values, known subsets,
    and two different models. Returns ``spec``; raises ConfigError naming the probe."""
    for pid, probe in spec["probes"].items():
        where = f"{source}: probe '{pid}'"
        names = [pid, probe["axis"], *map(str, probe["values"])]
        cross = _cross(probe)
        if cross:
            names += [cross["name"], *map(str, cross["values"])]
        bad = [n for n in names if not _NAME.match(str(n))]
        if bad:
            raise cfg.ConfigError(f"{where}: names {bad} may only use letters, digits, '_', '.', '+'")
        if not probe["values"]:
            raise cfg.ConfigError(f"{where}: no axis values")
        if probe["control"] is not None and str(probe["control"]) not in map(str, probe["values"]):
            raise cfg.ConfigError(f"{where}: control '{probe['control']}' is not one of the axis values "
                                  f"{[str(v) for v in probe['values']]}")
        unknown = [s for s in probe["subsets"] if s not in SUBSETS]
        if unknown or "all" not in probe["subsets"]:
            raise cfg.ConfigError(f"{where}: subsets {probe['subsets']} must include 'all' and be among {list(SUBSETS)}")
        if probe["on"] == probe["off"]:
            raise cfg.ConfigError(f"{where}: the 'on' and 'off' models are the same")
    return spec


def _cross(probe: dict) -> dict | None:
    """The probe's crossed factor, or None (no ``cross`` or empty ``cross.values``)."""
    cross = probe.get("cross") or {}
    return cross if cross.get("values") else None


def probe_points(spec: dict, probe: str | None = None) -> list[ProbePoint]:
    """Every point of every probe (or of one), in the YAML's order: axis value major, crossed
    level minor. Each point's knobs: ``dataset.overrides``, then the crossed level's, then the
    axis value's (a later one wins)."""
    common = spec["dataset"]["overrides"]
    out = []
    for pid, p in spec["probes"].items():
        if probe is not None and pid != probe:
            continue
        cross = _cross(p)
        levels = list(cross["values"].items()) if cross else [(None, {})]
        for value, knobs in p["values"].items():
            for level, cross_knobs in levels:
                name = f"{p['axis']}-{value}"
                condition = ""
                if level is not None:
                    name += f"_{cross['name']}-{level}"
                    condition = f"{cross['name']}={level}"
                merged = {**common, **cross_knobs, **knobs}
                out.append(ProbePoint(pid, name, p["axis"], str(value), condition,
                                      p["control"] is not None and str(value) == str(p["control"]), merged))
    return out


def model_overrides(spec: dict, probe: str, arm: str) -> dict:
    """Config overrides of one model of a probe: ``spec.config`` then the probe's ``on``/``off``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return cfg.deep_merge(spec["config"], spec["probes"][probe][arm] or {})


def resolve_arm(config: dict, spec: dict, probe: str, arm: str, source: str = "probes") -> dict:
    """The full, validated config of one probe model, resolved exactly as a variants.yaml row
    (:func:`sgmn.config.resolve_variant`): the base config + the model's overrides; its
    ``variant`` is ``probe_{probe}_{arm}``."""
    name = f"probe_{probe}_{arm}"
    row = {name: {"overrides": model_overrides(spec, probe, arm)}}
    base = {k: v for k, v in config.items() if k != "probes"}
    return cfg.resolve_variant(copy.deepcopy(base), name, row, f"{source} (probe '{probe}', model '{arm}')")


# ---------------------------------------------------------------------------------------------
# The subset "a variant of the ground truth is in the gallery"
# ---------------------------------------------------------------------------------------------


def variant_in_gallery(products: dict[str, dict], gt: dict[str, list[str]],
                       gallery_of: dict[str, list[str]]) -> set[str]:
    """The queries whose gallery holds an image of another product of the ground truth's family.

    ``products``: synth_meta.json ``products`` (image_id -> {product_id, family_id or
    near_duplicate_of}); ``gt``: video_id -> ground-truth image ids; ``gallery_of``: video_id ->
    the image ids of its gallery. Images absent from ``products`` count as no variant."""
    from sgmn.evaluate.data_stats import families, has_twin_in_gallery

    family_of, _ = families(products)
    product_of = {image_id: entry["product_id"] for image_id, entry in products.items()}
    return {video_id for video_id, gts in gt.items()
            if has_twin_in_gallery(gts, gallery_of.get(video_id, ()), product_of, family_of)}


def variant_in_gallery_queries(data_dir: str | Path) -> set[str]:
    """:func:`variant_in_gallery` of an LPR-Synth root: its synth_meta.json and test files,
    each query's gallery found as the evaluation finds it (the live id of the video id)."""
    from sgmn.data import lpr4m

    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "synth_meta.json").read_text(encoding="utf-8"))
    test = lpr4m.read_test(data_dir)
    gallery_of = {clip.video_id: test.gallery_of(clip) for clip in test.queries}
    return variant_in_gallery(meta.get("products", {}), test.gt, gallery_of)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def run_dir(root: str | Path, point: ProbePoint, arm: str, seed: int) -> Path:
    return Path(root) / point.probe / point.point / "runs" / arm / f"seed{seed}"


def _read_per_query(root, point: ProbePoint, arm: str, seeds) -> dict:
    import pandas as pd

    out = {}
    for seed in seeds:
        path = run_dir(root, point, arm, seed) / "per_query.parquet"
        if path.exists():
            out[int(seed)] = pd.read_parquet(path)
    return out


def _row(point: ProbePoint, component: str, subset: str, test: dict | None, seeds, status: str) -> dict:
    nan = math.nan
    row = {"probe": point.probe, "axis": point.axis, "value": point.value, "component": component,
           "seeds": "", "pairs": 0, "r1_on": nan, "r1_off": nan, "diff": nan, "ci_low": nan,
           "ci_high": nan, "p": nan, "subset": subset, "condition": point.condition,
           "control": point.control, "point": point.point, "n_queries": 0, "per_seed_diff": "{}",
           "seed_sd": nan, "status": status}
    if test is None:
        return row
    row.update({"seeds": ",".join(str(s) for s in test["seeds"]), "pairs": int(test["n_pairs"]),
                "r1_on": test["R@1_b"], "r1_off": test["R@1_a"], "diff": test["diff"],
                "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p": test["p_mcnemar"],
                "n_queries": int(test["n_queries"]),
                "per_seed_diff": json.dumps({str(s): round(d, 6) for s, d in test["per_seed_diff"].items()}),
                "seed_sd": test["seed_sd"]})
    if test["n_pairs"] == 0:
        row["status"] = "no pairs"
    elif len(test["seeds"]) < len(seeds):
        row["status"] = f"partial ({len(test['seeds'])} of {len(seeds)} seeds)"
    return row


def build_probe_table(root: str | Path, spec: dict, *, n_boot: int | None = None,
                      subset_of=variant_in_gallery_queries):
    """One row per (probe, point, subset) from the runs under ``root`` (results/{ds}/probes).

    Paired test: :func:`sgmn.evaluate.tables.paired_test` with the ``off`` model as A and ``on``
    as B, keyed by seed, so ``diff = r1_on - r1_off`` in points. A point with no seed run by both
    models is a ``not run`` row of NaNs; the ``variant_in_gallery`` subset needs the point's data
    (``subset_of(data_dir)`` gives its video ids) and is ``not run`` without it."""
    import pandas as pd

    from sgmn.evaluate.tables import paired_test

    kwargs = {} if n_boot is None else {"n_boot": n_boot}
    seeds = [int(s) for s in spec["seeds"]]
    rows = []
    for point in probe_points(spec):
        probe = spec["probes"][point.probe]
        on = _read_per_query(root, point, "on", seeds)
        off = _read_per_query(root, point, "off", seeds)
        ran = sorted(set(on) & set(off))
        for subset in probe["subsets"]:
            if not ran:
                rows.append(_row(point, probe["component"], subset, None, seeds, "not run"))
                continue
            a, b = {s: off[s] for s in ran}, {s: on[s] for s in ran}
            if subset == "variant_in_gallery":
                data = Path(root) / point.probe / point.point / "data"
                if not data.is_dir():
                    rows.append(_row(point, probe["component"], subset, None, seeds, "not run (no data)"))
                    continue
                keep = {str(v) for v in subset_of(data)}
                a = {s: t[t["video_id"].astype(str).isin(keep)] for s, t in a.items()}
                b = {s: t[t["video_id"].astype(str).isin(keep)] for s, t in b.items()}
            test = paired_test(a, b, 1, **kwargs)
            rows.append(_row(point, probe["component"], subset, test, seeds, "ok"))
    return pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Output: CSV, Markdown, figures
# ---------------------------------------------------------------------------------------------


def _f(x, fmt: str = ".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def to_markdown(table, spec: dict) -> str:
    import pandas as pd

    from sgmn.evaluate.tables import CI_METHOD

    intro = ("Each component switched on and off (same seeds, same queries) along the axis of the "
             "phenomenon it targets, on LPR-Synth datasets generated for each axis value. "
             "diff = R@1(on) - R@1(off) in points on the (seed, query) pairs of both; "
             f"CI: 95%, {CI_METHOD}; p: exact McNemar on the discordant pairs pooled over seeds; "
             "control: the axis value where the phenomenon is absent (the effect should vanish "
             "there); – : not run.")
    lines = ["# Mechanism probes", "", intro, ""]
    for pid, probe in spec["probes"].items():
        part = table[table["probe"] == pid]
        on = json.dumps(probe["on"], sort_keys=True)
        off = json.dumps(probe["off"], sort_keys=True)
        lines += [f"## {pid}: {probe['component']} against {probe['axis']}", "",
                  (probe.get("description") or "").strip(), "",
                  f"on: `{on}`; off: `{off}`.", ""]
        shown = pd.DataFrame({
            "value": part["value"] + part["control"].map(lambda c: " (control)" if c else ""),
            "condition": part["condition"].replace("", "–"), "subset": part["subset"],
            "seeds": part["seeds"].replace("", "–"), "pairs": part["pairs"].astype(str),
            "R@1 on": part["r1_on"].map(_f), "R@1 off": part["r1_off"].map(_f),
            "diff": part["diff"].map(lambda x: _f(x, "+.1f")),
            "95% CI": [("–" if math.isnan(lo) else f"[{lo:+.1f}, {hi:+.1f}]")
                       for lo, hi in zip(part["ci_low"], part["ci_high"])],
            "p": part["p"].map(lambda x: _f(x, ".3g")), "status": part["status"]})
        lines += [shown.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def plot_probe(table, probe_id: str, probe: dict, out_base: str | Path) -> list[Path]:
    """``{out_base}.png`` and ``.pdf``: left, diff (on - off) with its 95% CI against the axis
    value, one line per crossed level and subset, the control shaded; right, R@1 of both models.
    Points not run are left out. Returns the paths written (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sgmn.io import atomic_path

    values = [str(v) for v in probe["values"]]
    part = table[table["probe"] == probe_id]
    series = list(dict.fromkeys(zip(part["condition"], part["subset"])))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    width = 0.5 / max(1, len(series))
    for i, (condition, subset) in enumerate(series):
        s = part[(part["condition"] == condition) & (part["subset"] == subset)]
        s = s.set_index("value").reindex(values)
        x = np.arange(len(values)) + (i - (len(series) - 1) / 2) * width
        label = ", ".join([condition] * bool(condition) + [subset] * (len(probe["subsets"]) > 1)) or "all queries"
        y, lo, hi = (s[c].to_numpy(float) for c in ("diff", "ci_low", "ci_high"))
        ok = ~np.isnan(y)
        err = np.vstack([y - lo, hi - y])[:, ok]
        ax.errorbar(x[ok], y[ok], yerr=np.where(np.isnan(err), 0, err), marker="o", capsize=3, label=label)
        ax2.plot(x[ok], s["r1_on"].to_numpy(float)[ok], marker="o", color=f"C{i}", label=f"on ({label})")
        ax2.plot(x[ok], s["r1_off"].to_numpy(float)[ok], marker="s", ls="--", color=f"C{i}", label=f"off ({label})")
    ax.axhline(0, color="0.4", lw=0.8)
    if probe["control"] is not None:
        c = values.index(str(probe["control"]))
        for a in (ax, ax2):
            a.axvspan(c - 0.4, c + 0.4, color="0.9", zorder=0)
    for a in (ax, ax2):
        a.set_xticks(range(len(values)), [v + (" (control)" if v == str(probe["control"]) else "") for v in values])
        a.set_xlabel(probe["axis"])
        a.set_xlim(-0.6, len(values) - 0.4)
    ax.set_ylabel(f"R@1 {probe['component']} on - off (points)")
    ax.set_title(f"{probe['component']}: effect against {probe['axis']} (95% CI)")
    ax2.set_ylabel("R@1 (%)")
    ax2.set_title("R@1 with the component on / off")
    if series:
        ax.legend(fontsize=8)
        ax2.legend(fontsize=7)
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out_base.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, metadata=meta)
        written.append(path)
    plt.close(fig)
    return written


def write_probe_outputs(table, spec: dict, out_csv: str | Path, figures_dir: str | Path) -> list[Path]:
    """``probes.csv`` and ``probes.md`` beside it, and ``{figures_dir}/{probe}.png/.pdf``."""
    from sgmn.io import atomic_path, write_table

    out_csv = Path(out_csv)
    write_table(table, out_csv)
    md = out_csv.with_suffix(".md")
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(table, spec), encoding="utf-8")
    written = [out_csv, md]
    for pid, probe in spec["probes"].items():
        written += plot_probe(table, pid, probe, Path(figures_dir) / pid)
    return written
