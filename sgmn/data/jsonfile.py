"""JSON annotation files read strictly: a UTF-8 byte-order mark is dropped, and a key that
occurs twice in one object (json keeps the last silently) is an AnnotationError naming it."""
from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from pathlib import Path

from sgmn.data.records import AnnotationError


class DuplicateKey(ValueError):
    """A key given twice in one JSON object; args[0] is the key."""


def no_duplicate_keys(pairs):
    """json's object_pairs_hook: a dict, or DuplicateKey on a repeated key."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def read_json(path: Path):
    """The parsed file; errors name the file (and line, for syntax errors)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise AnnotationError(path, err.lineno, f"invalid JSON: {err.msg}") from None
    except DuplicateKey as err:
        raise AnnotationError(path, None, f"key {err.args[0]!r} occurs twice in one JSON object") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(path, None, f"not valid UTF-8 ({err.reason})") from None


@contextmanager
def cyclic_gc_paused():
    """Python's cycle collector off while annotations are parsed (a context or a decorator):
    they are millions of small lists and dicts without cycles (LPR4M's test split: 426k frames),
    and each collection walks all of them. An LPR4M-sized `sgmn evaluate --scores` took 11-13 s
    with it on, 7-9 s off (`scripts/bench_evaluate.py`). Reference counting still frees
    everything as usual; a caller that had turned it off keeps it off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
