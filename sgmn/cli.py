"""`sgmn` command line: one subcommand per DAG step, each runnable and testable alone.

    sgmn synth --preset default --seed 0 --out results/lpr_synth/data
    sgmn index --shards DL/frames --shards DL/images --data DIR --out INDEX   # img2dataset shards
    sgmn resolve-config --config workflow/config/default.yaml --variant gra_only --out cfg.json
    sgmn pretrain-clip --config cfg.json --data DIR --out clip.pt
    sgmn text-features --config cfg.json --data DIR --clip-weights clip.pt --out TEXT_DIR
    sgmn train --config cfg.json --seed 0 --data DIR --clip-weights clip.pt --out RUN_DIR
    sgmn evaluate --data DIR --checkpoint RUN_DIR/final.pt --out metrics.json --scores-out scores.parquet
    sgmn evaluate --data DIR --scores scores.parquet --out metrics.json   # recompute from a table
    sgmn tables --runs results/lpr_synth/runs --config workflow/config/default.yaml --out results/lpr_synth/tables
    sgmn diff --tables results/lpr_synth/tables --runs results/lpr_synth/runs --out-md results/lpr_synth/diff.md --out-json results/lpr_synth/diff.json
    sgmn probes --config workflow/config/probes.yaml --root results/lpr_synth/probes --out results/lpr_synth/probes/probes.csv
    sgmn figures retrieval --data results/lpr_synth/data --run sgmn=RUN --run gra_only=RUN --out figures/fig5_retrieval   # `sgmn figures -h`
    sgmn report-page --md results/lpr_synth/diff.md --out results/lpr_synth/report/diff.html
    sgmn fetch-weights --config workflow/config/lpr4m.yaml --out weights/   # offline machines: docs/offline.md
    sgmn download-report --list train_frames results/lpr4m/download/train_frames urls.parquet --out report.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("sgmn")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--set expects knob=value, got '{pair}'")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_synth(args) -> None:
    from sgmn.data.synth import generate
    path = generate(args.out, preset=args.preset, seed=args.seed, fmt=args.format,
                    overrides=_parse_sets(args.set))
    log.info("wrote %s", path)


def cmd_resolve_config(args) -> None:
    from sgmn import config as cfg
    from sgmn.io import write_json
    if args.json:
        resolved = json.loads(args.json)
        resolved["variant"] = resolved.get("variant", args.variant)
        resolved = cfg.revalidate_resolved(resolved, "--json")
    else:
        base = cfg.load_config(args.config)
        resolved = cfg.resolve_variant(base, args.variant,
                                       variants_path=args.variants or cfg.VARIANTS_PATH)
    write_json(resolved, args.out)


def _load_run_config(path) -> dict:
    from sgmn.config import load_config, resolve_run_config
    return resolve_run_config(load_config(path))


def cmd_pretrain_clip(args) -> None:
    from sgmn.train.pretrain_clip import pretrain
    _set_threads(args.threads)
    pretrain(_load_run_config(args.config), args.data, args.out)


def cmd_text_features(args) -> None:
    from sgmn.text.features import build_text_features
    _set_threads(args.threads)
    out = build_text_features(_load_run_config(args.config), args.data, args.clip_weights, args.out)
    log.info("wrote %s", out)


def _set_threads(n: int) -> None:
    if n > 0:
        import torch
        torch.set_num_threads(n)


def cmd_train(args) -> None:
    """Also under `torchrun --standalone --nproc_per_node N -m sgmn.cli train ...` (data parallel)."""
    if (args.scores_out or args.per_query_out) and not args.metrics_out:
        raise SystemExit("train: --scores-out and --per-query-out come with --metrics-out (evaluate after training)")
    from sgmn.train import distributed
    from sgmn.train.retrieval import train_run
    rank, world_size, _ = distributed.init_from_env()  # (0, 1, 0) without torchrun
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for the run
    try:
        _set_threads(args.threads)
        config = _load_run_config(args.config)
        processes = config["train"].get("processes", 1)
        if processes != world_size:
            log.warning("train.processes is %d but %d process(es) run: the global batch and the "
                        "results are the same, only the speed differs", processes, world_size)
        final = train_run(config, args.seed, args.data, args.clip_weights, args.out, args.text_features,
                          args.frame_store, args.init_checkpoint)
    finally:
        distributed.shutdown()
    log.info("wrote %s", final)
    if args.metrics_out and rank == 0:
        # the `sgmn evaluate` of final.pt, in this process: the DAG saves an interpreter start,
        # the imports and a job per run (README, "The DAG's cost"); the same code, the same numbers
        evaluate_checkpoint(final, Path(args.data), args.metrics_out, scores_out=args.scores_out,
                            per_query_out=args.per_query_out, text_features=args.text_features,
                            frame_store=args.frame_store, threads=args.threads)


def detect_format(root: Path) -> str:
    if (root / "test.json").exists() or (root / "train.json").exists():
        return "movingfashion"
    if any(root.glob("test_videoid_to_gtimage_*.json")):
        return "lpr4m"
    raise SystemExit(f"{root}: neither an LPR4M root (test_videoid_to_gtimage_*.json) nor a "
                     f"MovingFashion root (test.json); pass --format")


def evaluate_checkpoint(checkpoint, data: Path, out, *, fmt: str | None = None, gallery: str | None = None,
                        scores_out=None, per_query_out=None, text_features=None, frame_store=None,
                        threads: int = 0) -> None:
    """Score a run's final.pt on data's test split; write the metrics JSON, and the score and
    per-query tables when asked (`sgmn evaluate --checkpoint`, and `sgmn train --metrics-out`)."""
    from sgmn.evaluate.run import evaluate_model
    from sgmn.io import provenance, write_table
    from sgmn.models.factory import load_model
    model, state = load_model(checkpoint)
    config = state["config"]
    # the data's own layout, not the one the model was trained on (Table 2's zero-shot row
    # scores an LPR-Synth checkpoint on MF-Synth)
    config["dataset"]["format"] = fmt or detect_format(data)
    if gallery:  # else the run config's evaluate.gallery (all_images when it predates the key)
        config.setdefault("evaluate", {})["gallery"] = gallery
    _set_threads(threads)
    text_store = None
    if text_features:
        from sgmn.text.features import TextFeatures
        text_store = TextFeatures.load(text_features)
    scores, metrics, per_query = evaluate_model(model, config, data, text_store, frame_store)
    metrics["provenance"] = provenance(config, state.get("seed"))
    metrics["provenance"]["checkpoint"] = str(checkpoint)
    metrics["provenance"]["trained_with"] = state.get("provenance", {}).get("git")
    if scores_out:
        write_table(scores, scores_out)
    _write_metrics(metrics, per_query, out, per_query_out)


def _write_metrics(metrics: dict, per_query, out, per_query_out=None) -> None:
    from sgmn.io import write_json, write_table
    if per_query_out:
        write_table(per_query, per_query_out)
    write_json(metrics, out)
    o = metrics["overall"]
    log.info("R@1 %.2f  R@5 %.2f  R@10 %.2f  R@mean %.2f  (n=%d, misses=%d, chance R@1 %.2f; "
             "gallery %s, %.1f images per query)", o["R@1"], o["R@5"], o["R@10"], o["R@mean"], o["n"],
             metrics["n_misses"], metrics["chance"]["R@1"], metrics["gallery_unit"],
             metrics["mean_gallery_size"] or 0.0)


def cmd_evaluate(args) -> None:
    data = Path(args.data)
    if (args.scores is None) == (args.checkpoint is None):
        raise SystemExit("evaluate needs exactly one of --checkpoint (score a model) or --scores (recompute)")
    if args.checkpoint:
        evaluate_checkpoint(args.checkpoint, data, args.out, fmt=args.format, gallery=args.gallery,
                            scores_out=args.scores_out, per_query_out=args.per_query_out,
                            text_features=args.text_features, frame_store=args.frame_store, threads=args.threads)
        return
    # no model: torch-free, ids joined as integer codes
    from sgmn.data.splits import read_split
    from sgmn.evaluate.from_scores import metrics_from_scores
    from sgmn.evaluate.scores import read_scores
    from sgmn.io import provenance
    test = read_split(data, args.format or detect_format(data), "test")
    scores, report = read_scores(args.scores, categorical=True)
    metrics, per_query = metrics_from_scores(test, scores, gallery=args.gallery or "all_images")
    metrics["score_table"] = {"path": str(args.scores), **report}
    metrics["provenance"] = provenance(None, None)
    metrics["provenance"]["scores"] = str(args.scores)
    _write_metrics(metrics, per_query, args.out, args.per_query_out)


def cmd_gallery_stats(args) -> None:
    """Gallery sizes of a test split under each gallery unit (docs/data_formats.md)."""
    from sgmn.data.datasets import read_split
    from sgmn.data.gallery_unit import gallery_stats
    from sgmn.io import write_json
    data = Path(args.data)
    stats = gallery_stats(read_split(data, args.format or detect_format(data), "test"))
    stats["data"] = str(data)
    if args.out:
        write_json(stats, args.out)
    print(json.dumps(stats, indent=1))


FRAME_STORE_HELP = "decoded frames of --data (`sgmn frame-store`); default: decode the files"


def cmd_frame_store(args) -> None:
    from sgmn.data.frame_store import build
    fmt = args.format or detect_format(Path(args.data))
    log.info("wrote %s", build(args.data, args.size, args.out, fmt, args.num_frames, args.index))


def cmd_index(args) -> None:
    """Index img2dataset shards (frame / image id -> shard member); report what did not arrive."""
    from sgmn.data.shard_index import IdRule, build_index
    try:
        IdRule(args.id_pattern, args.id_field)
    except ValueError as err:
        raise SystemExit(f"index: --id-pattern: {err}") from None
    link = None if args.link_layout is None else (args.link_layout or args.data)
    report = build_index(args.shards, args.out, args.id_pattern, args.id_field, args.data, args.processes, link)
    ann, failed = report["annotations"], report["failed_downloads"]["count"]
    log.info("wrote %s: %d ids from %d shards (%d failed downloads); %d of the %d ids the annotations name "
             "have no file (%.3f%%, listed in %s)", args.out, report["rows"], report["shards"], failed,
             ann["missing"], ann["named"], ann["missing_pct"], Path(args.out) / ann["list"])
    if "links" in report:
        log.info("hard links under %s: %d made, %d existing files kept", link, report["links"]["linked"],
                 report["links"]["existing_kept"])


def cmd_summarize(args) -> None:
    """One row per (variant, seed) run: overall metrics, chance level and provenance."""
    import pandas as pd
    from sgmn.io import write_table
    rows = []
    for path in args.metrics:
        m = json.loads(Path(path).read_text())
        conf = m["provenance"]["config"] or {}
        rows.append({"variant": conf.get("variant"), "seed": m["provenance"]["seed"],
                     **{k: m["overall"][k] for k in ("R@1", "R@5", "R@10", "R@mean", "n")},
                     "chance_R@1": m["chance"]["R@1"], "n_misses": m["n_misses"],
                     # a metrics file without the key predates it: every evaluation then ranked all images
                     "gallery": m.get("gallery_unit", "all_images"), "mean_gallery_size": m.get("mean_gallery_size"),
                     "commit": (m["provenance"]["git"] or {}).get("commit"), "metrics": str(path)})
    table = pd.DataFrame(rows).sort_values(["variant", "seed"])
    write_table(table, args.out)
    md = Path(args.out).with_suffix(".md")
    md.write_text(table.drop(columns=["metrics", "commit"]).to_markdown(index=False, floatfmt=".2f") + "\n")


def cmd_tables(args) -> None:
    """The paper's Tables 1 and 3-7 from the runs and the bench, beside the published numbers."""
    from sgmn import config as cfg
    import pandas as pd

    from sgmn.evaluate.tables import build_table3, build_tables, write_tables
    from sgmn.io import provenance
    if (args.config is None) == (args.config_json is None):
        raise SystemExit("tables needs exactly one of --config (YAML) or --config-json")
    # load_yaml + validate: the run-matrix keys (seeds, seeds_by_variant, variants) are kept
    if args.config_json is not None:
        try:
            raw, lines, source = json.loads(args.config_json), None, "--config-json"
        except json.JSONDecodeError as err:
            raise cfg.ConfigError(f"--config-json: invalid JSON: {err.msg}") from None
    else:
        if not Path(args.config).exists():
            raise FileNotFoundError(f"config file {args.config} not found")
        (raw, lines), source = cfg.load_yaml(args.config), args.config
    conf = cfg.validate(cfg.strip_run_keys(raw), source, lines)
    every = cfg.load_variants(args.variants_file or conf["variants_file"])
    unknown = [v for v in conf["variants"] if v not in every]
    if unknown:
        raise cfg.ConfigError(f"{source}: variants {unknown} are not in the variants file")
    variants = {v: every[v] for v in conf["variants"]}
    seeds = {v: conf["seeds_by_variant"].get(v, conf["seeds"]) for v in variants}
    tables = build_tables(args.runs, variants, seeds, paper_dir=args.paper_dir)
    if args.table2_runs:
        t2 = conf["table2"]
        t2_variants = {v: every[v] for v in t2["variants"] if v in every}
        table2 = build_tables(args.table2_runs, t2_variants, {v: t2["seeds"] for v in t2_variants},
                              paper_dir=args.paper_dir, tables=(2,), with_table4=False)
        tables["table2"] = table2["table2"]
        for key in ("paired_tests", "ordering"):
            tables[key] = pd.concat([tables[key], table2[key]], ignore_index=True)
    bench = sorted(Path(args.bench).glob("methods_*.json")) if args.bench else []
    tables["table3"] = build_table3(bench, every, paper_dir=args.paper_dir)
    prov = provenance(conf, None)
    prov.update({"runs": str(args.runs), "seeds": seeds,
                 "variants_file": str(args.variants_file or conf["variants_file"])})
    synthetic = conf["dataset"]["path"] is None
    dataset = "LPR-Synth" if synthetic else conf["dataset"]["name"]
    for path in write_tables(tables, args.out, dataset=dataset, synthetic=synthetic, provenance=prov):
        log.info("wrote %s", path)


