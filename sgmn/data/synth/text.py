"""Titles and ASR transcripts for LPR-Synth.

Titles are what a shop writes: every attribute, in a fixed order, so two near-identical
products get titles that differ in exactly one word. ASR is what the host says, as a speech
recogniser hears it: filler talk, a random subset of the sold product's attributes, sometimes a
word about another product on the table, and word errors (substitutions, drops, insertions of
vocabulary words) at a set rate. Real LPR4M ASR is Chinese; only the language differs.
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
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Words an error may substitute or insert: everything the host could plausibly have said.
VOCAB: tuple[str, ...] = tuple(sorted(
    {w for phrase in OPENERS + PRAISE + CLOSERS for w in phrase.split() if "{" not in w}
    | set(COLOURS) | set(ACCENTS) | set(CATEGORIES) | set(GARMENTS) | set(NUMBERS)
    | {w for p in PATTERN_WORDS.values() for w in p.split()} | set(BADGES[1:])
    | {"trim", "badge", "with", "and", "this", "the", "it", "has", "a", "little", "we", "also", "have"}))


def title(a: Attributes) -> str:
    """'red striped cup with white trim and star badge' (badge 'none' is not mentioned)."""
    text = f"{a.colour} {PATTERN_WORDS[a.pattern]} {a.category} with {a.accent} trim"
    return text + (f" and {a.badge} badge" if a.badge != "none" else "")


def _attribute_phrases(a: Attributes, rng: np.random.Generator, k: int) -> list[str]:
    """k of the product's attributes, each as a short spoken phrase."""
    phrases = {
        "colour": f"this {a.colour} one",
        "category": f"this {a.category}",
        "pattern": f"the {PATTERN_WORDS[a.pattern]} design",
        "accent": f"with the {a.accent} trim",
        "badge": f"it has a little {a.badge} badge",
    }
    if a.badge == "none":
        del phrases["badge"]
    keys = list(phrases)
    chosen = sorted(rng.choice(len(keys), size=min(k, len(keys)), replace=False))
    if keys.index("colour") in chosen and keys.index("category") in chosen:
        # say "this red cup" rather than "this red one this cup"
        chosen = [i for i in chosen if keys[i] != "colour"]
        phrases["category"] = f"this {a.colour} {a.category}"
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
        n_attributes: tuple[int, int]) -> tuple[str, bool]:
    """One clip's transcript and whether it mentions a distractor's attributes."""
    if rng.random() < empty_rate:
        return "", False
    k = int(rng.integers(n_attributes[0], n_attributes[1] + 1))
    parts = [OPENERS[rng.integers(len(OPENERS))]]
    parts += _attribute_phrases(target, rng, k)
    parts.append(PRAISE[rng.integers(len(PRAISE))])
    mentions = bool(distractors) and rng.random() < distractor_rate
    if mentions:
        other = distractors[rng.integers(len(distractors))]
        parts.append(f"we also have the {other.colour} {other.category}")
    parts.append(CLOSERS[rng.integers(len(CLOSERS))].format(n=NUMBERS[rng.integers(len(NUMBERS))]))
    words = _corrupt(" ".join(parts).split(), rng, error_rate)
    return " ".join(words), mentions
