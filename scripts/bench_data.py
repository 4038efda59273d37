"""Time the training data path on one thread (not a test).

    python scripts/bench_data.py --data results/lpr_synth/data --frame-store results/lpr_synth/frames_64

Prints one JSON line: `normalise` of one clip's (8, 64, 64, 3) uint8 frames (ms), one training
pair read through `ClipPairDataset` from the frame store (ms per clip: frames, shop image,
boxes), and reading the training and test annotations (s). To time another copy of the suite
(e.g. an older commit), run from outside this checkout with PYTHONPATH=COPY.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _ms(fn, repeats: int) -> float:
    fn()                                                   # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an LPR4M-format root (LPR-Synth's results/lpr_synth/data)")
    ap.add_argument("--frame-store", required=True, help="its frame store (results/lpr_synth/frames_64)")
    ap.add_argument("--clips", type=int, default=320, help="training pairs read")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sgmn.data import lpr4m
    from sgmn.data.datasets import ClipPairDataset
    from sgmn.data.frame_store import open_store
    from sgmn.data.frames import normalise

    pixels = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    start = time.perf_counter()
    clips = lpr4m.read_training(args.data)
    read_training_s = time.perf_counter() - start
    start = time.perf_counter()
    lpr4m.read_test(args.data)
    read_test_s = time.perf_counter() - start
    dataset = ClipPairDataset(clips, 8, 64, store=open_store(args.frame_store, args.data))
    n = min(args.clips, len(dataset))
    print(json.dumps({
        "normalise_ms_per_clip": round(_ms(lambda: normalise(pixels), 200), 4),
        "pair_ms_per_clip": round(_ms(lambda: [dataset[i] for i in range(n)], 3) / n, 4),
        "read_training_s": round(read_training_s, 3), "read_test_s": round(read_test_s, 3),
        "clips": len(clips), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