def cmd_diff(args) -> None:
    """Every published cell and claim of the paper beside our runs (diff.md, diff.json)."""
    from sgmn.evaluate.diff import build_diff, write_diff
    diff = build_diff(args.tables, runs=args.runs, table2_runs=args.table2_runs, bench=args.bench,
                      paper_dir=args.paper_dir)
    for path in write_diff(diff, args.out_md, args.out_json):
        log.info("wrote %s", path)
    log.info("claims: %s", diff["summary"])


def cmd_data_stats(args) -> None:
    """Cheap statistics of a generated dataset (motion, visibility, near twins, text-only R@1)."""
    from sgmn.evaluate.data_stats import DEFAULT_MAX_CLIPS, compute_data_stats
    from sgmn.io import write_json
    batch_size = args.batch_size
    if batch_size is None:
        from sgmn.config import REPO_ROOT, load_config
        batch_size = load_config(args.config or REPO_ROOT / "workflow/config/default.yaml")["train"]["batch_size"]
    stats = compute_data_stats(args.data, args.text_features, batch_size,
                               args.max_clips if args.max_clips is not None else DEFAULT_MAX_CLIPS, args.seed)
    write_json(stats, args.out)
    log.info("wrote %s", args.out)


def cmd_curves(args) -> None:
    """Learning curves: curves.csv and the figure from the curve runs' metrics."""
    from sgmn import config as cfg
    from sgmn.evaluate.curves import write_curves
    spec = cfg.validate({"curves": json.loads(args.spec_json)}, "--spec-json")["curves"]
    for path in write_curves(args.runs, spec, args.out, args.figure, args.margin):
        log.info("wrote %s", path)


