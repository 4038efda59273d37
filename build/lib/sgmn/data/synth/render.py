"""Drawing for LPR-Synth and MF-Synth: product sprites, shop images, backgrounds, frame composition.

Products are flat procedural objects: a category silhouette (PIL polygons / ellipses) filled with
a main colour and a pattern, a trim drawn in an accent colour, and a small badge whose size is a
few output pixels - the attribute that separates near-identical products (the paper's third
dilemma). Every image is drawn at 2x the output size and downsampled with LANCZOS, which gives
anti-aliased edges and keeps the badge a sub-structure of a few pixels rather than a hard block.

Frames are composed back to front: background (studio gradient, smooth blotches, sensor noise,
a host figure), distractor products, the sold product, then hand occluders. A label map records
which object owns each pixel, so a product's box is emitted only when enough of it is visible:
boxes describe what a person annotating the frame would see, not where the simulator put things.

Nothing here draws random numbers except through the `numpy.random.Generator` passed in, so the
caller controls determinism.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# Named main colours (titles and ASR use these names).
COLOURS: dict[str, RGB] = {
    "red": (205, 40, 40), "orange": (240, 140, 30), "yellow": (236, 206, 40),
    "green": (50, 155, 60), "teal": (30, 148, 150), "blue": (40, 80, 200),
    "purple": (128, 60, 170), "pink": (236, 122, 172), "brown": (128, 78, 38),
    "gray": (125, 125, 128),
    # v2: neighbouring hues, so a design can come in colourways that are easy to confuse
    "coral": (240, 100, 90), "navy": (30, 45, 120), "olive": (110, 120, 40),
    "mustard": (200, 160, 40), "lavender": (170, 140, 210), "tan": (190, 150, 100),
    "mint": (120, 200, 170), "maroon": (120, 25, 40),
}


def neighbour_colours(name: str, k: int = 2) -> tuple[str, ...]:
    """The k main colours nearest `name` in RGB: the colourways a design's variants come in."""
    ref = np.array(COLOURS[name], float)
    others = sorted((float(np.linalg.norm(np.array(c, float) - ref)), n) for n, c in COLOURS.items() if n != name)
    return tuple(n for _, n in others[:k])
# Trim / badge colours; an accent equal to the main colour is never drawn (it would be invisible).
ACCENTS: dict[str, RGB] = {
    "white": (250, 250, 250), "black": (22, 22, 22), "gold": (214, 172, 50),
    "silver": (190, 192, 204), "red": COLOURS["red"], "blue": COLOURS["blue"],
    "green": COLOURS["green"],
}
PATTERNS = ("plain", "striped", "dotted", "checked", "zigzag", "slanted")
BADGES = ("none", "dot", "star", "cross", "ring")
# LPR-Synth categories (index = category id) and the MF-Synth garments (one category, "fashion").
CATEGORIES = ("bag", "hat", "cup", "shoe", "bottle", "lamp", "clock", "vase")
GARMENTS = ("shirt", "dress", "trousers")

SKIN: tuple[RGB, ...] = ((241, 194, 160), (224, 172, 130), (198, 140, 100), (141, 85, 54))
OUTLINE: RGB = (35, 35, 40)
BADGE_RADIUS = 0.065  # of the sprite side: ~2 output px for a product spanning half a 64 px frame


@dataclass(frozen=True)
class Attributes:
    """What a product looks like; also what titles and ASR talk about."""
    category: str
    colour: str
    pattern: str
    accent: str
    badge: str

    def as_dict(self) -> dict[str, str]:
        return {"category": self.category, "colour": self.colour, "pattern": self.pattern,
                "accent": self.accent, "badge": self.badge}


@dataclass
class Sprite:
    """A product drawn once on a transparent square canvas, warped into every frame it appears in."""
    image: Image.Image  # RGBA, side `size`
    size: int
    cx: float           # silhouette bbox centre (sprite pixels)
    cy: float
    extent: float       # silhouette bbox longer side (sprite pixels): Pose.size refers to this
    area: float         # silhouette pixels (alpha > 127)


@dataclass
class Pose:
    """Where and how a sprite lands in a frame (frame units: 1 = frame side)."""
    cx: float
    cy: float
    size: float          # silhouette extent as a fraction of the frame side
    angle: float = 0.0   # in-plane rotation, degrees
    shear: float = 0.0   # x += shear * y
    squash: float = 1.0  # horizontal foreshortening (yaw), <= 1
    tilt: float = 0.0    # perspective (pitch): top edge shrinks when > 0
    flip: bool = False   # seen from the other side: mirrors the badge position too


