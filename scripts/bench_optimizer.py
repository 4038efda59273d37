"""Time one Adam(W) step over a model's parameters: torch's per-tensor loop, foreach and fused.

    python scripts/bench_optimizer.py --scale tiny --threads 1
"""
import argparse
import json
import time

import torch

from sgmn.bench import bench_config
from sgmn.models.factory import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny", choices=("tiny", "vitb32"))
    ap.add_argument("--variant", default="sgmn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(bench_config(args.scale, args.variant, "cpu"), "none", 512 if args.scale == "vitb32" else 128)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {"scale": args.scale, "variant": args.variant, "threads": args.threads,
           "parameters": sum(p.numel() for p in params), "ms_per_step": {}}
    for name, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, 1e-4, **kw)
        opt.step()                                      # the moments' allocation is not timed
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.step()
        out["ms_per_step"][name] = round(1000 * (time.perf_counter() - t0) / args.steps, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