def cmd_fidelity_table(args) -> None:
    """Table 7 under the paper's and the official recipe, with paired tests."""
    from sgmn.evaluate.fidelity_table import write
    for path in write(args.runs, args.out, args.seeds):
        log.info("wrote %s", path)


def cmd_probes(args) -> None:
    """The mechanism probes' table (probes.csv + .md) and figures from a (partial) results tree."""
    from sgmn import config as cfg
    from sgmn.evaluate.probes import build_probe_table, check_spec, load_spec_file, write_probe_outputs
    if (args.config is None) == (args.spec_json is None):
        raise SystemExit("probes needs exactly one of --config (YAML with a probes block) or --spec-json")
    if args.spec_json is not None:
        try:
            block = json.loads(args.spec_json)
        except json.JSONDecodeError as err:
            raise cfg.ConfigError(f"--spec-json: invalid JSON: {err.msg}") from None
        spec = check_spec(cfg.validate({"probes": block}, "--spec-json")["probes"], "--spec-json")
    else:
        if not Path(args.config).exists():
            raise FileNotFoundError(f"config file {args.config} not found")
        spec = load_spec_file(args.config)
    table = build_probe_table(args.root, spec)
    for path in write_probe_outputs(table, spec, args.out, args.figures or spec["figures"]):
        log.info("wrote %s", path)


