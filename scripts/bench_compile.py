"""Does torch.compile pay for a training run on this machine? Eager against compiled, same model.

Times the first compiled step (compilation included) and the median of the following steps,
against eager, for one variant at one bench scale; prints JSON. The break-even step count is
compile overhead / per-step saving, to compare with the run's train.steps.

    python scripts/bench_compile.py --scale tiny --variant sgmn --threads 1 --steps 10
"""
import argparse
import json
import statistics
import time

import torch

from sgmn.bench import TEXT_DIM, bench_config, synthetic_batch
from sgmn.models.factory import build_model
from sgmn.train.loop import optimise
from sgmn.train.optim import build_optimizer


def timed_steps(model, config, steps: int) -> list[float]:
    t = config["train"]
    opt = build_optimizer(model, t["optimizer"], t["lr"], t["weight_decay"], t["clip_lr_scale"], t["freeze_stem"])
    params = [p for g in opt.param_groups for p in g["params"]]
    batch = synthetic_batch(config, TEXT_DIM.get(config["model"]["clip"], 512), torch.device("cpu"),
                            torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        optimise(model(batch), opt, params, t["grad_clip"], step=0)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--variant", default="sgmn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = bench_config(args.scale, args.variant, "cpu")
    out = {"scale": args.scale, "variant": args.variant, "threads": args.threads, "torch": torch.__version__}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build_model(config, "none", TEXT_DIM.get(config["model"]["clip"], 512)).train()
        if name == "compiled":
            model = torch.compile(model, mode=args.mode)
        times = timed_steps(model, config, args.steps)
        out[name] = {"first_step_s": round(times[0], 2), "median_step_ms": round(1000 * statistics.median(times[1:]), 1)}
    saving = out["eager"]["median_step_ms"] - out["compiled"]["median_step_ms"]
    overhead = 1000 * (out["compiled"]["first_step_s"] - out["eager"]["first_step_s"])
    out["break_even_steps"] = round(overhead / saving) if saving > 0 else None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