@dataclass
class Placed:
    """A sprite warped into a frame: the patch covering its on-frame extent, and its mask."""
    patch: Image.Image   # RGBA, placed at (x0, y0)
    x0: int
    y0: int
    mask: np.ndarray     # (h, w) bool: silhouette pixels inside the frame
    area_total: float    # silhouette pixels it would cover without the frame edge


@dataclass
class Occluder:
    """A hand in front of a product (render pixels), with its forearm reaching to `arm_to`."""
    cx: float
    cy: float
    r: float
    colour: RGB
    arm_to: tuple[float, float] | None = None


# --------------------------------------------------------------------------- silhouettes

class _Canvas:
    """Two L layers (body, trim) plus dark detail lines, in unit coordinates."""

    def __init__(self, size: int):
        self.s = size
        self.body = Image.new("L", (size, size), 0)
        self.trim = Image.new("L", (size, size), 0)
        self.lines: list[tuple[list[tuple[float, float]], float]] = []

    def _xy(self, pts):
        return [(u * self.s, v * self.s) for u, v in pts]

    def _box(self, box):
        return [c * self.s for c in box]

    def poly(self, layer: str, pts) -> None:
        ImageDraw.Draw(getattr(self, layer)).polygon(self._xy(pts), fill=255)

    def ellipse(self, layer: str, box, width: float | None = None) -> None:
        d = ImageDraw.Draw(getattr(self, layer))
        if width is None:
            d.ellipse(self._box(box), fill=255)
        else:
            d.ellipse(self._box(box), outline=255, width=max(1, round(width * self.s)))

    def rect(self, layer: str, box, radius: float = 0.0) -> None:
        ImageDraw.Draw(getattr(self, layer)).rounded_rectangle(
            self._box(box), radius=radius * self.s, fill=255)

    def line(self, pts, width: float) -> None:
        self.lines.append((self._xy(pts), max(1.0, width * self.s)))


def _bag(c: _Canvas):
    c.poly("body", [(0.12, 0.38), (0.88, 0.38), (0.95, 0.95), (0.05, 0.95)])
    c.ellipse("trim", (0.27, 0.08, 0.73, 0.62), width=0.06)
    c.rect("trim", (0.12, 0.38, 0.88, 0.45))
    return 0.5, 0.68


def _hat(c: _Canvas):
    c.rect("body", (0.24, 0.18, 0.76, 0.66), radius=0.2)
    c.ellipse("body", (0.02, 0.56, 0.98, 0.82))
    c.rect("trim", (0.24, 0.5, 0.76, 0.6))
    return 0.5, 0.36


def _cup(c: _Canvas):
    c.poly("body", [(0.14, 0.16), (0.74, 0.16), (0.67, 0.93), (0.21, 0.93)])
    c.ellipse("body", (0.6, 0.3, 0.95, 0.72), width=0.07)
    c.rect("trim", (0.13, 0.12, 0.75, 0.22))
    return 0.44, 0.56


def _shoe(c: _Canvas):
    c.poly("body", [(0.05, 0.58), (0.14, 0.33), (0.44, 0.28), (0.55, 0.46), (0.93, 0.58),
                    (0.96, 0.78), (0.05, 0.78)])
    c.rect("trim", (0.03, 0.77, 0.97, 0.9), radius=0.04)
    c.line([(0.3, 0.36), (0.4, 0.5)], 0.02)
    return 0.26, 0.58


def _bottle(c: _Canvas):
    c.rect("body", (0.28, 0.36, 0.72, 0.96), radius=0.08)
    c.poly("body", [(0.28, 0.42), (0.41, 0.2), (0.59, 0.2), (0.72, 0.42)])
    c.rect("body", (0.41, 0.1, 0.59, 0.22))
    c.rect("trim", (0.38, 0.02, 0.62, 0.12), radius=0.02)
    return 0.5, 0.66


def _lamp(c: _Canvas):
    c.poly("body", [(0.3, 0.04), (0.7, 0.04), (0.9, 0.46), (0.1, 0.46)])
    c.rect("body", (0.45, 0.45, 0.55, 0.86))
    c.ellipse("trim", (0.2, 0.82, 0.8, 0.97))
    return 0.5, 0.27