def cmd_report_page(args) -> None:
    """A Markdown output (tables.md, diff.md) as an HTML page for `snakemake --report`."""
    from sgmn.report import write_page
    log.info("wrote %s", write_page(args.md, args.out, args.title))


def cmd_bench(args) -> None:
    from sgmn.bench import SCALES, VARIANTS as BENCH_VARIANTS, bench_scale, method_variants
    from sgmn.io import write_json
    if args.methods and args.variant:
        raise SystemExit("bench: give --methods all or --variant, not both")
    chosen = None if args.methods in (None, ["all"]) else args.methods
    variants = tuple(method_variants(methods=chosen) if args.methods else (args.variant or BENCH_VARIANTS))
    prefix = "methods" if args.methods else "sgmn"
    for scale in args.scale or list(SCALES):
        result = bench_scale(scale, args.device, args.steps, args.repeats, args.threads, variants,
                             gallery=args.gallery, train=not args.inference_only,
                             frames=tuple(args.frames or ("all_real",)), precisions=tuple(args.precision or (None,)))
        device = next(iter(result["cases"].values()))["device"].split(":")[0]
        path = Path(args.out) / f"{prefix}_{scale}_{device}.json"
        write_json(result, path)
        print(json.dumps({"file": str(path), **{v: {k: c[k] for k in ("precision", "train_step_ms", "peak_memory_mb",
                                                                           "query_clip_ms", "per_query_ms",
                                                                           "train_fraction_of_peak")}
                                                  for v, c in result["cases"].items()},
                          "sgmn_over_gra": result.get("sgmn_over_gra")}, indent=1))


