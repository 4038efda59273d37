"""The generator's knobs (`SynthConfig`), its presets, and the parsing and validation of
overrides given as CLI strings or Python values."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

GENERATOR_VERSION = 2
FORMATS = ("lpr4m", "movingfashion")


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator. Ranges are inclusive (lo, hi) and drawn uniformly per clip
    unless the comment says otherwise; magnitudes marked [gap] are multiplied by `gap`.
    docs/lpr_synth.md gives the real-world reason for every default."""
    # --- sizes
    image_size: int = 64                      # side (px) of frames and shop images; drawn at 2x
    train_lives: int = 40                     # training livestreams (= shops)
    train_products: int = 12                  # products per training shop
    train_clips_per_live: int = 100           # training clips per shop
    train_frames: tuple[int, int] = (6, 12)   # frames per training clip (1 fps); < 10 exercises padding
    test_lives: int = 30                      # test livestreams, disjoint from the training ones
    test_products: int = 16                   # products per test shop (gallery = their images)
    test_clips_per_live: int = 80             # test queries per shop
    test_frames: int = 10                     # frames per test clip (1 per 3 s), all annotated
    mf_train_clips_per_live: int = 40         # MF-Synth training videos per shop (longer than clips)
    mf_frames: tuple[int, int] = (16, 24)     # MF-Synth frames per video (10 fps)
    # --- shops: variant families (dilemma 3)
    categories_per_live: tuple[int, int] = (1, 2)  # focus categories of a shop
    category_focus: float = 0.85              # P(product of a focus category), else any category
    near_twin_rate: float = 0.5               # share of a shop's products that have a variant sibling in the shop
    family_size: tuple[int, int] = (2, 4)     # variants per design family
    shared_design_rate: float = 0.5           # P(a family is of a trending design that other shops sell too)
    second_view_rate: float = 0.3             # P(test product has a 2nd, rotated + re-cropped image)
    title_detail_rate: float = 0.6            # P(a title names the trim and badge, the small details)
    # --- distractors (dilemma 1)
    distractors: tuple[int, int] = (0, 10)    # other shop products in a clip (<= products - 1)
    distractor_scale: tuple[float, float] = (0.4, 1.2)  # their size relative to the sold product
    front_rate: float = 0.08                  # P(a distractor stands in front, on the table's near edge)
    sibling_in_view: float = 0.5              # P(a variant sibling of the sold product is among the distractors)
    touch_rate: float = 0.3                   # P(the seller briefly handles a distractor in a clip)
    # --- the seller handles the sold product (time in seconds; frames are 1 s / 3 s apart)
    handling: float = 1.0                     # multiplier of every handling motion; 0 = held still
    hand_rate: float = 0.85                   # P(a hand grips the sold product while it is held)
    segment_s: tuple[float, float] = (2.0, 8.0)  # duration of one behaviour (hold, move, show, rest)
    move_speed: float = 0.12                  # mean speed (frame sides / s) of a move or a lift
    show_zoom: float = 1.8                    # size factor when brought to the camera
    motion_blur: float = 1.5                  # blur sigma (output px) per unit of speed (frame sides / s)
    # --- within-clip variation (turns, occlusion, host-only frames)
    variation: float = 1.0                    # multiplies turn_rate, occlusion_rate and host_shots
    turn_rate: float = 0.35                   # P(a behaviour includes a turn about the vertical axis)
    turn_max: float = 180.0                   # max yaw of a turn (deg); past 90 the back shows, badge hidden
    occlusion_rate: float = 0.3               # P(clip has occlusion events)
    occluded_frames: tuple[float, float] = (0.1, 0.4)  # in such clips, fraction of frames with one
    occlusion_full_rate: float = 0.4          # P(event hides it: big hand or out of frame), else partial
    host_shots: tuple[float, float] = (0.0, 0.7)  # fraction of host-only frames: lo + (hi-lo) * u^2
    # --- clip/shop appearance gap (dilemma 2)
    gap: float = 1.0                          # multiplies every [gap] magnitude; 0 = no gap
    scale: tuple[float, float] = (0.25, 0.75)  # sold product's size (extent / frame side) while held
    rotation: float = 20.0                    # [gap] max |in-plane rotation| (deg) of the held product
    shear: float = 0.15                       # [gap] max |affine shear|
    perspective: float = 0.3                  # [gap] max foreshortening (pitch tilt)
    flip_rate: float = 0.3                    # [gap] P(product seen mirrored); capped at 1
    brightness: float = 40.0                  # [gap] max |exposure offset| (0-255 scale)
    contrast: tuple[float, float] = (0.7, 1.3)  # [gap] contrast factor (its deviation from 1 scaled)
    color_cast: float = 0.15                  # [gap] max |white-balance gain - 1| per channel
    blur: tuple[float, float] = (0.0, 0.6)    # [gap] focus blur sigma (output px) per clip, x0.6-1.4 per frame
    shake: float = 0.004                      # [gap] std of per-frame tripod shake (frame units)
    host_motion: float = 0.04                 # amplitude of the host's sway (frame units)
    min_visible: float = 0.3                  # a product is boxed when >= this fraction is visible
    noise: float = 5.0                        # std of background sensor noise (0-255 scale)
    # --- ASR text
    asr_empty_rate: float = 0.03              # P(empty ASR)
    asr_error_rate: float = 0.1               # P(word substituted / dropped / followed by an insertion)
    asr_synonym_rate: float = 0.5             # P(an attribute is said with a word titles do not use)
    asr_distractor_rate: float = 0.15         # P(ASR also names a distractor's colour and category)
    asr_previous_rate: float = 0.15           # P(ASR also names the product of the previous clip)
    asr_attributes: tuple[int, int] = (0, 3)  # how many of the sold product's attributes are named
    # --- MF-Synth
    mf_hard_rate: float = 0.3                 # P(product is "hard", source 2): +3 distractors, gap x1.5
    mf_two_gt_rate: float = 0.05              # P(test video also listed under its near-duplicate)
    # --- files
    jpeg_quality: int = 90                    # fixed JPEG quality (bytes are reproducible)


_DEFAULT = SynthConfig()
PRESETS: dict[str, SynthConfig] = {
    # CI: a few seconds end to end.
    "smoke": dataclasses.replace(_DEFAULT, train_lives=3, train_products=6, train_clips_per_live=14,
                                 test_lives=2, test_products=6, test_clips_per_live=10,
                                 mf_train_clips_per_live=8, mf_frames=(12, 16)),
    # The main CPU experiment: 4000 training clips, 2400 test queries in 30 shops.
    "default": _DEFAULT,
    # For a GPU: 10x the training clips of default, more test shops (LPR4M's test set has 110 lives).
    "large": dataclasses.replace(_DEFAULT, train_lives=400, test_lives=110, test_products=24,
                                 test_clips_per_live=80),
}

_RATES = ("category_focus", "near_twin_rate", "shared_design_rate", "second_view_rate",
          "title_detail_rate", "front_rate", "sibling_in_view", "touch_rate", "hand_rate", "turn_rate",
          "flip_rate", "occlusion_rate", "occlusion_full_rate", "min_visible", "asr_empty_rate",
          "asr_error_rate", "asr_synonym_rate", "asr_distractor_rate", "asr_previous_rate",
          "mf_hard_rate", "mf_two_gt_rate")
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
    if cfg.family_size[0] < 2:
        fail("family_size", "a family has at least 2 variants")
    if cfg.segment_s[0] <= 0:
        fail("segment_s", "behaviours last > 0 s")
    if cfg.turn_max > 360:
        fail("turn_max", "must be <= 360 degrees")
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