def _clock(c: _Canvas):
    c.ellipse("body", (0.06, 0.06, 0.94, 0.94))
    c.ellipse("trim", (0.04, 0.04, 0.96, 0.96), width=0.08)
    c.line([(0.5, 0.5), (0.5, 0.22)], 0.035)
    c.line([(0.5, 0.5), (0.7, 0.58)], 0.035)
    return 0.5, 0.74


def _vase(c: _Canvas):
    c.poly("body", [(0.36, 0.06), (0.64, 0.06), (0.6, 0.16), (0.6, 0.26), (0.8, 0.44),
                    (0.86, 0.64), (0.74, 0.9), (0.26, 0.9), (0.14, 0.64), (0.2, 0.44),
                    (0.4, 0.26), (0.4, 0.16)])
    c.rect("trim", (0.32, 0.03, 0.68, 0.11), radius=0.02)
    c.rect("trim", (0.28, 0.87, 0.72, 0.95), radius=0.02)
    return 0.5, 0.6


def _shirt(c: _Canvas):
    c.poly("body", [(0.3, 0.08), (0.42, 0.12), (0.58, 0.12), (0.7, 0.08), (0.96, 0.32),
                    (0.85, 0.46), (0.76, 0.38), (0.76, 0.95), (0.24, 0.95), (0.24, 0.38),
                    (0.15, 0.46), (0.04, 0.32)])
    c.poly("trim", [(0.39, 0.09), (0.5, 0.24), (0.61, 0.09), (0.56, 0.08), (0.5, 0.16),
                    (0.44, 0.08)])
    c.poly("trim", [(0.04, 0.32), (0.1, 0.26), (0.2, 0.4), (0.15, 0.46)])
    c.poly("trim", [(0.96, 0.32), (0.9, 0.26), (0.8, 0.4), (0.85, 0.46)])
    return 0.63, 0.32


def _dress(c: _Canvas):
    c.poly("body", [(0.36, 0.04), (0.44, 0.04), (0.5, 0.12), (0.56, 0.04), (0.64, 0.04),
                    (0.66, 0.4), (0.9, 0.96), (0.1, 0.96), (0.34, 0.4)])
    c.rect("trim", (0.32, 0.37, 0.68, 0.45))
    return 0.5, 0.25


def _trousers(c: _Canvas):
    c.poly("body", [(0.22, 0.05), (0.78, 0.05), (0.86, 0.96), (0.6, 0.96), (0.5, 0.36),
                    (0.4, 0.96), (0.14, 0.96)])
    c.rect("trim", (0.21, 0.04, 0.79, 0.13))
    return 0.68, 0.24


SHAPES = {"bag": _bag, "hat": _hat, "cup": _cup, "shoe": _shoe, "bottle": _bottle,
          "lamp": _lamp, "clock": _clock, "vase": _vase,
          "shirt": _shirt, "dress": _dress, "trousers": _trousers}


# --------------------------------------------------------------------------- sprites

@lru_cache(maxsize=64)
def _pattern_mask(pattern: str, size: int) -> np.ndarray:
    """(size, size) bool: where the pattern's second shade goes. Period ~1/6 of the product."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / size
    p = 1.0 / 6.0
    if pattern == "plain":
        return np.zeros((size, size), bool)
    if pattern == "striped":
        return (v // (p / 2)) % 2 == 1
    if pattern == "dotted":
        du, dv = (u % p) - p / 2, (v % p) - p / 2
        return du * du + dv * dv < (0.28 * p) ** 2
    if pattern == "checked":
        return ((u // (p / 2)) + (v // (p / 2))) % 2 == 1
    if pattern == "zigzag":
        tri = np.abs((u / p) % 1.0 - 0.5)  # triangle wave along x
        return ((v + 0.6 * p * tri) // (p / 2)) % 2 == 1
    if pattern == "slanted":
        return ((u + v) // (p / 2)) % 2 == 1
    raise ValueError(f"unknown pattern {pattern!r}; valid: {PATTERNS}")


def _shade(rgb: RGB) -> RGB:
    """The pattern's second shade: lighter for dark colours, darker for light ones."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum > 140:
        return tuple(int(c * 0.55) for c in rgb)
    return tuple(int(c + (255 - c) * 0.55) for c in rgb)