def cmd_diagnose(args) -> None:
    from sgmn.diagnostics import diagnose_run
    from sgmn.io import provenance, write_json
    _set_threads(args.threads)
    runs = [diagnose_run(r, args.data, args.text_features, args.clip_weights) for r in args.run]
    write_json({"runs": runs, "provenance": provenance(None, None)}, args.out)
    for r in runs:
        shares = {phase: {k: round(v, 3) for k, v in r[phase]["grad_share"].items()} for phase in ("init", "final")}
        log.info("%s seed %s: visual-gradient share vs similarity loss %s; TMC %s -> %s",
                 r["variant"], r["seed"], shares, r["init"]["tmc"], r["final"]["tmc"])


def cmd_paper_checks(args) -> None:
    from sgmn.paper import SOURCES, load_all, write_checks
    for source in SOURCES:
        if args.write_checks:
            for path in write_checks(args.dir, source=source):
                print(f"updated {path}")
        df = load_all(args.dir, source=source)
        flagged = df[df["checks"] != ""]
        print(f"[{source}] {len(df)} cells in {df['table'].nunique()} tables; {len(flagged)} flagged")
        for r in flagged.itertuples():
            print(f"  table {r.table} {r.row_id} {r.subset} {r.metric} = {r.value}: {r.checks}")


def cmd_download_report(args) -> None:
    """Counts and failed urls of img2dataset output folders (the download rule's shards)."""
    from sgmn.data.download import DownloadError, build_report
    from sgmn.io import write_json
    lists = [(name, folder, None if url_list == "-" else url_list) for name, folder, url_list in args.list]
    if len({name for name, _, _ in lists}) != len(lists):
        raise SystemExit("download-report: each --list needs a name of its own")
    try:
        report = build_report(lists, args.input_format)
    except DownloadError as err:
        raise SystemExit(f"download-report: {err}") from None
    write_json(report, args.out)
    t = report["total"]
    log.info("wrote %s: %s urls attempted, %s arrived, %s failed (%s to download, %s to resize)", args.out,
             t["attempted"], t["successes"], t["failed_count"], t["failed_to_download"], t["failed_to_resize"])
    for problem in report["problems"]:
        log.warning("%s", problem)
    if args.require_complete and not report["complete"]:
        raise SystemExit("download-report: the download did not finish (see above); run the download again: "
                         "img2dataset's incremental mode keeps the finished shards "
                         "(in the DAG: snakemake download_report --forcerun download)")


