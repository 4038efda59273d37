"""Scene simulation: what one clip shows, frame by frame, and what an annotator would box."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sgmn.data.synth import render as R
from sgmn.data.synth.config import SynthConfig
from sgmn.data.synth.world import Shop

SHOP_SCALE = 0.8          # shop images: silhouette spans 80% of the image


@dataclass
class ClipTruth:
    """What a clip shows and what an annotator would box."""
    clip_id: str
    frame_ids: list[str]
    frames: list                    # PIL images at output size
    boxes: list[list[list[float]]]  # per frame, every visible product, in the clip's slot order
    target_index: list[int]         # per frame, index of the sold product's box or -1
    target: int                     # product index in the shop
    distractors: list[int]


def _host_frames(cfg: SynthConfig, rng, n_frames: int) -> np.ndarray:
    """A contiguous stretch where the camera is on the host only (skewed to short stretches)."""
    lo, hi = cfg.host_shots
    n = int(round((lo + (hi - lo) * rng.random() ** 2) * n_frames))
    mask = np.zeros(n_frames, bool)
    if n:
        start = int(rng.integers(0, n_frames - n + 1))
        mask[start:start + n] = True
    return mask


def _random_pose(cfg: SynthConfig, rng, g: float, cx: float, cy: float, size: float) -> R.Pose:
    return R.Pose(cx=cx, cy=cy, size=size,
                  angle=rng.uniform(-1, 1) * cfg.rotation * g,
                  shear=rng.uniform(-1, 1) * cfg.shear * g,
                  squash=1.0 - rng.uniform(0, 1) * cfg.perspective * g,
                  tilt=rng.uniform(-1, 1) * cfg.perspective * g,
                  flip=bool(rng.random() < min(1.0, cfg.flip_rate * g)))


def _occlusion_events(cfg: SynthConfig, rng, product_frames: np.ndarray, boost: float) -> dict[int, str]:
    """frame -> 'out' | 'hand_full' | 'hand_partial' for the sold product."""
    if rng.random() >= min(1.0, cfg.occlusion_rate * boost) or not product_frames.size:
        return {}
    frac = rng.uniform(*cfg.occluded_frames)
    n = int(round(frac * product_frames.size))
    frames = rng.choice(product_frames, size=n, replace=False) if n else []
    events = {}
    for f in sorted(int(x) for x in frames):
        if rng.random() < cfg.occlusion_full_rate:
            events[f] = "out" if rng.random() < 0.5 else "hand_full"
        else:
            events[f] = "hand_partial"
    return events


@dataclass
class Trajectory:
    """The sold product's motion over a clip: a base pose, a drift, a zoom, a spin, a wobble."""
    base: R.Pose
    start: np.ndarray   # (2,) centre at t = 0
    move: np.ndarray    # (2,) displacement from t = 0 to t = 1
    zoom: float         # relative size change from t = 0 to t = 1
    spin: float         # rotation change (deg) from t = 0 to t = 1
    phase: np.ndarray   # (2,) phase of a small hand wobble

    @classmethod
    def sample(cls, cfg: SynthConfig, rng, g: float) -> "Trajectory":
        size = rng.uniform(*cfg.scale)
        return cls(base=_random_pose(cfg, rng, g, 0.5, 0.5, size),
                   start=rng.uniform(0.3, 0.7, 2),
                   move=rng.uniform(-1, 1, 2) * cfg.motion * g,
                   zoom=rng.uniform(-1, 1) * cfg.motion_zoom * g,
                   spin=rng.uniform(-1, 1) * cfg.motion_rotation * g,
                   phase=rng.uniform(0, 2 * math.pi, 2))

    def at(self, t: float, shake: np.ndarray) -> R.Pose:
        cx, cy = self.start + self.move * t + 0.015 * np.sin(2 * math.pi * t + self.phase) + shake
        return dataclasses.replace(self.base, cx=cx, cy=cy, size=self.base.size * (1 + self.zoom * t),
                                   angle=self.base.angle + self.spin * t)


def _apply_event(event: str | None, pose: R.Pose, rng, res: int, skin: R.RGB):
    """The sold product's pose and the hands in front of it for one frame's occlusion event."""
    if event == "out":  # the host swings it out of the picture
        off = 0.5 + 0.75 * pose.size
        cx, cy = [(0.5 - off, pose.cy), (0.5 + off, pose.cy), (pose.cx, 0.5 - off),
                  (pose.cx, 0.5 + off)][int(rng.integers(4))]
        return dataclasses.replace(pose, cx=cx, cy=cy), []
    if event == "hand_full":
        return pose, [R.Occluder(pose.cx * res, pose.cy * res, 0.8 * pose.size * res, skin)]
    if event == "hand_partial":  # a hand over one side of it
        a = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(0.25, 0.45) * pose.size * res
        return pose, [R.Occluder((pose.cx + 0.45 * pose.size * math.cos(a)) * res,
                                 (pose.cy + 0.45 * pose.size * math.sin(a)) * res, r, skin)]
    return pose, []


