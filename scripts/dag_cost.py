"""What a finished DAG run cost, per rule, from Snakemake's `benchmarks/**/*.tsv` (not a test).

    python scripts/dag_cost.py [--benchmarks benchmarks] [--log dag.log] [--json out.json]
    python scripts/dag_cost.py --peak    # the machine's fp32 matmul peak now; run before and after a DAG

Per rule: jobs, the sum of their wall seconds (`s`) and CPU seconds (`cpu_time`: user + system
of the job's processes, sampled by Snakemake), and the median job. With `--log` (the output of
`snakemake --cores N`), also the run's wall clock from the first job's start to the last job's
finish, read from the timestamps Snakemake prints. Rules run side by side, so the wall sums add
up to more than the wall clock; the CPU sum over the cores is the floor a run can reach.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def job_costs(root: Path) -> dict[str, list[tuple[float, float]]]:
    """rule -> [(wall s, cpu s)] of its jobs (the last line of each benchmark file)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(root.rglob("*.tsv")):
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        if not rows:
            continue
        rule = path.relative_to(root).parts[0]
        cpu = rows[-1].get("cpu_time") or "0"
        out.setdefault(rule, []).append((float(rows[-1]["s"]), float(cpu)))
    return out


def wall_clock(log: Path) -> float | None:
    """Seconds from the first to the last timestamp of a Snakemake log, or None."""
    stamps = [datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
              for line in log.read_text(errors="replace").splitlines() if (m := STAMP.match(line.strip()))]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


def summary(costs: dict[str, list[tuple[float, float]]], wall: float | None) -> dict:
    rules = {rule: {"jobs": len(jobs), "wall_s": round(sum(w for w, _ in jobs), 1),
                    "cpu_s": round(sum(c for _, c in jobs), 1),
                    "median_job_wall_s": round(statistics.median(w for w, _ in jobs), 1)}
             for rule, jobs in costs.items()}
    return {"rules": dict(sorted(rules.items(), key=lambda kv: -kv[1]["cpu_s"])),
            "total_cpu_min": round(sum(r["cpu_s"] for r in rules.values()) / 60, 1),
            "total_job_wall_min": round(sum(r["wall_s"] for r in rules.values()) / 60, 1),
            "wall_clock_min": None if wall is None else round(wall / 60, 1)}


def machine_peak() -> dict[str, float]:
    """fp32 GFLOP/s of a 2048^3 matmul on 1 and 2 threads (sgmn.bench.matmul_peak): this
    machine's speed varies by up to 2x within an hour, so a DAG's wall clock is read beside it."""
    import torch

    from sgmn.bench import matmul_peak
    peaks = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks[f"fp32_gflops_{threads}_thread"] = matmul_peak("fp32", torch.device("cpu"))
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peak", action="store_true", help="only print the machine's fp32 matmul peak now (JSON)")
    ap.add_argument("--benchmarks", type=Path, default=Path("benchmarks"))
    ap.add_argument("--log", type=Path, help="the output of `snakemake --cores N` for the run's wall clock")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    if args.peak:
        print(json.dumps(machine_peak()))
        return
    result = summary(job_costs(args.benchmarks), wall_clock(args.log) if args.log else None)
    print(f"{'rule':24s} {'jobs':>5s} {'wall min':>9s} {'CPU min':>8s} {'median job s':>13s}")
    for rule, r in result["rules"].items():
        print(f"{rule:24s} {r['jobs']:5d} {r['wall_s'] / 60:9.1f} {r['cpu_s'] / 60:8.1f} {r['median_job_wall_s']:13.1f}")
    print(f"total: {result['total_cpu_min']} CPU min, {result['total_job_wall_min']} job-wall min"
          + (f", {result['wall_clock_min']} min wall clock" if result["wall_clock_min"] is not None else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
