"""LPR-Synth and MF-Synth: procedural livestreaming product retrieval benchmarks.

The paper (SGMN, ACM MM 2024) names three dilemmas of livestreaming product retrieval; each
is a phenomenon of this simulator with its own knobs (`SynthConfig`):

1. **Distractor products.** A livestream (= shop) shows several of its own products at once;
   clips contain the sold product plus 0..k other products of the same shop (`distractors`).
2. **Clip/shop appearance gap.** Shop images are clean canonical views; clips see the product
   rotated, sheared and foreshortened (viewpoint), at a clip-specific size (scale), under
   another exposure and white balance (illumination), moving (motion), blurred, partly or fully
   hidden by a hand or leaving the frame (occlusion), and absent during host-only shots.
   One multiplier, `gap`, scales every magnitude at once.
3. **Near-identical products.** Shops focus on one or two categories, and a product may be a
   copy of another product of its shop that differs in one small attribute - the trim colour
   or a badge only a few pixels wide (`near_duplicate_rate`).

Clips also carry ASR text naming some of the sold product's attributes with recognition errors
(and sometimes a distractor's), and per-frame boxes of every visible product, so LPR4M's
scale / visible-duration / product-count subsets exist here with the same thresholds.

The data are written in the real datasets' layouts (docs/data_formats.md): LPR-Synth as LPR4M
(JPEG frames, tab-separated training file, test json files), MF-Synth as MovingFashion (H.264
mp4 videos, train.json / test.json; one category of garments, no text). The real loaders hence
run on every synthetic experiment.

Determinism: every livestream draws from its own `numpy.random.Generator(PCG64)` seeded by
`SeedSequence(seed, spawn_key=(split, live, 0))`, and every clip from `(split, live, 1, clip)`, so
output bytes depend only on (preset, seed, overrides, format) and not on the order of work or
the number of worker processes. Ids are UUIDs drawn from these generators; JSON is written with
sorted keys; JPEGs have a fixed quality; nothing records a time.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from sgmn.data import synth_render as R
from sgmn.data import synth_text as T
from sgmn.data.subsets import subset_labels

GENERATOR_VERSION = 1
FORMATS = ("lpr4m", "movingfashion")
TRAIN, TEST = 0, 1
TRAIN_FRAME_MS, TEST_FRAME_MS = 1000, 3000  # LPR4M: 1 fps training frames, 1 frame / 3 s test
MF_FPS = 10
SHOP_SCALE = 0.8          # shop images: silhouette spans 80% of the image
CLIP_SLOT_MS = 120_000    # clip k of a live starts in [k * slot, k * slot + slot / 4)


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Ranges are inclusive (lo, hi) and drawn uniformly per clip
    unless the comment says otherwise; magnitudes marked [gap] are multiplied by `gap`."""
    # --- sizes
    image_size: int = 64                      # side (px) of frames and shop images; drawn at 2x
    train_lives: int = 40                     # training livestreams (= shops)
    train_products: int = 12                  # products per training shop
    train_clips_per_live: int = 100           # training clips per shop
    train_frames: tuple[int, int] = (6, 12)   # frames per training clip (1 fps); < 10 exercises padding
    test_lives: int = 12                      # test livestreams, disjoint from the training ones
    test_products: int = 16                   # products per test shop (gallery = their images)
    test_clips_per_live: int = 34             # test queries per shop
    test_frames: int = 10                     # frames per test clip (1 per 3 s), all annotated
    mf_train_clips_per_live: int = 40         # MF-Synth training videos per shop (longer than clips)
    mf_frames: tuple[int, int] = (16, 24)     # MF-Synth frames per video (10 fps)
    # --- shops: near-identical products (dilemma 3)
    categories_per_live: tuple[int, int] = (1, 2)  # focus categories of a shop
    category_focus: float = 0.85              # P(product of a focus category), else any category
    near_duplicate_rate: float = 0.25         # P(product = a shop product with another badge / trim)
    second_view_rate: float = 0.3             # P(test product has a 2nd, rotated + re-cropped image)
    # --- distractors (dilemma 1)
    distractors: tuple[int, int] = (0, 10)    # other shop products in a clip (<= products - 1)
    distractor_scale: tuple[float, float] = (0.45, 0.85)  # their size relative to the sold product
    # --- clip/shop appearance gap (dilemma 2)
    gap: float = 1.0                          # multiplies every [gap] magnitude; 0 = no gap
    scale: tuple[float, float] = (0.22, 0.95)  # sold product's size (extent / frame side) per clip
    rotation: float = 35.0                    # [gap] max |in-plane rotation| (deg) of each product
    shear: float = 0.25                       # [gap] max |affine shear|
    perspective: float = 0.35                 # [gap] max foreshortening (yaw squash, pitch tilt)
    flip_rate: float = 0.3                    # [gap] P(product seen mirrored); capped at 1
    brightness: float = 40.0                  # [gap] max |exposure offset| (0-255 scale)
    contrast: tuple[float, float] = (0.7, 1.3)  # [gap] contrast factor (its deviation from 1 scaled)
    color_cast: float = 0.15                  # [gap] max |white-balance gain - 1| per channel
    blur: tuple[float, float] = (0.0, 1.0)    # [gap] gaussian sigma (output px) per clip, x0.6-1.4 per frame
    motion: float = 0.25                      # [gap] max drift of the sold product over a clip (frame units)
    motion_zoom: float = 0.25                 # [gap] max relative size change over a clip
    motion_rotation: float = 20.0             # [gap] max rotation change over a clip (deg)
    shake: float = 0.02                       # [gap] std of per-frame camera shake (frame units)
    occlusion_rate: float = 0.4               # P(clip has occlusion events)
    occluded_frames: tuple[float, float] = (0.1, 0.6)  # in such clips, fraction of frames with one
    occlusion_full_rate: float = 0.5          # P(event hides it: big hand or out of frame), else partial
    host_shots: tuple[float, float] = (0.0, 0.7)  # fraction of host-only frames: lo + (hi-lo) * u^2
    min_visible: float = 0.3                  # a product is boxed when >= this fraction is visible
    noise: float = 5.0                        # std of background sensor noise (0-255 scale)
    # --- ASR text
    asr_empty_rate: float = 0.03              # P(empty ASR)
    asr_error_rate: float = 0.1               # P(word substituted / dropped / followed by an insertion)
    asr_distractor_rate: float = 0.15         # P(ASR also names a distractor's colour and category)
    asr_attributes: tuple[int, int] = (1, 4)  # how many of the sold product's attributes are named
    # --- MF-Synth
    mf_hard_rate: float = 0.3                 # P(product is "hard", source 2): +3 distractors, gap x1.5
    mf_two_gt_rate: float = 0.05              # P(test video also listed under its near-duplicate)
    # --- files
    jpeg_quality: int = 90                    # quality of every JPEG (fixed: bytes are reproducible)


