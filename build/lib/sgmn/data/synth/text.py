"""Titles and ASR transcripts for LPR-Synth.

Titles are what a shop writes: marketing words around the colour, pattern and category, and
only sometimes the small details (trim, badge) that separate two variants. ASR is what the host
says, as a speech recogniser hears it: filler talk, 0-3 of the sold product's attributes, often
in words the titles do not use (synonyms), sometimes a word about another product on the table
or the one sold before, and word errors (substitutions, drops, insertions of vocabulary words)
at a set rate. Real LPR4M ASR is Chinese; only the language differs.
"""
from __future__ import annotations

import numpy as np

from sgmn.data.synth.render import ACCENTS, BADGES, CATEGORIES, COLOURS, GARMENTS, Attributes

PATTERN_WORDS = {"plain": "plain", "striped": "striped", "dotted": "dotted", "checked": "checked",
                 "zigzag": "zigzag", "slanted": "slanted striped"}

OPENERS = ("okay everyone", "hello hello friends", "welcome back everybody", "alright guys",
           "look at this", "come and see", "everybody look here", "okay next one")
PRAISE = ("so beautiful", "really nice quality", "very popular this week", "great price today",
          "limited stock", "you will love it", "super cute right", "the quality is amazing")
CLOSERS = ("link number {n}", "add it to your cart now", "go grab it", "only a few left",
           "check the link below", "click link {n} okay")
MARKETING = ("new arrival", "hot sale", "2026 new style", "premium quality", "free shipping",
             "limited edition", "best seller", "official store", "gift idea", "fashion")
# Spoken words that titles never use (LPR4M's hosts and sellers rarely share a vocabulary).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("scarlet", "cherry"), "orange": ("tangerine", "apricot"), "yellow": ("lemon", "sunny"),
    "green": ("grass", "emerald"), "teal": ("turquoise", "peacock"), "blue": ("sky", "cobalt"),
    "purple": ("violet", "grape"), "pink": ("rose", "blush"), "brown": ("coffee", "chocolate"),
    "gray": ("grey", "ash"), "coral": ("salmon", "peach"), "navy": ("midnight", "ink"),
    "olive": ("khaki", "army"), "mustard": ("ochre", "honey"), "lavender": ("lilac", "orchid"),
    "tan": ("camel", "sand"), "mint": ("pistachio", "seafoam"), "maroon": ("wine", "burgundy"),
    "white": ("snow", "ivory"), "black": ("jet", "ebony"), "gold": ("golden", "brass"),
    "silver": ("metallic", "chrome"),
    "bag": ("handbag", "purse"), "hat": ("cap", "beanie"), "cup": ("mug", "tumbler"),
    "shoe": ("sneaker", "trainer"), "bottle": ("flask", "canteen"), "lamp": ("light", "lantern"),
    "clock": ("timepiece", "alarm"), "vase": ("pot", "jar"), "shirt": ("top", "tee"),
    "dress": ("gown", "frock"), "trousers": ("pants", "slacks"),
    "plain": ("solid", "simple"), "striped": ("stripy", "lined"), "dotted": ("polka", "spotty"),
    "checked": ("plaid", "checkered"), "zigzag": ("chevron", "wavy"), "slanted striped": ("diagonal", "bias"),
    "dot": ("spot", "circle"), "star": ("starry", "asterisk"), "cross": ("plus", "x"), "ring": ("hoop", "loop"),
}
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Words an error may substitute or insert: everything the host could plausibly have said.
VOCAB: tuple[str, ...] = tuple(sorted(
    {w for phrase in OPENERS + PRAISE + CLOSERS for w in phrase.split() if "{" not in w}
    | set(COLOURS) | set(ACCENTS) | set(CATEGORIES) | set(GARMENTS) | set(NUMBERS)
    | {w for p in PATTERN_WORDS.values() for w in p.split()} | set(BADGES[1:])
    | {w for words in SYNONYMS.values() for s in words for w in s.split()}
    | {w for m in MARKETING for w in m.split()}
    | {"trim", "badge", "with", "and", "this", "the", "it", "has", "a", "little", "we", "also", "have"}))


