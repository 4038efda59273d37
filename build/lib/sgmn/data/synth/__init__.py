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

Modules: `config` (knobs, presets), `world` (shops and products), `scene` (what a clip shows),
`render` (drawing), `text` (titles and ASR), `files` / `lpr4m_writer` / `mf_writer` (the two
formats), `generate` (the whole dataset, atomically).
"""
from sgmn.data.synth.config import FORMATS, GENERATOR_VERSION, PRESETS, SynthConfig, make_config
from sgmn.data.synth.generate import generate

__all__ = ["FORMATS", "GENERATOR_VERSION", "PRESETS", "SynthConfig", "generate", "make_config"]