def simulate_clip(cfg: SynthConfig, shop: Shop, sprites: list[R.Sprite], rng: np.random.Generator,
                  clip_id: str, n_frames: int, target: int, hard: bool = False) -> ClipTruth:
    """Render one clip selling product `target` of `shop`, with the boxes of every product."""
    res = 2 * cfg.image_size
    n_products = len(shop.products)
    g = cfg.gap * (1.5 if hard else 1.0)
    n_dis = min(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)) + (3 if hard else 0),
                n_products - 1)
    others = [i for i in range(n_products) if i != target]
    distractors = [others[i] for i in rng.choice(len(others), size=n_dis, replace=False)]
    n_members = n_dis + 1
    slot = rng.permutation(n_members)  # order of boxes within a frame, random per clip
    target_slot = int(slot[-1])        # members are distractors then the target, back to front

    path = Trajectory.sample(cfg, rng, g)
    # Distractors stand still on the table: warp each once, then move it with the camera shake.
    dis_placed = [R.place(sprites[i], _random_pose(cfg, rng, g, *rng.uniform(0.08, 0.92, 2),
                                                   path.base.size * rng.uniform(*cfg.distractor_scale)),
                          res, margin=res // 4) for i in distractors]
    host = _host_frames(cfg, rng, n_frames)
    events = _occlusion_events(cfg, rng, np.flatnonzero(~host), 1.5 if hard else 1.0)
    skin = R.SKIN[int(rng.integers(len(R.SKIN)))]
    bg = R.background(rng, res, shop.palette, shop.noise, close_host=False)
    bg_host = R.background(rng, res, shop.palette, shop.noise, close_host=True) if host.any() else None
    lut = R.illumination_lut(brightness=rng.uniform(-1, 1) * cfg.brightness * g,
                             contrast=1.0 + (rng.uniform(*cfg.contrast) - 1.0) * g,
                             cast=1.0 + rng.uniform(-1, 1, 3) * cfg.color_cast * g)
    blur = rng.uniform(*cfg.blur) * g

    frames, boxes, target_index = [], [], []
    for f in range(n_frames):
        shake = rng.normal(0, cfg.shake * g, 2)
        frame_blur = blur * rng.uniform(0.6, 1.4)
        if host[f]:
            img, slot_boxes = bg_host, [None] * n_members
        else:
            pose = path.at(f / max(1, n_frames - 1), shake)
            pose, hands = _apply_event(events.get(f), pose, rng, res, skin)
            dx, dy = (int(v) for v in np.rint(shake * res))
            items = [(int(slot[k]), R.shifted(pl, dx, dy)) for k, pl in enumerate(dis_placed)]
            items.append((target_slot, R.place(sprites[target], pose, res)))
            img, slot_boxes = R.compose(bg, items, hands, cfg.min_visible, n_members)
        frames.append(R.finish(img, cfg.image_size, lut, frame_blur))
        visible = [s for s in range(n_members) if slot_boxes[s] is not None]
        boxes.append([slot_boxes[s] for s in visible])
        target_index.append(visible.index(target_slot) if target_slot in visible else -1)
    frame_ids = [f"{clip_id}-{f:04d}" for f in range(n_frames)]
    return ClipTruth(clip_id, frame_ids, frames, boxes, target_index, target, distractors)


def shop_images(cfg: SynthConfig, shop: Shop, sprites: list[R.Sprite], rng: np.random.Generator):
    """(image_id, PIL image) of every shop image: centred canonical views, and second views
    photographed at another angle and crop."""
    res = 2 * cfg.image_size
    bg = R.shop_background(res, shop.shop_bg)
    out = []
    for p, sprite in zip(shop.products, sprites):
        img, _ = R.compose(bg, [(0, R.place(sprite, R.Pose(0.5, 0.5, SHOP_SCALE), res))], [], 0.0, 1)
        out.append((p.image_id, R.finish(img, cfg.image_size, None, 0.0)))
        if p.second_image_id:
            pose = R.Pose(*(0.5 + rng.uniform(-0.06, 0.06, 2)), SHOP_SCALE * rng.uniform(0.85, 1.15),
                          angle=rng.choice([-1, 1]) * rng.uniform(10, 30))
            img, _ = R.compose(bg, [(0, R.place(sprite, pose, res))], [], 0.0, 1)
            out.append((p.second_image_id, R.finish(img, cfg.image_size, None, 0.0)))
    return out
