"""`sgmn figures FIGURE ...`: one subcommand per figure, each writing OUT.png and OUT.pdf (the
DAG's rules in workflow/rules/figures.smk run exactly these):

    sgmn figures retrieval --data results/lpr_synth/data --run sgmn=results/lpr_synth/runs/sgmn/seed0 \\
        --run gra_only=results/lpr_synth/runs/gra_only/seed0 --out figures/fig5_retrieval
    sgmn figures attention --data results/lpr_synth/data --run gra_only=RUN --run t7_te=RUN \\
        --run sgmn_wo_te=RUN --run sgmn=RUN --out figures/fig6_attention
    sgmn figures twins --data results/lpr_synth/data --run t7_te_tmc_gci=RUN --run sgmn=RUN --out figures/fig7b_twins
    sgmn figures table4 --table results/lpr_synth/tables/table4.csv --out figures/table4_subsets
    sgmn figures table5 --table results/lpr_synth/tables/table5.csv --out figures/table5_beta
    sgmn figures table6 --table results/lpr_synth/tables/table6.csv --out figures/table6_graphs
    sgmn figures training --run-dir results/lpr_synth/runs/sgmn/seed0 ... --out figures/training_curves
    sgmn figures probes --probe gci=figures/probes/gci.png ... --out figures/probes_overview

RUN is a run directory (final.pt, scores.parquet, per_query.parquet); `VARIANT=-` marks a variant
that the DAG does not run, drawn as "not run". Imports here are light: each figure's module
(matplotlib, torch) loads when its subcommand runs.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("sgmn")

RUN_HELP = "VARIANT=RUN_DIR (RUN_DIR '-': not run by this DAG, drawn as 'not run')"


def _runs(values: list[str]):
    from sgmn.figures.common import RunRef
    try:
        return [RunRef.parse(v) for v in values]
    except ValueError as err:
        raise SystemExit(f"figures: --run: {err}") from None


def _report(written) -> None:
    for path in written.paths:
        log.info("wrote %s", path)
    if written.not_run:
        log.warning("panels drawn as not run / without data: %s", ", ".join(written.not_run))
    for note in written.notes:
        log.info("%s", note)


def _set_threads(n: int) -> None:
    if n > 0:
        import torch
        torch.set_num_threads(n)


def cmd_retrieval(args) -> None:
    from sgmn.figures.retrieval import plot_retrieval
    runs = _runs(args.run)
    if len(runs) != 2:
        raise SystemExit("figures retrieval: give two --run (e.g. sgmn and gra_only)")
    _report(plot_retrieval(args.data, runs, args.out, args.queries, args.format))


def cmd_attention(args) -> None:
    from sgmn.figures.attention import plot_attention
    runs = _runs(args.run)
    if len(runs) < 2 or len(runs) % 2:
        raise SystemExit("figures attention: give pairs of --run, each without TE then with TE")
    _set_threads(args.threads)
    _report(plot_attention(args.data, runs, args.out, args.examples, args.min_distractors, args.max_clips,
                           args.format))


def cmd_twins(args) -> None:
    from sgmn.figures.twins import plot_twins
    runs = _runs(args.run)
    if len(runs) != 2:
        raise SystemExit("figures twins: give two --run (without SMF, then with it)")
    _report(plot_twins(args.data, runs, args.out, args.groups, args.max_size, args.format))


def cmd_table(args) -> None:
    from sgmn.figures import ablations
    plot = {"table4": ablations.plot_table4, "table5": ablations.plot_table5,
            "table6": ablations.plot_table6}[args.figure]
    _report(plot(args.table, args.out))


def cmd_training(args) -> None:
    from sgmn.figures.training import plot_training
    _report(plot_training([Path(r) for r in args.run_dir], args.out))


def cmd_probes(args) -> None:
    from sgmn.figures.montage import plot_montage
    figures = {}
    for value in args.probe:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"figures probes: --probe expects NAME=PNG, got '{value}'")
        figures[name] = Path(path)
    _report(plot_montage(figures, args.out, args.title))


def add_parser(sub) -> None:
    """The `figures` subcommand and its one subcommand per figure."""
    p = sub.add_parser("figures", help="the paper's Figs. 5, 6, 7b, Tables 4-6 as charts, training curves, "
                                       "probe figures (PNG + PDF)")
    figs = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    def figure(name: str, help_text: str, func, data: bool = False):
        s = figs.add_parser(name, help=help_text)
        s.add_argument("--out", required=True, help="OUT.png and OUT.pdf are written (OUT may end in .png)")
        if data:
            s.add_argument("--data", required=True, help="dataset root of the runs' test split (LPR4M layout)")
            s.add_argument("--format", default="lpr4m", choices=["lpr4m", "movingfashion"])
            s.add_argument("--run", action="append", required=True, help=RUN_HELP)
        s.set_defaults(func=func)
        return s

    figure("retrieval", "Fig. 5: query clips with two models' top-3 shop images (scores.parquet)",
           cmd_retrieval, data=True).add_argument("--queries", type=int, default=4, help="queries shown (rows)")
    s = figure("attention", "Fig. 6: last-block CLS attention without / with TE (final.pt; per_query.parquet "
                            "picks the examples)", cmd_attention, data=True)
    s.add_argument("--examples", type=int, default=4, help="clips shown (rows)")
    s.add_argument("--min-distractors", type=int, default=2,
                   help="other products in the frame beside the intended one (default 2)")
    s.add_argument("--max-clips", type=int, default=600, help="clips in the attention-share summary (default 600)")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    s = figure("twins", "Fig. 7b: near-twin clips x shop images, scores without / with SMF (scores.parquet)",
               cmd_twins, data=True)
    s.add_argument("--groups", type=int, default=3, help="twin groups shown as heatmaps")
    s.add_argument("--max-size", type=int, default=4, help="products shown per group")
    for n, what in ((4, "R@1 by subset, grouped bars"), (5, "R@1 against beta1 (the beta curve)"),
                    (6, "R@1 of each graph combination")):
        figure(f"table{n}", f"Table {n} as a chart: {what}, 95%% CIs (tables/table{n}.csv)",
               cmd_table).add_argument("--table", help=f"table{n}.csv of `sgmn tables` (missing: 'not run')")
    figure("training", "training loss against step, one panel per variant (train_log.jsonl)",
           cmd_training).add_argument("--run-dir", nargs="*", default=[], help="run directories .../runs/VARIANT/seedN")
    s = figure("probes", "the mechanism probes' figures in one (missing: 'not run')", cmd_probes)
    s.add_argument("--probe", action="append", default=[], help="NAME=PNG of a probe figure")
    s.add_argument("--title", default="Mechanism probes: each component on vs off along its phenomenon")
