"""Which class implements each method name: `method: rice` in a config or a variants.yaml row.

Entries are import paths, imported on first use (as open_clip resolves its model names), so
listing the methods imports no model code and a method's dependencies load only when it runs.
`register` adds a method of one's own without editing this file.
"""
from __future__ import annotations

import importlib

from sgmn.models.method import RetrievalMethod

METHODS: dict[str, str | type] = {
    "sgmn": "sgmn.models.sgmn:SGMN",
    "rice": "baselines.rice:RICE",
    "fashionnet": "baselines.fashionnet:FashionNet",
    "asymnet": "baselines.asymnet:AsymNet",
    "seam": "baselines.seam:SEAM",
    "timesformer": "baselines.timesformer:TimeSformer",
    "nvan": "baselines.nvan:NVAN",
    "swinb": "baselines.swinb:VideoSwin",
    "mgh": "baselines.mgh:MGH",
}


def method_names() -> list[str]:
    return sorted(METHODS)


def register(name: str, target: str | type) -> None:
    """Register a method: `target` is a RetrievalMethod subclass or its "module:Class" path."""
    METHODS[name] = target


def get_method(name: str) -> type[RetrievalMethod]:
    """The class registered under `name`; an unknown name lists the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}' (registered: {', '.join(method_names())})")
    cls = METHODS[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, RetrievalMethod)):
        raise TypeError(f"method '{name}' ({METHODS[name]}) is not a RetrievalMethod subclass")
    return cls