def cmd_fetch_weights(args) -> None:
    from sgmn.weights import fetch_weights, instructions, load_fetch_config, required_weights
    config = load_fetch_config(args.config)
    if args.list:
        needs = required_weights(config)
        for n in needs:
            print(f"{n.kind}\t{n.name}{'/' + n.tag if n.tag else ''}\t{n.key}\truns: {' '.join(n.runs)}")
        if not needs:
            print("nothing to fetch: no run of this config downloads weights")
        return
    if not args.out:
        raise SystemExit("fetch-weights: --out is required (except with --list)")
    manifest = fetch_weights(config, args.out, dest=args.dest, cache_dir=args.cache_dir, sources=args.config)
    print(instructions(manifest, args.out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sgmn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate LPR-Synth (LPR4M layout) or MF-Synth (MovingFashion layout)")
    s.add_argument("--preset", default="default", help="smoke (CI, seconds), default (CPU job), large (GPU)")
    s.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of preset, seed, knobs")
    s.add_argument("--out", required=True, help="output directory (written atomically; must not exist)")
    s.add_argument("--format", default="lpr4m", choices=["lpr4m", "movingfashion"])
    s.add_argument("--set", action="append", metavar="KNOB=VALUE", help="override a generator knob (docs/lpr_synth.md)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("resolve-config", help="write the full, validated config of one variant")
    s.add_argument("--config", help="base config YAML (e.g. workflow/config/default.yaml)")
    s.add_argument("--variant", default="gra_only", help="row of the variants file")
    s.add_argument("--variants", default=None, help="variants file (default sgmn/schemas/variants.yaml)")
    s.add_argument("--json", help="an already merged config as JSON (used by the DAG)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_resolve_config)

    s = sub.add_parser("pretrain-clip", help="contrastively pretrain the small CLIP on the training catalogue")
    s.add_argument("--config", required=True, help="resolved config (JSON) or config YAML")
    s.add_argument("--data", required=True, help="dataset root")
    s.add_argument("--out", required=True, help="state dict of the CLIP (loadable by open_clip)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    s.set_defaults(func=cmd_pretrain_clip)

    s = sub.add_parser("text-features", help="encode every ASR text and title once with the frozen text encoder")
    s.add_argument("--config", required=True, help="resolved config (JSON) or config YAML (text.*, model.clip)")
    s.add_argument("--data", required=True, help="dataset root")
    s.add_argument("--clip-weights", default="none",
                   help="weights of the CLIP text tower (text.encoder clip): a local state dict, 'openai', or 'none'")
    s.add_argument("--out", required=True, help="cache directory (features.npy, keys.npy, meta.json)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    s.set_defaults(func=cmd_text_features)

    s = sub.add_parser("train", help="train one (variant, seed) run; resumes from OUT/ckpt/latest.pt")
    s.add_argument("--config", required=True, help="resolved config (JSON) or config YAML")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--data", required=True, help="dataset root")
    s.add_argument("--clip-weights", default="none",
                   help="CLIP init: a local state dict, 'openai', or 'none' (random)")
    s.add_argument("--out", required=True, help="run directory (final.pt, train_log.jsonl, params.json)")
    s.add_argument("--text-features", help="text feature cache (the text_features step); needed when the method's te is on")
    s.add_argument("--frame-store", help=FRAME_STORE_HELP)
    s.add_argument("--init-checkpoint", help="another run's final.pt to start from (fine-tuning; same architecture)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    s.add_argument("--metrics-out", help="then evaluate final.pt in this process, as `sgmn evaluate --checkpoint` "
                                         "would, and write its metrics JSON here")
    s.add_argument("--scores-out", help="with --metrics-out: the score table (Parquet or CSV)")
    s.add_argument("--per-query-out", help="with --metrics-out: per-query ranks and hits")
    s.set_defaults(func=cmd_train)

    from sgmn.data.gallery_unit import GALLERY_UNITS  # light: the data layer's id rules only
    s = sub.add_parser("evaluate", help="score a checkpoint, or recompute metrics from a score table")
    s.add_argument("--data", required=True, help="dataset root (only its test files are read)")
    s.add_argument("--checkpoint", help="final.pt of a run")
    s.add_argument("--scores", help="long-format table (CSV or Parquet): video_id, image_id, score")
    s.add_argument("--format", choices=["lpr4m", "movingfashion"], help="default: detected from --data")
    s.add_argument("--gallery", choices=GALLERY_UNITS,
                   help="gallery unit (evaluate.gallery, docs/data_formats.md); default: the checkpoint's "
                        "run config, or all_images with --scores")
    s.add_argument("--out", required=True, help="metrics JSON")
    s.add_argument("--scores-out", help="where to save the score table (Parquet or CSV)")
    s.add_argument("--per-query-out", help="per-query ranks and hits (for paired tests)")
    s.add_argument("--text-features", help="text feature cache; needed by a model whose te is on")
    s.add_argument("--frame-store", help=FRAME_STORE_HELP)
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("gallery-stats", help="gallery sizes of a test split under each gallery unit (JSON)")
    s.add_argument("--data", required=True, help="dataset root (only its test files are read)")
    s.add_argument("--format", choices=["lpr4m", "movingfashion"], help="default: detected from --data")
    s.add_argument("--out", help="also write the JSON here")
    s.set_defaults(func=cmd_gallery_stats)

    s = sub.add_parser("frame-store", help="decode every frame, video and image of a dataset root once (uint8, memory-mapped)")
    s.add_argument("--data", required=True, help="dataset root (LPR4M or MovingFashion layout)")
    s.add_argument("--format", choices=["lpr4m", "movingfashion"], help="default: detected from --data")
    s.add_argument("--size", type=int, required=True, help="side in pixels: the model's model.image_size")
    s.add_argument("--num-frames", type=int, default=8, help="frames kept per video: the model's model.num_frames (videos only)")
    s.add_argument("--out", required=True, help="store directory (pixels.npy, index.json)")
    s.add_argument("--index", help="read the frames and images through this shard index (`sgmn index`)")
    s.set_defaults(func=cmd_frame_store)

    s = sub.add_parser("index", help="index img2dataset shards: frame / image id -> shard member; report the ids that did not arrive")
    s.add_argument("--shards", action="append", required=True, metavar="DIR",
                   help="an img2dataset output folder (NNNNN/ folders or NNNNN.tar files); repeat for several")
    s.add_argument("--data", required=True, help="the LPR4M root whose annotation files name the ids (missing-id report)")
    s.add_argument("--out", required=True, help="index directory (keys.npy, ..., meta.json, report.json, missing_ids.tsv)")
    s.add_argument("--id-pattern", help="regex with one named group `id` searched in each sidecar's url "
                                        "(default: the url's file name without suffix, LPR4M's .../{id}.jpg)")
    s.add_argument("--id-field", help="take the id from this sidecar field as it is (a url list's id column) instead of the url")
    s.add_argument("--link-layout", nargs="?", const="", metavar="DIR",
                   help="also hard-link LPR4M's layout (frames/{clip_id}/{frame_id}.jpg, images/{image_id}.jpg) "
                        "under DIR (default: --data) from files-format shards")
    s.add_argument("--processes", type=int, default=0, help="worker processes reading the shards (0: up to 8)")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("summarize", help="collect run metrics into one CSV (+ Markdown) table")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files of the runs")
    s.add_argument("--out", required=True, help="CSV path; a .md beside it")
    s.set_defaults(func=cmd_summarize)

    s = sub.add_parser("tables", help="the paper's Tables 1, 5, 6, 7 from the runs, diffed against the published numbers")
    s.add_argument("--runs", required=True, help="runs directory ({variant}/seed{seed}/metrics.json, per_query.parquet)")
    s.add_argument("--config", help="config YAML (seeds, seeds_by_variant, variants)")
    s.add_argument("--config-json", help="the same config as JSON (used by the DAG)")
    s.add_argument("--variants-file", help="variants file with the paper rows (default: the config's variants_file)")
    s.add_argument("--bench", help="directory of `sgmn bench --methods all` JSON files (Table 3); without it Table 3 lists the published rows only")
    s.add_argument("--paper-dir", help="published tables (default: the repository's workflow/paper)")
    s.add_argument("--table2-runs", help="runs of Table 2's dataset (config table2: its variants and seeds)")
    s.add_argument("--out", required=True, help="output directory: table{n}.csv, paired_tests.csv, tables.md")
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("diff", help="every published cell and claim of the paper beside our runs, with paired tests (diff.md, diff.json)")
    s.add_argument("--tables", required=True, help="the `sgmn tables` output directory (table{n}.csv, paired_tests.csv, ordering.csv)")
    s.add_argument("--runs", help="runs directory with per_query.parquet, for the paired tests paired_tests.csv lacks (without it those claims are `not run`)")
    s.add_argument("--table2-runs", help="runs of Table 2's dataset (MF-Synth), for its ordering CI and zero-shot claim")
    s.add_argument("--bench", help="directory of `sgmn bench --methods all` JSON files (default: the tables' table3.csv)")
    s.add_argument("--paper-dir", help="published tables (default: the repository's workflow/paper)")
    s.add_argument("--out-md", required=True, help="Markdown report (summary first)")
    s.add_argument("--out-json", required=True, help="the same, machine-readable, with provenance")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("data-stats", help="cheap statistics of a generated dataset, no training (data_stats.json)")
    s.add_argument("--data", required=True, help="LPR-Synth root (needs synth_meta.json)")
    s.add_argument("--text-features", required=True, help="text feature cache (the text_features step)")
    s.add_argument("--batch-size", type=int, help="training batch size B (default: --config's train.batch_size)")
    s.add_argument("--config", help="config YAML/JSON for the default batch size (default: workflow/config/default.yaml)")
    s.add_argument("--max-clips", type=int, help="clips per split read for the motion statistics (default 400)")
    s.add_argument("--seed", type=int, default=0, help="seed of the training-clip sample")
    s.add_argument("--out", required=True, help="JSON file (written atomically)")
    s.set_defaults(func=cmd_data_stats)

    s = sub.add_parser("curves", help="learning curves: R@1 against train.steps (curves.csv, figure)")
    s.add_argument("--runs", required=True, help="runs directory (results/{dataset}/runs)")
    s.add_argument("--spec-json", required=True, help="the config's curves block as JSON")
    s.add_argument("--out", required=True, help="curves.csv")
    s.add_argument("--figure", required=True, help="figure path without suffix (PNG and PDF)")
    s.add_argument("--margin", type=float, help="triplet margin: marks the collapse level 2 x margin on the loss panel")
    s.set_defaults(func=cmd_curves)
    s = sub.add_parser("fidelity-table", help="Table 7 (rows A-E) under fidelity paper and official, paired tests")
    s.add_argument("--runs", required=True, help="runs directory (results/{dataset}/runs)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    s.add_argument("--out", required=True, help="output directory (table7_fidelity.csv, paired_tests.csv, fidelity.md)")
    s.set_defaults(func=cmd_fidelity_table)
    s = sub.add_parser("probes", help="mechanism probes: each component on vs off along its phenomenon's axis (probes.csv, figures)")
    s.add_argument("--root", required=True, help="probe results (results/{dataset}/probes: {probe}/{point}/runs/{on,off}/seed{N})")
    s.add_argument("--config", help="config YAML with a probes block (e.g. workflow/config/probes.yaml)")
    s.add_argument("--spec-json", help="the probes block as JSON (used by the DAG)")
    s.add_argument("--out", required=True, help="CSV path; probes.md beside it")
    s.add_argument("--figures", help="figure directory ({probe}.png/.pdf; default: the spec's figures)")
    s.set_defaults(func=cmd_probes)

    # light: matplotlib and torch load when a figure's subcommand runs
    from sgmn.figures.cli import add_parser as add_figures_parser
    add_figures_parser(sub)
    s = sub.add_parser("report-page", help="a Markdown output (tables.md, diff.md) as an HTML page for snakemake --report")
    s.add_argument("--md", required=True, help="Markdown file")
    s.add_argument("--out", required=True, help="HTML file (written atomically)")
    s.add_argument("--title", help="page title (default: the file's stem)")
    s.set_defaults(func=cmd_report_page)

    from sgmn.bench import SCALES, VARIANTS as BENCH_VARIANTS  # light: torch loads per case
    s = sub.add_parser("bench", help="train-step time, peak memory and inference ms: SGMN against GRA only")
    s.add_argument("--scale", action="append", choices=sorted(SCALES),
                   help="tiny (the CPU default) and/or vitb32 (ViT-B/32, batch 8, 10 frames); both by default")
    s.add_argument("--variant", action="append", help=f"variants.yaml rows (default {' '.join(BENCH_VARIANTS)})")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up)")
    s.add_argument("--repeats", type=int, default=20, help="timed inference repeats")
    s.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    s.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="`all`: one variant per registered method (Table 3's rows); or the methods to time")
    s.add_argument("--inference-only", action="store_true", help="skip the train step (Table 3 needs inference only)")
    s.add_argument("--frames", action="append", choices=["all_real", "padded"],
                   help="all_real (every clip has all its frames; default) and/or padded (half the clips end 2 frames early)")
    s.add_argument("--precision", action="append", choices=["fp32", "bf16", "auto"],
                   help="precisions to time (default: the config's train.precision); auto is resolved per case and labelled")
    s.add_argument("--gallery", type=int, default=600, help="shop images each query is scored against (default 600, LPR4M's per-live gallery)")
    s.add_argument("--out", default="results/bench", help="directory of the JSON files ({sgmn|methods}_{scale}_{device}.json)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("diagnose", help="what each SGMN loss sends into the shared encoder (gradient shares, TMC residual)")
    s.add_argument("--run", action="append", required=True, help="a run directory (final.pt, params.json)")
    s.add_argument("--data", required=True, help="dataset root (its training split gives the batch)")
    s.add_argument("--text-features", help="text feature cache; needed by runs with sgmn.te")
    s.add_argument("--clip-weights", help="CLIP init of the runs (default: the one in params.json)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--out", required=True, help="JSON file")
    s.set_defaults(func=cmd_diagnose)

    s = sub.add_parser("paper-checks", help="validate the published tables (workflow/paper) and list the cells they contradict")
    s.add_argument("--dir", default=None, help="directory of the CSVs (default: the repository's workflow/paper)")
    s.add_argument("--write-checks", action="store_true", help="rewrite the checks column of every CSV")
    s.set_defaults(func=cmd_paper_checks)

    s = sub.add_parser("fetch-weights", help="download the pretrained weights a config needs (open_clip, ChineseCLIP) for machines without internet")
    s.add_argument("--config", nargs="+", required=True, metavar="FILE",
                   help="config YAML(s), layered on workflow/config/default.yaml as `snakemake --configfile` does "
                        "(e.g. workflow/config/lpr4m.yaml), or one resolved run config (JSON)")
    s.add_argument("--out", help="weights folder: open_clip/*.safetensors, chinese_clip/*/, manifest.json, config.yaml, SHA256SUMS")
    s.add_argument("--dest", help="where the folder will be on the machines without internet (default: OUT's absolute path); config.yaml's paths start there")
    s.add_argument("--cache-dir", help="download cache (default: the Hugging Face cache, $HF_HUB_CACHE or $HF_HOME/hub)")
    s.add_argument("--list", action="store_true", help="only list what the config's runs download")
    s.set_defaults(func=cmd_fetch_weights)

    s = sub.add_parser("download-report", help="counts and failed urls of img2dataset downloads (download_report.json)")
    s.add_argument("--list", nargs=3, action="append", required=True, metavar=("NAME", "FOLDER", "URL_LIST"),
                   help="a URL list's name, its img2dataset output folder, and the list itself ('-': unknown, "
                        "the urls not attempted are not counted); repeat per list")
    s.add_argument("--input-format", help="img2dataset's --input_format of the lists (default: from each file's suffix)")
    s.add_argument("--require-complete", action="store_true",
                   help="exit non-zero (after writing the report) when a shard did not finish or urls were not attempted")
    s.add_argument("--out", required=True, help="JSON report (written atomically)")
    s.set_defaults(func=cmd_download_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from sgmn.config import ConfigError
    from sgmn.data.records import AnnotationError
    from sgmn.io import OutputError
    from sgmn.evaluate.scores import ScoreTableError
    try:
        args.func(args)
    except (ConfigError, AnnotationError, ScoreTableError, OutputError, FileNotFoundError,
            FileExistsError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
