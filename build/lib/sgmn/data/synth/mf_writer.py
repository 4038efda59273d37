"""MF-Synth in MovingFashion's layout: H.264 mp4 videos, `train.json` / `test.json` with tracklets."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from sgmn.data.synth import files
from sgmn.data.synth.config import SynthConfig
from sgmn.data.synth.files import LiveResult
from sgmn.data.synth.scene import ClipTruth
from sgmn.data.synth.world import Shop

MF_FPS = 10


def _rgb_to_yuv420p(img) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 as PyAV's planar layout: (1.5 H, W) uint8.

    Done here rather than by swscale: encoding `VideoFrame.from_image` frames gave bytes that
    varied from run to run.
    """
    rgb = np.asarray(img, np.float32)                                  # (H, W, 3)
    h, w = rgb.shape[:2]
    y = 16 + rgb @ np.array([65.481, 128.553, 24.966], np.float32) / 255
    c = rgb.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))         # (H/2, W/2, 3)
    u = 128 + c @ np.array([-37.797, -74.203, 112.0], np.float32) / 255
    v = 128 + c @ np.array([112.0, -93.786, -18.214], np.float32) / 255
    planes = [y.ravel(), u.ravel(), v.ravel()]
    out = np.concatenate([np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes])
    return out.reshape(h * 3 // 2, w)


def _write_mp4(frames, path: Path) -> None:
    """H.264 yuv420p, one thread, constant quantiser, so the bytes are reproducible.

    (x264's CRF rate control - its macroblock tree - gave run-to-run byte differences that
    depended on the process's memory history; constant QP has none.)
    """
    import av  # only MF-Synth needs PyAV

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=MF_FPS)
        stream.width, stream.height = frames[0].width, frames[0].height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"qp": "20", "preset": "veryfast", "threads": "1"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(img), format="yuv420p")
            frame.pts = i  # explicit timestamps: rate control and muxer see a fixed stream
            frame.time_base = Fraction(1, MF_FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def emit_clip(res: LiveResult, cfg: SynthConfig, shop: Shop, truth: ClipTruth, rng,
                  root: Path, test: bool) -> None:
    video_path = f"videos/{truth.clip_id}.mp4"
    _write_mp4(truth.frames, root / video_path)
    track = {str(f): boxes[k] for f, (boxes, k) in enumerate(zip(truth.boxes, truth.target_index)) if k >= 0}
    owners = [truth.target]
    # MovingFashion lists a few test videos under two products (two ground truths): here the
    # sold product's near-identical twin, as if the shop had listed one garment twice.
    twin = next(iter(shop.siblings.get(truth.target, ())), None)
    if test and twin is not None and rng.random() < cfg.mf_two_gt_rate:
        owners.append(twin)
    for i in owners:
        entry = res.mf_products[shop.products[i].product_id]
        entry["video_paths"].append(video_path)
        entry["tracklets"][video_path] = track


def write_index(root: Path, train: list[LiveResult], test: list[LiveResult]) -> None:
    """train.json keeps products with at least one video; test.json keeps every test product,
    since the test gallery is every test shop image."""
    files.write_json(root / "train.json", {pid: e for r in train for pid, e in r.mf_products.items()
                                      if e["video_paths"]})
    files.write_json(root / "test.json", {pid: e for r in test for pid, e in r.mf_products.items()})