_DEFAULT = SynthConfig()
PRESETS: dict[str, SynthConfig] = {
    # CI: a few seconds end to end.
    "smoke": dataclasses.replace(_DEFAULT, train_lives=3, train_products=6, train_clips_per_live=14,
                                 test_lives=2, test_products=6, test_clips_per_live=10,
                                 mf_train_clips_per_live=8, mf_frames=(12, 16)),
    # The main CPU experiment: ~4000 training clips, 408 test queries.
    "default": _DEFAULT,
    # For a GPU: 10x the clips of default, more test shops (LPR4M's test set has 110 lives).
    "large": dataclasses.replace(_DEFAULT, train_lives=400, test_lives=40, test_products=24,
                                 test_clips_per_live=100),
}

_RATES = ("category_focus", "near_duplicate_rate", "second_view_rate", "flip_rate", "occlusion_rate",
          "occlusion_full_rate", "min_visible", "asr_empty_rate", "asr_error_rate",
          "asr_distractor_rate", "mf_hard_rate", "mf_two_gt_rate")
_FRACTION_RANGES = ("occluded_frames", "host_shots")
_POSITIVE_INTS = ("train_lives", "train_products", "train_clips_per_live", "test_lives",
                  "test_products", "test_clips_per_live", "test_frames", "mf_train_clips_per_live")