def _draw_badge(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float,
                colour: RGB) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "none":
        return
    if kind == "dot":
        draw.ellipse(box, fill=colour, outline=OUTLINE)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, round(r * 0.5)))
    elif kind == "cross":
        t = r * 0.32
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = r * 1.2 if k % 2 == 0 else r * 0.5
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=colour, outline=OUTLINE)
    else:
        raise ValueError(f"unknown badge {kind!r}; valid: {BADGES}")


def make_sprite(attrs: Attributes, size: int) -> Sprite:
    """Draw a product in its canonical (shop) view on a transparent `size` x `size` canvas."""
    canvas = _Canvas(size)
    anchor = SHAPES[attrs.category](canvas)
    main = COLOURS[attrs.colour]
    pattern = _pattern_mask(attrs.pattern, size)
    rgb = np.where(pattern[..., None], np.array(_shade(main), np.uint8), np.array(main, np.uint8))
    img = Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), "RGB")
    img.paste(ACCENTS[attrs.accent], mask=canvas.trim)
    draw = ImageDraw.Draw(img)
    for pts, width in canvas.lines:
        draw.line(pts, fill=OUTLINE, width=round(width))
    alpha = ImageChops.lighter(canvas.body, canvas.trim)
    # A dark rim separates touching products and products from same-coloured backgrounds.
    rim = ImageChops.subtract(alpha, alpha.filter(ImageFilter.MinFilter(3)))
    img.paste(OUTLINE, mask=rim)
    _draw_badge(draw, attrs.badge, anchor[0] * size, anchor[1] * size, BADGE_RADIUS * size,
                ACCENTS[attrs.accent])
    img.putalpha(alpha)
    a = np.asarray(alpha) > 127
    ys, xs = np.nonzero(a)
    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return Sprite(img, size, (x1 + x2) / 2, (y1 + y2) / 2, float(max(x2 - x1, y2 - y1)),
                  float(a.sum()))


# --------------------------------------------------------------------------- warping

def _homography(sprite: Sprite, pose: Pose, res: int) -> np.ndarray:
    """3x3 map from sprite pixels to frame pixels (render resolution `res`)."""
    t1 = np.array([[1, 0, -sprite.cx], [0, 1, -sprite.cy], [0, 0, 1]], float)
    flip = np.diag([-1.0 if pose.flip else 1.0, 1.0, 1.0])
    # Pitch: w = 1 + tilt * y / extent, so the far edge shrinks by ~tilt/2 and the near one grows.
    persp = np.array([[1, 0, 0], [0, 1, 0], [0, pose.tilt / sprite.extent, 1]], float)
    lin = np.diag([pose.squash, 1.0, 1.0])
    lin = np.array([[1, pose.shear, 0], [0, 1, 0], [0, 0, 1]], float) @ lin
    a = math.radians(pose.angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    m = pose.size * res / sprite.extent
    t2 = np.array([[m, 0, pose.cx * res], [0, m, pose.cy * res], [0, 0, 1]], float)
    return t2 @ rot @ lin @ persp @ flip @ t1


def place(sprite: Sprite, pose: Pose, res: int, margin: int = 0) -> Placed | None:
    """Warp `sprite` into a `res` x `res` frame; the patch may reach `margin` px past the frame
    edges (so a placement can later be shifted). None when nothing of it lands there."""
    h = _homography(sprite, pose, res)
    half = sprite.extent / 2 + 1
    corners = np.array([[sprite.cx - half, sprite.cy - half, 1], [sprite.cx + half, sprite.cy - half, 1],
                        [sprite.cx + half, sprite.cy + half, 1], [sprite.cx - half, sprite.cy + half, 1]])
    p = corners @ h.T
    p = p[:, :2] / p[:, 2:3]
    x0, y0 = max(-margin, math.floor(p[:, 0].min())), max(-margin, math.floor(p[:, 1].min()))
    x1, y1 = min(res + margin, math.ceil(p[:, 0].max())), min(res + margin, math.ceil(p[:, 1].max()))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    inv = np.linalg.inv(h) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], float)
    inv /= inv[2, 2]
    patch = sprite.image.transform((x1 - x0, y1 - y0), Image.Transform.PERSPECTIVE,
                                   tuple(inv.ravel()[:8]), Image.Resampling.BILINEAR)
    mask = np.asarray(patch.getchannel("A")) > 127
    if not mask.any():
        return None
    # the affine part scales areas by m^2 * squash; the pitch term averages out to ~1
    m = pose.size * res / sprite.extent
    return Placed(patch, x0, y0, mask, sprite.area * m * m * pose.squash)