def title(a: Attributes, rng: np.random.Generator | None = None, detail_rate: float = 1.0) -> str:
    """'hot sale red striped cup with white trim and star badge free shipping': colour, pattern
    and category always; the trim and badge (badge 'none' never) with probability
    `detail_rate`; marketing words before and after (none without `rng`)."""
    text = f"{a.colour} {PATTERN_WORDS[a.pattern]} {a.category}"
    if rng is None or rng.random() < detail_rate:
        text += f" with {a.accent} trim" + (f" and {a.badge} badge" if a.badge != "none" else "")
    if rng is not None:
        pre, post = rng.choice(len(MARKETING), size=2, replace=False)
        text = f"{MARKETING[pre]} {text} {MARKETING[post]}"
    return text


def _say(word: str, rng: np.random.Generator, synonym_rate: float) -> str:
    """A word as the host says it: a synonym titles do not use with probability `synonym_rate`."""
    options = SYNONYMS.get(word)
    if options and rng.random() < synonym_rate:
        return options[int(rng.integers(len(options)))]
    return word


def _attribute_phrases(a: Attributes, rng: np.random.Generator, k: int, synonym_rate: float) -> list[str]:
    """k of the product's attributes, each as a short spoken phrase."""
    say = {name: _say(word, rng, synonym_rate) for name, word in (
        ("colour", a.colour), ("category", a.category), ("pattern", PATTERN_WORDS[a.pattern]),
        ("accent", a.accent), ("badge", a.badge))}
    phrases = {
        "colour": f"this {say['colour']} one",
        "category": f"this {say['category']}",
        "pattern": f"the {say['pattern']} design",
        "accent": f"with the {say['accent']} trim",
        "badge": f"it has a little {say['badge']} badge",
    }
    if a.badge == "none":
        del phrases["badge"]
    keys = list(phrases)
    chosen = sorted(rng.choice(len(keys), size=min(k, len(keys)), replace=False))
    if keys.index("colour") in chosen and keys.index("category") in chosen:
        # say "this red cup" rather than "this red one this cup"
        chosen = [i for i in chosen if keys[i] != "colour"]
        phrases["category"] = f"this {say['colour']} {say['category']}"
    return [phrases[keys[i]] for i in chosen]


def _corrupt(words: list[str], rng: np.random.Generator, rate: float) -> list[str]:
    """Recognition errors: each word, with probability `rate`, is substituted, dropped, or followed
    by an inserted word (equally likely)."""
    if rate <= 0:
        return words
    u = rng.random(len(words))
    op = rng.integers(0, 3, len(words))
    repl = rng.integers(0, len(VOCAB), len(words))
    out: list[str] = []
    for w, ui, oi, ri in zip(words, u, op, repl):
        if ui >= rate:
            out.append(w)
        elif oi == 0:
            out.append(VOCAB[ri])
        elif oi == 2:
            out.extend((w, VOCAB[ri]))
        # oi == 1: dropped
    return out


def asr(rng: np.random.Generator, target: Attributes, distractors: list[Attributes], *,
        empty_rate: float, error_rate: float, distractor_rate: float,
        n_attributes: tuple[int, int], synonym_rate: float = 0.0, previous: Attributes | None = None,
        previous_rate: float = 0.0) -> tuple[str, bool]:
    """One clip's transcript and whether it mentions a distractor's attributes. `previous` is the
    product sold in the clip before (named with probability `previous_rate`)."""
    if rng.random() < empty_rate:
        return "", False
    k = int(rng.integers(n_attributes[0], n_attributes[1] + 1))
    parts = [OPENERS[rng.integers(len(OPENERS))]]
    if previous is not None and previous != target and rng.random() < previous_rate:
        parts.append(f"before that we had the {_say(previous.colour, rng, synonym_rate)} "
                     f"{_say(previous.category, rng, synonym_rate)}")
    parts += _attribute_phrases(target, rng, k, synonym_rate)
    parts.append(PRAISE[rng.integers(len(PRAISE))])
    mentions = bool(distractors) and rng.random() < distractor_rate
    if mentions:
        other = distractors[rng.integers(len(distractors))]
        parts.append(f"we also have the {_say(other.colour, rng, synonym_rate)} "
                     f"{_say(other.category, rng, synonym_rate)}")
    parts.append(CLOSERS[rng.integers(len(CLOSERS))].format(n=NUMBERS[rng.integers(len(NUMBERS))]))
    words = _corrupt(" ".join(parts).split(), rng, error_rate)
    return " ".join(words), mentions