# --------------------------------------------------------------------------- configuration

def _parse_scalar(name: str, kind: type, value) -> int | float:
    bad = ValueError(f"knob {name!r} expects {kind.__name__}, got {value!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise bad from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, np.integer)):
            raise bad
        return int(value)
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise bad
    return float(value)


def _parse_value(name: str, type_name: str, value):
    """CLI strings ('12', '0.5', '0,6') or Python values -> the field's type."""
    if type_name in ("int", "float"):
        return _parse_scalar(name, int if type_name == "int" else float, value)
    kind = int if "int" in type_name else float
    if isinstance(value, str):
        parts = [p for p in value.replace(":", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:  # a single value fixes the range
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"knob {name!r} expects a range 'lo,hi' of {kind.__name__}, got {value!r}")
    return tuple(_parse_scalar(name, kind, p) for p in parts)


def _validate(cfg: SynthConfig) -> None:
    def fail(name, why):
        raise ValueError(f"knob {name!r} = {getattr(cfg, name)!r}: {why}")
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, tuple) and v[0] > v[1]:
            fail(f.name, "range has lo > hi")
        if isinstance(v, tuple) and v[0] < 0 or not isinstance(v, tuple) and v < 0:
            fail(f.name, "must be >= 0")
    for name in _RATES:
        if getattr(cfg, name) > 1:
            fail(name, "is a probability, must be in [0, 1]")
    for name in _FRACTION_RANGES:
        if getattr(cfg, name)[1] > 1:
            fail(name, "is a fraction, must be in [0, 1]")
    for name in _POSITIVE_INTS:
        if getattr(cfg, name) < 1:
            fail(name, "must be >= 1")
    if cfg.image_size < 16 or cfg.image_size % 2:
        fail("image_size", "must be even and >= 16 (H.264 needs even sizes)")
    if cfg.train_frames[0] < 1 or cfg.mf_frames[0] < 1:
        fail("train_frames" if cfg.train_frames[0] < 1 else "mf_frames", "needs >= 1 frame")
    if cfg.categories_per_live[0] < 1:
        fail("categories_per_live", "needs >= 1 category")
    if not (0 < cfg.scale[0] and cfg.scale[1] <= 2):
        fail("scale", "must lie in (0, 2]")
    if not 1 <= cfg.jpeg_quality <= 100:
        fail("jpeg_quality", "must be in [1, 100]")


def make_config(preset: str, overrides: dict[str, str | int | float] | None = None) -> SynthConfig:
    """The preset's config with `overrides` (knob -> value; CLI strings are parsed) applied.

    Unknown presets and knobs, values of the wrong type and out-of-range values raise ValueError.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    types = {f.name: f.type for f in dataclasses.fields(SynthConfig)}
    changes = {}
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ValueError(f"unknown knob {name!r}; valid knobs: {', '.join(types)}")
        changes[name] = _parse_value(name, types[name], value)
    cfg = dataclasses.replace(PRESETS[preset], **changes)
    _validate(cfg)
    return cfg


# --------------------------------------------------------------------------- the world

@dataclass
class Product:
    product_id: str
    image_id: str                  # main shop image (has the title)
    second_image_id: str | None    # second view (test shops only), no title
    attrs: R.Attributes
    near_duplicate_of: str | None  # product_id of the product it copies


@dataclass
class Shop:
    live_id: str
    products: list[Product]
    palette: tuple[R.RGB, R.RGB]   # studio backdrop colours
    shop_bg: R.RGB                 # plain light background of its shop images
    base_ms: int                   # livestream start time (epoch ms)
    noise: np.ndarray              # sensor noise tile its clips crop their backgrounds' noise from
    near_twin: dict[int, int]      # product index -> index of a near-duplicate partner


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _seed(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _new_attributes(cfg: SynthConfig, rng, focus: list[str], categories: tuple[str, ...]) -> R.Attributes:
    cat = _pick(rng, focus) if rng.random() < cfg.category_focus else _pick(rng, categories)
    colour = _pick(rng, tuple(R.COLOURS))
    accents = tuple(a for a in R.ACCENTS if a != colour)
    return R.Attributes(cat, colour, _pick(rng, R.PATTERNS), _pick(rng, accents), _pick(rng, R.BADGES))


def _near_duplicate(src: R.Attributes, rng) -> R.Attributes:
    """Same product but one small attribute: the badge or the trim (accent) colour."""
    if rng.random() < 0.5:
        badge = _pick(rng, tuple(b for b in R.BADGES if b != src.badge))
        return dataclasses.replace(src, badge=badge)
    accent = _pick(rng, tuple(a for a in R.ACCENTS if a not in (src.accent, src.colour)))
    return dataclasses.replace(src, accent=accent)


def make_shop(cfg: SynthConfig, rng: np.random.Generator, split: int, categories: tuple[str, ...],
              second_views: bool) -> Shop:
    """A livestream and its products: a few focus categories, some near-identical pairs, and
    (with `second_views`, in test shops) some products with a second shop image."""
    live_id = _uuid(rng)
    n_products = cfg.train_products if split == TRAIN else cfg.test_products
    k = min(int(rng.integers(cfg.categories_per_live[0], cfg.categories_per_live[1] + 1)), len(categories))
    focus = [categories[i] for i in sorted(rng.choice(len(categories), size=k, replace=False))]
    products: list[Product] = []
    twin: dict[int, int] = {}
    seen: set[R.Attributes] = set()
    for i in range(n_products):
        dup_of = None
        if i > 0 and rng.random() < cfg.near_duplicate_rate:
            dup_of = int(rng.integers(i))
            attrs = _near_duplicate(products[dup_of].attrs, rng)
        else:
            attrs = _new_attributes(cfg, rng, focus, categories)
        for _ in range(20):  # two listings of the very same product would have no right answer
            if attrs not in seen:
                break
            attrs = (_near_duplicate(products[dup_of].attrs, rng) if dup_of is not None
                     else _new_attributes(cfg, rng, focus, categories))
        seen.add(attrs)
        if dup_of is not None:
            twin.setdefault(i, dup_of)
            twin.setdefault(dup_of, i)
        second = _uuid(rng) if second_views and rng.random() < cfg.second_view_rate else None
        products.append(Product(_uuid(rng), _uuid(rng), second, attrs,
                                products[dup_of].product_id if dup_of is not None else None))
    palette = tuple(tuple(int(c) for c in rng.integers(40, 230, 3)) for _ in range(2))
    shop_bg = tuple(int(c) for c in rng.integers(232, 252, 3))
    base_ms = 1_660_000_000_000 + int(rng.integers(0, 30_000_000_000))
    noise = R.noise_tile(rng, 2 * cfg.image_size, cfg.noise)
    return Shop(live_id, products, palette, shop_bg, base_ms, noise, twin)


# --------------------------------------------------------------------------- clips

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


# --------------------------------------------------------------------------- one livestream

@dataclass
class LiveResult:
    """What one livestream contributes to the index files (its images are already on disk)."""
    n_clips: int
    train_lines: list[str] = field(default_factory=list)
    asr: list[tuple[str, str]] = field(default_factory=list)
    titles: list[tuple[str, str]] = field(default_factory=list)
    gt: dict[str, list[str]] = field(default_factory=dict)
    gallery: tuple[str, list[str]] | None = None
    frame_boxes: dict[str, list] = field(default_factory=dict)
    categories: list[tuple[str, int, str]] = field(default_factory=list)
    meta_products: dict[str, dict] = field(default_factory=dict)
    meta_clips: dict[str, dict] = field(default_factory=dict)
    mf_products: dict[str, dict] = field(default_factory=dict)


@dataclass
class LiveJob:
    cfg: SynthConfig
    seed: int
    split: int
    index: int
    fmt: str
    root: str


def _save_jpeg(img, path: Path, quality: int) -> None:
    img.save(path, format="JPEG", quality=quality)


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


def _clips_per_live(cfg: SynthConfig, split: int, mf: bool) -> int:
    if split == TEST:
        return cfg.test_clips_per_live
    return cfg.mf_train_clips_per_live if mf else cfg.train_clips_per_live


def _category_id(name: str) -> int:
    return R.CATEGORIES.index(name) if name in R.CATEGORIES else R.GARMENTS.index(name)


def run_live(job: LiveJob, tick=None) -> LiveResult:
    """Generate one livestream: its shop images, its clips (frames or videos), its annotations."""
    cfg, root, mf = job.cfg, Path(job.root), job.fmt == "movingfashion"
    shop_rng = _seed(job.seed, job.split, job.index, 0)
    # MovingFashion has one image per product; LPR4M test shops have several per product
    shop = make_shop(cfg, shop_rng, job.split, R.GARMENTS if mf else R.CATEGORIES,
                     second_views=job.split == TEST and not mf)
    sprites = [R.make_sprite(p.attrs, 2 * cfg.image_size) for p in shop.products]
    test = job.split == TEST
    n_clips = _clips_per_live(cfg, job.split, mf)
    res = LiveResult(n_clips)
    hard = [bool(shop_rng.random() < cfg.mf_hard_rate) for _ in shop.products] if mf else None

    for image_id, img in shop_images(cfg, shop, sprites, shop_rng):
        if mf:  # MovingFashion names shop images by product id; MF-Synth has no second views
            image_id = next(p.product_id for p in shop.products if p.image_id == image_id)
        _save_jpeg(img, root / ("imgs" if mf else "images") / f"{image_id}.jpg", cfg.jpeg_quality)
    for i, p in enumerate(shop.products):
        if mf:
            res.mf_products[p.product_id] = {"img_path": f"imgs/{p.product_id}.jpg", "video_paths": [],
                                             "source": 2 if hard[i] else 1, "tracklets": {}}
            continue
        cat = _category_id(p.attrs.category)
        for view, image_id in (("main", p.image_id), ("second", p.second_image_id)):
            if image_id:
                res.meta_products[image_id] = {
                    "product_id": p.product_id, "attributes": p.attrs.as_dict(), "category_id": cat,
                    "near_duplicate_of": p.near_duplicate_of, "view": view}
        if test:
            res.titles.append((p.image_id, T.title(p.attrs)))
    if test and not mf:
        gallery = [i for p in shop.products for i in (p.image_id, p.second_image_id) if i]
        res.gallery = (shop.live_id, [gallery[i] for i in shop_rng.permutation(len(gallery))])

    for c in range(n_clips):
        rng = _seed(job.seed, job.split, job.index, 1, c)
        target = int(rng.integers(len(shop.products)))
        if mf:
            n_frames = int(rng.integers(cfg.mf_frames[0], cfg.mf_frames[1] + 1))
        else:
            n_frames = cfg.test_frames if test else int(rng.integers(*cfg.train_frames, endpoint=True))
        start = shop.base_ms + c * CLIP_SLOT_MS + int(rng.integers(0, CLIP_SLOT_MS // 4))
        frame_ms = 1000 // MF_FPS if mf else TEST_FRAME_MS if test else TRAIN_FRAME_MS
        end = start + n_frames * frame_ms
        clip_id = f"{shop.live_id}-{start}-{end}"
        truth = simulate_clip(cfg, shop, sprites, rng, clip_id, n_frames, target,
                              hard=bool(mf and hard[target]))
        if mf:
            _emit_mf_clip(res, cfg, shop, truth, rng, root, test)
        else:
            _emit_lpr_clip(res, cfg, shop, truth, rng, root, test)
        if tick is not None:
            tick()
    return res


def _emit_lpr_clip(res: LiveResult, cfg: SynthConfig, shop: Shop, truth: ClipTruth, rng,
                   root: Path, test: bool) -> None:
    clip_dir = root / "frames" / truth.clip_id
    clip_dir.mkdir()
    for frame_id, img in zip(truth.frame_ids, truth.frames):
        _save_jpeg(img, clip_dir / f"{frame_id}.jpg", cfg.jpeg_quality)
    product = shop.products[truth.target]
    text, mentions = T.asr(rng, product.attrs, [shop.products[i].attrs for i in truth.distractors],
                           empty_rate=cfg.asr_empty_rate, error_rate=cfg.asr_error_rate,
                           distractor_rate=cfg.asr_distractor_rate, n_attributes=cfg.asr_attributes)
    cat_id, cat_name = _category_id(product.attrs.category), product.attrs.category
    res.meta_clips[truth.clip_id] = {
        "product_image_id": product.image_id, "target_box_index": truth.target_index,
        "distractor_image_ids": [shop.products[i].image_id for i in truth.distractors],
        "asr_mentions_distractor": mentions}
    if test:
        res.asr.append((truth.clip_id, text))
        res.gt[truth.clip_id] = [i for i in (product.image_id, product.second_image_id) if i]
        res.frame_boxes.update(zip(truth.frame_ids, truth.boxes))
        res.categories.append((truth.clip_id, cat_id, cat_name))
        return
    labels = subset_labels(truth.boxes)
    fields = [truth.clip_id, _dumps(truth.frame_ids), _dumps(truth.boxes), product.image_id,
              T.title(product.attrs), str(cat_id), cat_name, text,
              labels["scale"], labels["duration"], labels["count"]]
    res.train_lines.append("\t".join(fields))


def _emit_mf_clip(res: LiveResult, cfg: SynthConfig, shop: Shop, truth: ClipTruth, rng,
                  root: Path, test: bool) -> None:
    video_path = f"videos/{truth.clip_id}.mp4"
    _write_mp4(truth.frames, root / video_path)
    track = {str(f): boxes[k] for f, (boxes, k) in enumerate(zip(truth.boxes, truth.target_index)) if k >= 0}
    owners = [truth.target]
    # MovingFashion lists a few test videos under two products (two ground truths): here the
    # sold product's near-identical twin, as if the shop had listed one garment twice.
    twin = shop.near_twin.get(truth.target)
    if test and twin is not None and rng.random() < cfg.mf_two_gt_rate:
        owners.append(twin)
    for i in owners:
        entry = res.mf_products[shop.products[i].product_id]
        entry["video_paths"].append(video_path)
        entry["tracklets"][video_path] = track


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------- the whole dataset

def generate(out_dir: str | Path, preset: str = "default", seed: int = 0, fmt: str = "lpr4m",
             overrides: dict[str, str | int | float] | None = None, progress: bool = True,
             workers: int = 1) -> Path:
    """Write LPR-Synth (`fmt="lpr4m"`) or MF-Synth (`fmt="movingfashion"`) to `out_dir`.

    The dataset is built in a temporary sibling directory and renamed onto `out_dir` at the end,
    so an interrupted run leaves no partial dataset. `out_dir` must not exist or be empty
    (FileExistsError otherwise). `workers` > 1 renders livestreams in parallel processes; the
    output is byte-identical for any number of workers.
    """
    cfg = make_config(preset, overrides)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        _build(cfg, preset, int(seed), fmt, tmp, progress, workers)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} was filled by someone else while generating")
        os.replace(tmp, out)  # atomic; replaces an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build(cfg: SynthConfig, preset: str, seed: int, fmt: str, root: Path, progress: bool,
           workers: int) -> None:
    from tqdm import tqdm

    mf = fmt == "movingfashion"
    for d in ("imgs", "videos") if mf else ("images", "frames"):
        (root / d).mkdir()
    jobs = [LiveJob(cfg, seed, TRAIN, i, fmt, str(root)) for i in range(cfg.train_lives)]
    jobs += [LiveJob(cfg, seed, TEST, i, fmt, str(root)) for i in range(cfg.test_lives)]
    total = sum(_clips_per_live(cfg, job.split, mf) for job in jobs)
    desc = f"{'MF' if mf else 'LPR'}-Synth {preset} seed {seed}"
    with tqdm(total=total, unit="clip", desc=desc, file=sys.stderr, disable=not progress) as bar:
        if workers <= 1:
            results = [run_live(job, tick=lambda: bar.update(1)) for job in jobs]
        else:
            results = []
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for r in pool.map(run_live, jobs):  # map keeps job order: output stays deterministic
                    bar.update(r.n_clips)
                    results.append(r)
    train = [r for job, r in zip(jobs, results) if job.split == TRAIN]
    test = [r for job, r in zip(jobs, results) if job.split == TEST]
    if mf:
        _write_movingfashion(root, train, test)
    else:
        _write_lpr4m(root, cfg, preset, seed, train, test)


def _write_text(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        json.dump(obj, fh, sort_keys=True, separators=(",", ":"))
        fh.write("\n")


def _write_lpr4m(root: Path, cfg: SynthConfig, preset: str, seed: int, train: list[LiveResult],
                 test: list[LiveResult]) -> None:
    """The index files of LPR4M's layout (docs/data_formats.md), names carrying their counts."""
    lines = [line for r in train for line in r.train_lines]
    _write_text(root / f"training_videoinfo_full_{len(lines)}.txt", lines)
    asr = [pair for r in test for pair in r.asr]
    n = len(asr)
    _write_text(root / f"test_videoid_asr_{n}.txt", [f"{v}\t{t}" for v, t in asr])
    titles = [pair for r in test for pair in r.titles]
    _write_text(root / f"test_image_title_{len(titles)}.txt", [f"{i}\t{t}" for i, t in titles])
    _write_json(root / f"test_videoid_to_gtimage_{n}.json", {k: v for r in test for k, v in r.gt.items()})
    _write_json(root / f"test_liveid_to_gallery_{len(test)}.json", dict(r.gallery for r in test))
    boxes = {k: v for r in test for k, v in r.frame_boxes.items()}
    _write_json(root / f"test_frameid2gtbox_{n}_{len(boxes)}.json", boxes)
    cats = [c for r in test for c in r.categories]
    _write_text(root / f"test_videoid_category_{n}.txt", [f"{v}\t{i}\t{name}" for v, i, name in cats])
    _write_json(root / "synth_meta.json", {
        "generator": "lpr-synth", "version": GENERATOR_VERSION, "preset": preset, "seed": seed,
        "knobs": dataclasses.asdict(cfg),
        "products": {k: v for r in train + test for k, v in r.meta_products.items()},
        "clips": {k: v for r in train + test for k, v in r.meta_clips.items()}})


def _write_movingfashion(root: Path, train: list[LiveResult], test: list[LiveResult]) -> None:
    """train.json keeps products with at least one video; test.json keeps every test product,
    since the test gallery is every test shop image."""
    _write_json(root / "train.json", {pid: e for r in train for pid, e in r.mf_products.items()
                                      if e["video_paths"]})
    _write_json(root / "test.json", {pid: e for r in test for pid, e in r.mf_products.items()})