def blurred(pl: Placed | None, sigma: float) -> Placed | None:
    """Motion blur of one moving object: its warped patch (colour and alpha) blurred by `sigma`
    render px, the silhouette mask kept (boxes are annotated on the object, not its smear)."""
    if pl is None or sigma < 0.1:
        return pl
    radius = (math.sqrt(12 * sigma * sigma + 1) - 1) / 2
    return Placed(pl.patch.filter(ImageFilter.BoxBlur(radius)), pl.x0, pl.y0, pl.mask, pl.area_total)


def shifted(pl: Placed | None, dx: int, dy: int) -> Placed | None:
    """The same warped sprite moved by whole pixels (camera shake on a static product)."""
    if pl is None:
        return None
    return Placed(pl.patch, pl.x0 + dx, pl.y0 + dy, pl.mask, pl.area_total)


# --------------------------------------------------------------------------- backgrounds

def noise_tile(rng: np.random.Generator, res: int, sigma: float) -> np.ndarray:
    """(2res, 2res, 3) float32 sensor noise; clips crop windows from it instead of drawing anew."""
    return (rng.standard_normal((2 * res, 2 * res, 3), dtype=np.float32) * sigma)


@dataclass
class Host:
    """The seller as drawn in the background: head and torso (frame units)."""
    cx: float
    top: float
    head_r: float
    skin: RGB
    shirt: RGB
    hair: RGB


def sample_host(rng: np.random.Generator, close: bool) -> Host:
    """A seller. `close` = host shot, the camera on the host and no product."""
    skin = SKIN[rng.integers(len(SKIN))]
    shirt = tuple(int(c) for c in rng.integers(30, 220, 3))
    hair = tuple(int(c) for c in rng.integers(10, 90, 3))
    if close:
        cx, head_r, top = rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.28), rng.uniform(0.1, 0.25)
    else:  # off to one side, behind the table
        side = rng.uniform(0.1, 0.3)
        cx = side if rng.random() < 0.5 else 1.0 - side
        head_r, top = rng.uniform(0.08, 0.12), rng.uniform(0.08, 0.25)
    return Host(float(cx), float(top), float(head_r), skin, shirt, hair)


def draw_host(draw: ImageDraw.ImageDraw, host: Host, res: int, dx: float = 0.0, dy: float = 0.0) -> None:
    """Draw `host` moved by (dx, dy) frame units (the host's sway, a motion nuisance)."""
    hx, hy, r = (host.cx + dx) * res, (host.top + host.head_r + dy) * res, host.head_r * res
    draw.rounded_rectangle([hx - 2.4 * r, hy + 1.1 * r, hx + 2.4 * r, res + r], radius=r, fill=host.shirt)
    draw.ellipse([hx - 1.05 * r, hy - 1.15 * r, hx + 1.05 * r, hy + 0.6 * r], fill=host.hair)
    draw.ellipse([hx - 0.85 * r, hy - 0.95 * r, hx + 0.85 * r, hy + 1.1 * r], fill=host.skin)


def draw_shelves(draw: ImageDraw.ImageDraw, shelves: list[float], res: int, colour: RGB) -> None:
    """Shelf planks the distractors stand on (their tops at the given heights, frame units)."""
    for y in shelves:
        draw.rectangle([0, y * res, res, (y + 0.025) * res], fill=colour)


def backdrop(rng: np.random.Generator, res: int, palette: tuple[RGB, RGB], noise: np.ndarray) -> Image.Image:
    """Studio backdrop: jittered two-colour gradient, smooth blotches, sensor noise."""
    c0 = np.clip(np.array(palette[0], np.float32) + rng.normal(0, 12, 3), 0, 255)
    c1 = np.clip(np.array(palette[1], np.float32) + rng.normal(0, 12, 3), 0, 255)
    t = np.linspace(0.0, 1.0, res, dtype=np.float32)
    t = t[:, None, None] if rng.random() < 0.5 else t[None, :, None]
    img = c0 * (1 - t) + c1 * t                                       # (res, 1, 3) or (1, res, 3)
    blot = Image.fromarray(rng.uniform(-1, 1, (5, 5)).astype(np.float32), "F")
    blot = np.asarray(blot.resize((res, res), Image.Resampling.BICUBIC))  # (res, res)
    oy, ox = rng.integers(0, res, 2)
    img = img + blot[..., None] * 18.0 + noise[oy:oy + res, ox:ox + res]  # (res, res, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def shop_background(res: int, colour: RGB) -> Image.Image:
    return Image.new("RGB", (res, res), colour)


