"""The shops of a synthetic livestream dataset: products, their attributes and near-identical pairs."""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import numpy as np

from sgmn.data.synth import render as R
from sgmn.data.synth.config import SynthConfig

TRAIN, TEST = 0, 1


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


def seeded(seed: int, *key: int) -> np.random.Generator:
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
