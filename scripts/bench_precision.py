"""Do fp32 and bf16 training give the same metrics? One short run per precision, same seed.

Trains `--variant`'s resolved config (the DAG's results/{ds}/configs/{variant}.json) once per
precision with the same seed, evaluates each, and pairs their per-query hits (McNemar, and
the two-level bootstrap CI of sgmn.evaluate.tables.paired_test). The tolerance is the run's
own seed noise: bf16 agrees with fp32 when their R@1 differ by less than twice the standard
deviation of fp32's R@1 over the reference seeds (`--reference-runs`, e.g. the DAG's three
seeds) and the paired test does not reject "no difference" at 0.05. Rounding in bf16 is one
more source of run-to-run variation; it should not move a metric more than a change of seed.

    python scripts/bench_precision.py --variant sgmn --seed 0 \
        --reference-runs results/lpr_synth/runs/sgmn --out results/bench/precision_agreement.json
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

from sgmn.evaluate.tables import paired_test
from sgmn.io import provenance, write_json


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def train_and_evaluate(config: dict, precision: str, args, work: Path) -> Path:
    """`sgmn train` then `sgmn evaluate` of the config at `precision`; returns the run dir."""
    out = work / precision
    cfg = {**config, "train": {**config["train"], "precision": precision}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    ds = Path(args.results)
    common = ["--data", str(ds / "data"), "--threads", str(args.threads),
              "--text-features", str(ds / "text"), "--frame-store", str(ds / args.frame_store)]
    run(["sgmn", "train", "--config", str(out / "config.json"), "--seed", str(args.seed),
         "--clip-weights", str(ds / "clip" / "pretrained.pt"), "--out", str(out), *common])
    run(["sgmn", "evaluate", "--checkpoint", str(out / "final.pt"), "--out", str(out / "metrics.json"),
         "--per-query-out", str(out / "per_query.parquet"), *common])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results/lpr_synth", help="the DAG's dataset results directory")
    ap.add_argument("--variant", default="sgmn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", action="append", help="default: fp32 and bf16")
    ap.add_argument("--reference-runs", help="runs/{variant} of the DAG: seed*/metrics.json give the seed noise")
    ap.add_argument("--frame-store", default="frames_64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/sgmn_precision")
    ap.add_argument("--out", default="results/bench/precision_agreement.json")
    args = ap.parse_args()
    config = json.loads((Path(args.results) / "configs" / f"{args.variant}.json").read_text())
    precisions = args.precision or ["fp32", "bf16"]
    runs = {p: train_and_evaluate(config, p, args, Path(args.work)) for p in precisions}
    r1 = {p: json.loads((d / "metrics.json").read_text())["overall"]["R@1"] for p, d in runs.items()}
    per_query = {p: {args.seed: pd.read_parquet(d / "per_query.parquet")} for p, d in runs.items()}
    test = paired_test(per_query[precisions[0]], per_query[precisions[1]])
    out = {"variant": args.variant, "seed": args.seed, "R@1": r1,
           "paired": {k: test[k] for k in ("diff", "ci_low", "ci_high", "p_mcnemar", "n_pairs")}}
    if args.reference_runs:
        seeds = {int(p.parent.name.removeprefix("seed")): json.loads(p.read_text())["overall"]["R@1"]
                 for p in sorted(Path(args.reference_runs).glob("seed*/metrics.json"))}
        sd = statistics.stdev(seeds.values()) if len(seeds) > 1 else None
        out["reference"] = {"R@1_by_seed": seeds, "seed_sd": sd,
                            "tolerance": None if sd is None else 2 * sd}
        out["agrees"] = (sd is not None and abs(test["diff"]) < 2 * sd and test["p_mcnemar"] >= 0.05)
    out["provenance"] = provenance(config, args.seed)
    write_json(out, args.out)
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