# --------------------------------------------------------------------------- composition

def _draw_hand(draw: ImageDraw.ImageDraw, occ: Occluder, fill) -> None:
    r = occ.r
    if occ.arm_to is not None:
        draw.line([(occ.cx, occ.cy), occ.arm_to], fill=fill, width=max(2, round(1.3 * r)))
    draw.ellipse([occ.cx - r, occ.cy - 0.8 * r, occ.cx + r, occ.cy + 1.1 * r], fill=fill)
    fw = 0.36 * r
    for k in range(4):  # fingers pointing up
        fx = occ.cx - 0.75 * r + k * 0.5 * r
        draw.rounded_rectangle([fx - fw / 2, occ.cy - 1.6 * r, fx + fw / 2, occ.cy - 0.3 * r],
                               radius=fw / 2, fill=fill)


def _in_frame(pl: Placed, res: int):
    """(frame slice y, frame slice x, mask part inside the frame) or None."""
    h, w = pl.mask.shape
    fx0, fy0 = max(0, pl.x0), max(0, pl.y0)
    fx1, fy1 = min(res, pl.x0 + w), min(res, pl.y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    part = pl.mask[fy0 - pl.y0:fy1 - pl.y0, fx0 - pl.x0:fx1 - pl.x0]
    return slice(fy0, fy1), slice(fx0, fx1), part


def compose(bg: Image.Image, items: list[tuple[int, Placed | None]], occluders: list[Occluder],
            min_visible: float, n_slots: int) -> tuple[Image.Image, list[list[float] | None]]:
    """Paint `items` (slot, placement) back to front over `bg`, then the hands.

    Returns the frame at render resolution and, per slot, the normalised box of its on-frame
    silhouette, or None when less than `min_visible` of its silhouette is visible (covered by
    products in front, by a hand, or outside the frame).
    """
    res = bg.width
    frame = bg.copy()
    label = np.full((res, res), -1, np.int16)  # owner of each pixel; -1 background, -2 hand
    parts = []
    for slot, pl in items:
        part = None if pl is None else _in_frame(pl, res)
        if part is None:
            continue
        frame.paste(pl.patch, (pl.x0, pl.y0), pl.patch)
        ys, xs, m = part
        label[ys, xs][m] = slot
        parts.append((slot, pl, part))
    if occluders:
        hand_mask = Image.new("L", (res, res), 0)
        d_frame, d_mask = ImageDraw.Draw(frame), ImageDraw.Draw(hand_mask)
        for occ in occluders:
            _draw_hand(d_frame, occ, occ.colour)
            _draw_hand(d_mask, occ, 255)
        label[np.asarray(hand_mask) > 127] = -2
    visible = np.bincount((label + 2).ravel(), minlength=n_slots + 2)[2:]
    boxes: list[list[float] | None] = [None] * n_slots
    for slot, pl, (ys, xs, m) in parts:
        if visible[slot] < min_visible * pl.area_total:
            continue
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        box = [(xs.start + cols[0]) / res, (ys.start + rows[0]) / res,
               (xs.start + cols[-1] + 1) / res, (ys.start + rows[-1] + 1) / res]
        boxes[slot] = [round(v, 4) for v in box]
    return frame, boxes


def illumination_lut(brightness: float, contrast: float, cast: np.ndarray) -> list[int]:
    """Per-channel 256-entry lookup table: out = ((x - 128) * contrast + 128 + brightness) * cast."""
    x = np.arange(256, dtype=np.float32)
    base = (x - 128.0) * contrast + 128.0 + brightness
    lut = np.clip(base[None, :] * cast[:, None], 0, 255).round().astype(np.uint8)  # (3, 256)
    return lut.ravel().tolist()


def finish(frame: Image.Image, out_size: int, lut: list[int] | None, blur: float) -> Image.Image:
    """Render resolution -> output: LANCZOS downsample, camera exposure / white balance, blur."""
    img = frame.resize((out_size, out_size), Image.Resampling.LANCZOS)
    if lut is not None:
        img = img.point(lut)
    if blur > 0.05:
        # one box pass with the gaussian's standard deviation: ~4x cheaper than GaussianBlur's
        # three passes, indistinguishable at these radii (<= 2 px)
        img = img.filter(ImageFilter.BoxBlur((math.sqrt(12 * blur * blur + 1) - 1) / 2))
    return img
