"""Fig. 6 of the paper ("Attention visualization with and without TE"): the video encoder's
attention on frames with products besides the intended one in view, for models trained without
and with the text branch (TE, Sec. 3.2, Eq. 4).

Two pairs that differ in TE alone: GRA against GRA + TE (Table 7 rows A and B), the paper's own
framing ("the video encoder in GRA equipped with or without the TE module"), and SGMN w/o TE
against SGMN (Table 1). TE does not feed the visual encoder at inference, and in GRA + TE its
loss trains only the text filter, so that pair's encoders can differ by training noise only;
in the full model SMF fuses the texts with the visual tokens (Eqs. 17-21), the one path by which
the text can change what the shared encoder attends to.

Attention map: the CLS token's attention over the patches in the last block of open_clip's vision
transformer, softmax(Q K^T / sqrt(d)) recomputed from the block's in_proj weights on the block's
input, which a forward pre-hook captures (open_clip calls nn.MultiheadAttention with
need_weights=False); averaged over heads, scaled to [0, 1] per frame, upsampled bilinearly and
overlaid on the frame.

Clips: test clips with the intended product and at least `min_distractors` other products in
one annotated frame (LPR-Synth's boxes; synth_meta.json says which box is the intended product),
shown at the frame with the most products in view. Shown: the first ones, in a fixed
pseudo-random order, where the last pair's model with TE ranks a right image first and the one
without does not (filled from the other clips when there are fewer). Bottom: over every such clip
(at most `max_clips`, the first in that order), the share of the CLS attention inside the
intended product's box and inside the other products' boxes, for each model, beside the share
of the frame those boxes cover (what uniform attention would give).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sgmn.figures.common import (
    RunRef,
    Written,
    annotated_frames,
    box_area,
    label,
    not_run,
    pyplot,
    save,
    stable_key,
)

if TYPE_CHECKING:  # for annotations only: the functions import these when they run
    import numpy as np
    import torch

TARGET, DISTRACTOR = "#1a9850", "#fd8d3c"


@dataclass(frozen=True)
class ViewFrame:
    """A frame of a test clip with the intended product (box `target`) among other products."""
    video_id: str
    path: Path
    target: tuple[float, float, float, float]
    others: tuple[tuple[float, float, float, float], ...]
    asr: str


def crowded_frames(queries, min_distractors: int = 2) -> list[ViewFrame]:
    """One frame per test clip that shows the intended product with at least `min_distractors`
    other products: the one with the most boxes (then the largest target box), in a fixed
    pseudo-random order of the clips."""
    out = []
    for clip in queries:
        views = [(len(boxes), box_area(boxes[t]), -i, path, boxes, t)
                 for i, (path, boxes, t) in enumerate(annotated_frames(clip))
                 if 0 <= t < len(boxes) and len(boxes) - 1 >= min_distractors]
        if views:
            *_, path, boxes, t = max(views)
            out.append(ViewFrame(clip.video_id, Path(path), tuple(boxes[t]),
                                 tuple(tuple(b) for i, b in enumerate(boxes) if i != t), clip.asr))
    return sorted(out, key=lambda v: stable_key(v.video_id))


def block_cls_attention(block, x: torch.Tensor) -> torch.Tensor:
    """CLS-to-token attention of an open_clip ResidualAttentionBlock on its input x (N, T, D),
    averaged over heads: (N, T - 1), each row summing to 1 - (CLS to itself)."""
    import torch.nn.functional as F

    attn = block.attn
    n, t, d = x.shape
    heads = attn.num_heads
    hd = d // heads
    h = block.ln_1(x)                                                   # (N, T, D)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h[:, :1], w[:d], None if b is None else b[:d])          # (N, 1, D)
    k = F.linear(h, w[d:2 * d], None if b is None else b[d:2 * d])       # (N, T, D)
    q = q.view(n, 1, heads, hd).transpose(1, 2)                         # (N, H, 1, hd)
    k = k.view(n, t, heads, hd).transpose(1, 2)                         # (N, H, T, hd)
    a = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)           # (N, H, 1, T)
    return a.mean(1)[:, 0, 1:]                                          # (N, T - 1)


def cls_attention(visual, images: torch.Tensor) -> torch.Tensor:
    """The last block's CLS attention over the patch grid of an open_clip VisionTransformer:
    images (N, 3, S, S) -> (N, gh, gw) (block_cls_attention on the block's input, captured
    with a forward pre-hook during one ordinary forward pass)."""
    import torch

    block = visual.transformer.resblocks[-1]
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["q_x"]

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            visual(images)
            x = captured["x"]
            if not block.attn.batch_first:
                x = x.transpose(0, 1)                                   # (T, N, D) -> (N, T, D)
            att = block_cls_attention(block, x)                         # (N, T - 1)
    finally:
        handle.remove()
    gh, gw = visual.grid_size
    return att[:, -gh * gw:].reshape(-1, gh, gw)                        # patches are the last tokens


def patch_coverage(boxes: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """Fraction of each patch cell covered by each normalised [x1, y1, x2, y2] box:
    (M, 4) -> (M, gh * gw), row-major like the patch tokens."""
    import numpy as np

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ys, xs = np.arange(gh) / gh, np.arange(gw) / gw
    ox = (np.minimum(boxes[:, None, 2], xs + 1 / gw) - np.maximum(boxes[:, None, 0], xs)).clip(0) * gw  # (M, gw)
    oy = (np.minimum(boxes[:, None, 3], ys + 1 / gh) - np.maximum(boxes[:, None, 1], ys)).clip(0) * gh  # (M, gh)
    return (oy[:, :, None] * ox[:, None, :]).reshape(len(boxes), gh * gw)


def region_masks(frame: ViewFrame, gh: int, gw: int) -> np.ndarray:
    """(2, gh * gw): per patch, the share in the intended product's box and the share in the
    other products' boxes (not counting what the target's box covers)."""
    import numpy as np

    target = patch_coverage(np.array(frame.target), gh, gw)[0]
    others = patch_coverage(np.array(frame.others), gh, gw).sum(0).clip(0, 1) if frame.others else 0 * target
    return np.stack([target, np.minimum(others, 1 - target)])


def load_frames(frames: list[ViewFrame], size: int) -> torch.Tensor:
    """The frames as the model reads them: (N, 3, size, size), CLIP-normalised."""
    import torch

    from sgmn.data.frames import read_image, to_tensor

    return torch.stack([to_tensor(read_image(f.path), size) for f in frames])


def model_attention(checkpoint: Path, frames: list[ViewFrame], batch: int = 256) -> np.ndarray:
    """(N, gh, gw) CLS attention of a trained run's visual encoder on `frames`."""
    import numpy as np

    from sgmn.models.factory import load_model

    model, state = load_model(checkpoint)
    model.eval()
    size = state["config"]["model"]["image_size"]
    out = [cls_attention(model.visual, load_frames(frames[i:i + batch], size)).numpy()
           for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros((0, *model.visual.grid_size))


def attention_shares(att: np.ndarray, frames: list[ViewFrame]) -> np.ndarray:
    """(N, 2): share of each frame's CLS attention in the target's box and in the others'."""
    import numpy as np

    n, gh, gw = att.shape
    masks = np.stack([region_masks(f, gh, gw) for f in frames])         # (N, 2, P)
    flat = att.reshape(n, 1, gh * gw)
    return (flat * masks).sum(-1) / flat.sum(-1)                          # (N, 2)


def area_shares(frames: list[ViewFrame], gh: int, gw: int) -> np.ndarray:
    """(N, 2): the frame area in the target's box and in the others' (uniform attention)."""
    import numpy as np

    return np.stack([region_masks(f, gh, gw).mean(-1) for f in frames])


def _hits(run: RunRef) -> dict[str, bool] | None:
    import pandas as pd

    path = run.file("per_query.parquet")
    if path is None:
        return None
    pq = pd.read_parquet(path, columns=["video_id", "hit@1"])
    return dict(zip(pq["video_id"].astype(str), pq["hit@1"].astype(bool)))


def pick_examples(frames: list[ViewFrame], without: dict | None, with_te: dict | None, n: int,
                  names: tuple[str, str] = ("without TE", "with TE")) -> tuple[list[int], str]:
    """Indices of `n` frames to show: where the model with TE is right at R@1 and the one
    without is not, in the frames' (stable) order, filled from the others; and how."""
    if without is None or with_te is None:
        return list(range(min(n, len(frames)))), "the first clips in a fixed pseudo-random order"
    fixed = [i for i, f in enumerate(frames) if with_te.get(f.video_id) and not without.get(f.video_id)]
    picked = fixed[:n]
    picked += [i for i in range(len(frames)) if i not in set(picked)][:n - len(picked)]
    return picked, (f"{min(n, len(fixed))} of the {len(fixed)} clips (of the {len(frames)} summed up below) "
                    "where only the model with TE "
                    f"({names[1]}, not {names[0]}) ranks a right image first, the first in a fixed "
                    "pseudo-random order")


def _overlay(ax, rgb, att, frame: ViewFrame, title: str, boxes: bool) -> None:
    import numpy as np

    h, w = rgb.shape[:2]
    ax.imshow(rgb, interpolation="nearest")
    if att is not None:
        a = (att - att.min()) / max(float(np.ptp(att)), 1e-12)
        ax.imshow(a, cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="bilinear")
    _boxes(ax, frame, w, h, lw=1.5 if boxes else 0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def _boxes(ax, frame: ViewFrame, w: int, h: int, lw: float) -> None:
    from matplotlib.patches import Rectangle

    for box, colour, ls in [(frame.target, TARGET, "-")] + [(b, DISTRACTOR, "--") for b in frame.others]:
        ax.add_patch(Rectangle((box[0] * w, box[1] * h), (box[2] - box[0]) * w, (box[3] - box[1]) * h,
                               fill=False, edgecolor=colour, lw=lw, ls=ls))


def _summary(ax, shares: list, area, runs: list[RunRef], of: int) -> None:
    """Mean attention share in the target's / others' boxes per model, 95% t-intervals over clips."""
    import numpy as np
    from scipy import stats

    regions = ["intended product's box", "other products' boxes"]
    x = np.arange(len(regions))
    width = 0.8 / max(1, len(runs))
    for k, (run, s) in enumerate(zip(runs, shares)):
        if s is None:
            continue
        mean = s.mean(0)
        half = stats.t.ppf(0.975, max(1, len(s) - 1)) * s.std(0, ddof=1) / np.sqrt(len(s)) if len(s) > 1 else 0 * mean
        ax.bar(x + (k - (len(runs) - 1) / 2) * width, mean, width * 0.9, yerr=half, capsize=3, color=f"C{k}",
               label=f"{label(run.variant)} ({run.variant})")
    if area is not None and len(area):
        for xi, a in zip(x, area.mean(0)):
            ax.hlines(a, xi - 0.45, xi + 0.45, colors="k", linestyles=":", label="area share (uniform attention)"
                      if xi == 0 else None)
    ax.set_xticks(x, regions, fontsize=8)
    ax.set_ylabel("share of CLS attention", fontsize=8)
    n = len(area) if area is not None else 0
    ax.set_title(f"{n} of the {of} clips with the product among other products (the first in the same order): "
                 "mean share, 95% CI", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot_attention(data: str | Path, runs: list[RunRef], out_base: str | Path, n_examples: int = 4,
                   min_distractors: int = 2, max_clips: int = 600, fmt: str = "lpr4m") -> Written:
    """Fig. 6 (module docstring); runs: pairs (without TE, with TE), their final.pt and, for
    choosing the examples by the last pair, per_query.parquet. A run without final.pt is a
    "not run" column."""
    if len(runs) < 2 or len(runs) % 2:
        raise ValueError(f"Fig. 6 compares pairs of runs (without TE, with TE); got {len(runs)} runs")
    from sgmn.data.frames import read_image
    from sgmn.data.splits import read_split

    plt = pyplot()
    candidates = crowded_frames(read_split(data, fmt, "test").queries, min_distractors)
    frames = candidates[:max_clips]
    ckpts = [r.file("final.pt") for r in runs]
    atts = [model_attention(c, frames) if c is not None and frames else None for c in ckpts]
    hits = [_hits(r) for r in runs]
    shown, how = pick_examples(frames, hits[-2], hits[-1], n_examples, (label(runs[-2].variant), label(runs[-1].variant)))
    rows = max(1, len(shown))
    fig = plt.figure(figsize=(2.3 * (1 + len(runs)) + 0.4, 2.4 * rows + 3.2), constrained_layout=True)
    gs = fig.add_gridspec(rows + 1, 1 + len(runs), height_ratios=[1] * rows + [1.3])
    for row, i in enumerate(shown):
        f, rgb = frames[i], read_image(frames[i].path)
        _overlay(fig.add_subplot(gs[row, 0]), rgb, None, f, _wrap(f"ASR: {f.asr}", 46), boxes=True)
        for k, (run, att) in enumerate(zip(runs, atts)):
            ax = fig.add_subplot(gs[row, 1 + k])
            if att is None:
                not_run(ax, label(run.variant), f"no final.pt for {run.variant}")
                continue
            hit = hits[k].get(f.video_id) if hits[k] is not None else None
            verdict = "" if hit is None else (" - top-1 right" if hit else " - top-1 wrong")
            _overlay(ax, rgb, att[i], f, f"{label(run.variant)}{verdict}", boxes=False)
    if not shown:
        not_run(fig.add_subplot(gs[0, :]), "", f"no test clip shows the product with {min_distractors}+ other products")
    gh_gw = next((a.shape[1:] for a in atts if a is not None), None)
    shares = [attention_shares(a, frames) if a is not None else None for a in atts]
    _summary(fig.add_subplot(gs[rows, :]), shares, area_shares(frames, *gh_gw) if gh_gw else None, runs,
             len(candidates))
    pairs = "; ".join(f"{label(a.variant)} vs {label(b.variant)}" for a, b in zip(runs[::2], runs[1::2]))
    fig.suptitle(_wrap(f"Fig. 6: last-block CLS attention of the video encoder without / with TE ({pairs}); "
                       f"green box: the intended product, orange dashed: other products. Clips: {how}", 120),
                 fontsize=8)
    missing = [r.variant for r, c in zip(runs, ckpts) if c is None]
    return Written(save(fig, out_base), not_run=missing, notes=[how] + [frames[i].video_id for i in shown])


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])
