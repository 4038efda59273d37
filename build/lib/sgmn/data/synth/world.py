"""The shops of a synthetic livestream dataset: products grouped in variant families.

A shop sells designs; a design may come as a *family* of 2-4 variants that differ in one thing
only - the colourway (a neighbouring hue), the pattern, or a small detail (the badge or the trim
colour) - as real shops list one item in several colours or prints (dilemma 3). Some families'
designs are also sold by other shops of the same split (in other variants), so near-identical
products from different shops meet in random training batches as they do in LPR4M, where many
lives sell the same trending item.
"""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import numpy as np

from sgmn.data.synth import render as R
from sgmn.data.synth import text as T
from sgmn.data.synth.config import SynthConfig

TRAIN, TEST = 0, 1
POOL_DESIGNS = 16        # designs in a split's shared pool: trending items, each sold by several shops
POOL_VARIANTS = 6        # variants of each pooled design (a shop lists 2-4 of them)
_POOL_KEY = 1 << 20      # spawn key of the pool stream: no live index reaches it


@dataclass
class Product:
    product_id: str
    image_id: str                  # main shop image (has the title)
    second_image_id: str | None    # second view (test shops only), no title
    attrs: R.Attributes
    near_duplicate_of: str | None  # product_id of the first variant of its family in this shop
    family_id: str | None          # shared by the variants of one design (also across shops)
    title: str


@dataclass
class Shop:
    live_id: str
    products: list[Product]
    palette: tuple[R.RGB, R.RGB]   # studio backdrop colours
    shop_bg: R.RGB                 # plain light background of its shop images
    base_ms: int                   # livestream start time (epoch ms)
    noise: np.ndarray              # sensor noise tile its clips crop their backgrounds' noise from
    siblings: dict[int, list[int]]  # product index -> indices of every variant sibling in the shop


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def seeded(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _new_attributes(cfg: SynthConfig, rng, focus: list[str], categories: tuple[str, ...]) -> R.Attributes:
    cat = _pick(rng, focus) if rng.random() < cfg.category_focus else _pick(rng, categories)
    colour = _pick(rng, tuple(R.COLOURS))
    accents = tuple(a for a in R.ACCENTS if a != colour)
    return R.Attributes(cat, colour, _pick(rng, R.PATTERNS), _pick(rng, accents), _pick(rng, R.BADGES))


def variant(src: R.Attributes, rng) -> R.Attributes:
    """Another variant of the same design: a neighbouring colourway (40%), another pattern (30%),
    or another small detail - the badge or the trim colour (30%)."""
    u = rng.random()
    if u < 0.4:
        colour = _pick(rng, R.neighbour_colours(src.colour))
        accent = src.accent if src.accent != colour else _pick(rng, tuple(a for a in R.ACCENTS if a != colour))
        return dataclasses.replace(src, colour=colour, accent=accent)
    if u < 0.7:
        return dataclasses.replace(src, pattern=_pick(rng, tuple(p for p in R.PATTERNS if p != src.pattern)))
    if rng.random() < 0.5:
        return dataclasses.replace(src, badge=_pick(rng, tuple(b for b in R.BADGES if b != src.badge)))
    return dataclasses.replace(src, accent=_pick(rng, tuple(a for a in R.ACCENTS if a not in (src.accent, src.colour))))


@dataclass(frozen=True)
class Design:
    family_id: str
    variants: tuple[R.Attributes, ...]


def design_pool(cfg: SynthConfig, seed: int, split: int, categories: tuple[str, ...]) -> list[Design]:
    """The designs several shops of a split sell (from the split's own random stream, so it does
    not depend on which shops use it)."""
    rng = seeded(seed, split, _POOL_KEY)
    pool = []
    for _ in range(POOL_DESIGNS):
        base = _new_attributes(cfg, rng, list(categories), categories)
        variants = [base]
        for _ in range(50):
            if len(variants) == POOL_VARIANTS:
                break
            v = variant(base, rng)
            if v not in variants:
                variants.append(v)
        pool.append(Design(_uuid(rng), tuple(variants)))
    return pool


def _family_start_probability(rate: float, mean_size: float) -> float:
    """P(a new design is a family) such that the expected share of products in families is
    `rate`: with p, a design yields mean_size products w.p. p and 1 otherwise, so the share is
    p m / (p m + 1 - p); solved for p."""
    if rate >= 1:
        return 1.0
    return rate / (mean_size - rate * (mean_size - 1))


def _family(cfg: SynthConfig, rng, size: int, focus, categories, pool) -> tuple[str, list[R.Attributes]]:
    """`size` distinct variants of one design, its family id; from the shared pool or new."""
    if pool and rng.random() < cfg.shared_design_rate:
        design = pool[int(rng.integers(len(pool)))]
        idx = rng.choice(len(design.variants), size=min(size, len(design.variants)), replace=False)
        return design.family_id, [design.variants[i] for i in idx]
    base = _new_attributes(cfg, rng, focus, categories)
    members = [base]
    for _ in range(50):
        if len(members) == size:
            break
        v = variant(members[int(rng.integers(len(members)))], rng)
        if v not in members:
            members.append(v)
    return _uuid(rng), members


def make_shop(cfg: SynthConfig, rng: np.random.Generator, split: int, categories: tuple[str, ...],
              second_views: bool, pool: list[Design] | None = None) -> Shop:
    """A livestream and its products: a few focus categories, designs that come as variant
    families (a `near_twin_rate` share of the products), and (with `second_views`, in test
    shops) some products with a second shop image."""
    live_id = _uuid(rng)
    n_products = cfg.train_products if split == TRAIN else cfg.test_products
    k = min(int(rng.integers(cfg.categories_per_live[0], cfg.categories_per_live[1] + 1)), len(categories))
    focus = [categories[i] for i in sorted(rng.choice(len(categories), size=k, replace=False))]
    p_family = _family_start_probability(cfg.near_twin_rate, sum(cfg.family_size) / 2)
    products: list[Product] = []
    seen: set[R.Attributes] = set()
    siblings: dict[int, list[int]] = {}
    while len(products) < n_products:
        room = n_products - len(products)
        size = 1
        if room >= 2 and rng.random() < p_family:
            size = min(room, int(rng.integers(cfg.family_size[0], cfg.family_size[1] + 1)))
        if size == 1:
            family_id, members = None, [_new_attributes(cfg, rng, focus, categories)]
        else:
            family_id, members = _family(cfg, rng, size, focus, categories, pool)
        # two listings of the very same product would have no right answer
        members = [m for m in members if m not in seen]
        if not members:
            continue
        first = len(products)
        if len(members) == 1:
            family_id = None
        for j, attrs in enumerate(members):
            seen.add(attrs)
            second = _uuid(rng) if second_views and rng.random() < cfg.second_view_rate else None
            dup_of = products[first].product_id if j > 0 else None
            products.append(Product(_uuid(rng), _uuid(rng), second, attrs, dup_of, family_id,
                                    T.title(attrs, rng, cfg.title_detail_rate)))
        if len(members) > 1:
            idx = list(range(first, len(products)))
            for i in idx:
                siblings[i] = [j for j in idx if j != i]
    palette = tuple(tuple(int(c) for c in rng.integers(40, 230, 3)) for _ in range(2))
    shop_bg = tuple(int(c) for c in rng.integers(232, 252, 3))
    base_ms = 1_660_000_000_000 + int(rng.integers(0, 30_000_000_000))
    noise = R.noise_tile(rng, 2 * cfg.image_size, cfg.noise)
    return Shop(live_id, products, palette, shop_bg, base_ms, noise, siblings)
