"""Frozen text features of SGMN's text branch (paper Eq. 4): encode every text once, cache it.

SGMN encodes each ASR text of a clip and each product title with a frozen text encoder and
trains only a filter layer on top, so the `text_features` step encodes every distinct text of a
dataset once and the model looks the features up by text.

Encoders (`text.encoder`):
  clip          the text tower of `model.clip` (open_clip) with the given weights; texts are
                truncated by the tokenizer's context length.
  chinese_clip  a transformers ChineseCLIP (`text.chinese_clip`: hub name or local directory),
                `get_text_features`, truncated to the model's maximum positions.

Features are L2-normalised. An empty or whitespace-only text is never sent to the encoder: its
feature is an all-zero row and `TextFeatures.lookup` reports it as not present.

Cache layout (a directory, written to a temporary sibling and renamed into place):
  features.npy  (count, dim) float32, or float16 when count x dim > FLOAT16_ABOVE
  keys.npy      (count,) |S40: sha1 hex of each text's UTF-8 bytes, sorted; row i of
                features.npy is the text whose key is keys[i]
  meta.json     format, version, encoder, model, clip_weights, dim, count, n_empty, dtype,
                max_length, dataset, provenance
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_FORMAT = "sgmn-text-features"
CACHE_VERSION = 1
FEATURES_FILE, KEYS_FILE, META_FILE = "features.npy", "keys.npy", "meta.json"
KEY_DTYPE = "S40"
FLOAT16_ABOVE = 1 << 26  # elements (256 MiB at float32); larger caches are stored as float16


# --------------------------------------------------------------------------- texts and keys

def is_empty(text: str | None) -> bool:
    """Empty, whitespace-only or missing text: a zero feature, never encoded."""
    return text is None or not str(text).strip()


def text_key(text: str) -> bytes:
    """Cache key of a text: the sha1 hex digest of its exact UTF-8 bytes (ASCII, 40 bytes)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest().encode("ascii")


def _check_texts(texts) -> list[str]:
    out = []
    for i, t in enumerate(texts):
        if t is None:
            t = ""
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str: {t!r:.60}")
        out.append(t)
    return out


# --------------------------------------------------------------------------- encoders

class TextEncoder:
    """A frozen text encoder: `encode(texts)` -> (n, dim) unnormalised float features."""

    def __init__(self, encoder: str, model_name: str, dim: int, max_length: int,
                 encode: Callable[[list[str]], torch.Tensor]):
        self.encoder, self.model_name, self.dim, self.max_length = encoder, model_name, dim, max_length
        self.encode = encode


def _hub_offline() -> bool:
    flags = {"1", "ON", "YES", "TRUE"}
    if any(os.environ.get(v, "").upper() in flags for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import is_offline_mode
        return bool(is_offline_mode())
    except ImportError:
        return False


def _clip_encoder(name: str, weights: str | None, device: torch.device) -> TextEncoder:
    import open_clip

    from sgmn.models.clip import create_clip, get_tokenizer
    model = create_clip(name, weights if weights is not None else "none").to(device).eval()
    tokenizer = get_tokenizer(name)
    dim = int(open_clip.get_model_config(name)["embed_dim"])

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device), normalize=False)

    return TextEncoder("clip", name, dim, int(getattr(tokenizer, "context_length", 0) or 0), encode)


def _chinese_clip_text_class():
    """ChineseCLIPModel that loads without the vision tower's weights: the suite only encodes
    text, so `sgmn fetch-weights` saves the text tower and its projection alone."""
    from transformers import ChineseCLIPModel

    class ChineseCLIPText(ChineseCLIPModel):
        _keys_to_ignore_on_load_missing = (r"^vision_model\.", r"^visual_projection\.")

    return ChineseCLIPText


def _text_only(model):
    """Drop the vision tower (random when the weights held none): get_text_features never uses it."""
    model.vision_model = None
    model.visual_projection = None
    return model


def _check_text_weights(name: str, info: dict) -> None:
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # vision keys are ignored; a text weight left at random init is an error
        raise FileNotFoundError(
            f"text.chinese_clip '{name}': the weights lack {len(missing)} text tower entries "
            f"({', '.join(missing[:3])}, ...); not a ChineseCLIP model of this config")


def load_chinese_clip(name: str, cache_dir: str | None = None):
    """(ChineseCLIPModel, tokenizer) from a local directory or a hub name, float32.

    Only the text tower and its projection are loaded (the vision tower is dropped), so a
    directory may hold the full model or the text weights alone (what `sgmn fetch-weights`
    writes). A hub name is read through `cache_dir` (default the Hugging Face cache); one that
    cannot be fetched (offline machine, unknown name) raises FileNotFoundError that says to
    download the model once and pass its local directory.
    """
    from transformers import AutoTokenizer
    model_class = _chinese_clip_text_class()
    path = Path(name).expanduser()
    # a hub id is "name" or "org/name"; anything else is meant as a local path
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if path.is_dir():
        try:
            model, info = model_class.from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                                      output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise FileNotFoundError(
                f"text.chinese_clip '{name}' is a directory but not a ChineseCLIP model with its "
                f"tokenizer (save both with save_pretrained): {err}") from err
        _check_text_weights(name, info)
        return _text_only(model), tokenizer
    if path.exists() or looks_local:
        raise FileNotFoundError(
            f"text.chinese_clip '{name}': no such directory; pass the local directory of a "
            f"ChineseCLIP model (config.json, weights and tokenizer files)")
    offline = _hub_offline()
    try:
        model, info = model_class.from_pretrained(name, local_files_only=offline, dtype=torch.float32,
                                                  cache_dir=cache_dir, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FileNotFoundError(
            f"could not load the ChineseCLIP model '{name}' from the Hugging Face hub or its cache"
            f"{' (offline mode)' if offline else ''}: {reason} On a machine without internet, "
            f"fetch it once elsewhere (`sgmn fetch-weights`, docs/offline.md), copy the folder "
            f"over and set text.chinese_clip to its local directory") from err
    _check_text_weights(name, info)
    return _text_only(model), tokenizer


def chinese_clip_text_encoder(model, tokenizer, name: str, device) -> TextEncoder:
    """The TextEncoder of a loaded ChineseCLIP (model, tokenizer) pair."""
    model = model.to(device).eval()
    max_length = int(model.config.text_config.max_position_embeddings)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model.get_text_features(**{k: v.to(device) for k, v in batch.items()})
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object

    return TextEncoder("chinese_clip", name, int(model.config.projection_dim), max_length, encode)


def _chinese_clip_encoder(name: str, device: torch.device) -> TextEncoder:
    model, tokenizer = load_chinese_clip(name)
    return chinese_clip_text_encoder(model, tokenizer, name, device)


def load_text_encoder(config: dict, clip_weights: str | None, device="cpu") -> TextEncoder:
    """The frozen encoder named by config.text.encoder, in eval mode on `device`."""
    device = torch.device(device)
    encoder = config["text"]["encoder"]
    if encoder == "clip":
        if clip_weights in (None, "none"):
            log.warning("text features from a randomly initialised CLIP text tower (--clip-weights none)")
        return _clip_encoder(config["model"]["clip"], clip_weights, device)
    if encoder == "chinese_clip":
        return _chinese_clip_encoder(config["text"]["chinese_clip"], device)
    raise ValueError(f"unknown text.encoder '{encoder}' (clip or chinese_clip)")


def _normalise(feats: torch.Tensor, texts: list[str]) -> torch.Tensor:
    feats = feats.detach().float().cpu()
    norm = feats.norm(dim=-1, keepdim=True)
    bad = ~torch.isfinite(norm).squeeze(1) | (norm.squeeze(1) == 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise RuntimeError(f"the text encoder gave a zero or non-finite feature for {texts[i][:60]!r}")
    return feats / norm


def _encode_into(encoder: TextEncoder, texts: list[str], rows, out, batch_size: int) -> None:
    """Encode the non-empty `texts` and write their normalised features to out[rows[i]].

    Batches are formed in order of length (less padding for ChineseCLIP's tokenizer).
    """
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), texts[i]))
    rows = np.asarray(rows, dtype=np.int64)
    desc = f"text features ({encoder.encoder} {encoder.model_name})"
    with torch.no_grad(), tqdm(total=len(texts), unit="text", desc=desc, file=sys.stderr,
                               mininterval=1.0 if sys.stderr.isatty() else 15.0) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            chunk = [texts[i] for i in idx]
            out[rows[idx]] = _normalise(encoder.encode(chunk), chunk).numpy()
            bar.update(len(idx))


def encode_texts(texts: list[str], config: dict, clip_weights: str | None, device="cpu",
                 batch_size: int | None = None, encoder: TextEncoder | None = None) -> np.ndarray:
    """(n, D) float32 L2-normalised features of `texts` (zero rows for empty texts).

    Each distinct non-empty text is encoded once; `encoder` reuses an already loaded encoder.
    """
    texts = _check_texts(texts)
    encoder = encoder or load_text_encoder(config, clip_weights, device)
    batch_size = batch_size or config["text"]["batch_size"]
    unique = sorted({t for t in texts if not is_empty(t)})
    feats = np.zeros((len(unique), encoder.dim), np.float32)
    _encode_into(encoder, unique, np.arange(len(unique)), feats, batch_size)
    row = {t: i for i, t in enumerate(unique)}
    out = np.zeros((len(texts), encoder.dim), np.float32)
    where = [i for i, t in enumerate(texts) if t in row]
    if where:
        out[where] = feats[[row[texts[i]] for i in where]]
    return out


# --------------------------------------------------------------------------- the cache

def _storage_dtype(dtype: str, count: int, dim: int) -> np.dtype:
    if dtype == "auto":
        return np.dtype(np.float16 if count * dim > FLOAT16_ABOVE else np.float32)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"cache dtype must be auto, float32 or float16, got {dtype!r}")
    return np.dtype(dtype)


def _is_cache_dir(path: Path) -> bool:
    import json
    try:
        return json.loads((path / META_FILE).read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_cache(out_dir: str | Path, texts: list[str], dim: int, dtype: str, meta: dict,
                 fill: Callable[[list[str], np.ndarray], None]) -> Path:
    """Write a cache directory atomically; `fill(sorted_texts, features)` writes the rows."""
    from sgmn.io import write_json
    texts = _check_texts(texts)
    keys = np.array([text_key(t) for t in texts], dtype=KEY_DTYPE)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
        raise ValueError("the texts of a text feature cache must be unique")
    texts = [texts[i] for i in order]
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_cache_dir(out))):
        raise FileExistsError(f"{out} exists and is not a text feature cache; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    store = _storage_dtype(dtype, len(texts), dim)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        feats = np.lib.format.open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=store, shape=(len(texts), dim))
        feats[:] = 0
        fill(texts, feats)
        feats.flush()
        del feats
        np.save(tmp / KEYS_FILE, keys)
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **meta, "dim": int(dim),
                "count": len(texts), "n_empty": sum(is_empty(t) for t in texts), "dtype": store.name,
                "key": "sha1 hex of the UTF-8 text; keys.npy is sorted, row i of features.npy is keys[i]",
                "normalised": True}
        write_json(meta, tmp / META_FILE)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_text_features(out_dir: str | Path, texts: list[str], features: np.ndarray,
                        meta: dict | None = None, dtype: str = "auto") -> Path:
    """Cache already computed features (row i of `features` is `texts[i]`, texts unique)."""
    features = np.asarray(features)
    texts = _check_texts(texts)
    if features.ndim != 2 or features.shape[0] != len(texts):
        raise ValueError(f"features must be (len(texts), D), got {features.shape} for {len(texts)} texts")
    row = {t: i for i, t in enumerate(texts)}

    def fill(sorted_texts, out):
        if sorted_texts:
            out[:] = features[[row[t] for t in sorted_texts]]

    return _write_cache(out_dir, texts, features.shape[1], dtype, meta or {}, fill)


class TextFeatures:
    """A loaded cache: `lookup(texts)` -> ((n, D) float32 features, (n,) bool present)."""

    def __init__(self, path: Path, features: np.ndarray, keys: np.ndarray, meta: dict):
        self.path, self.features, self.keys, self.meta = path, features, keys, meta

    @classmethod
    def load(cls, path: str | Path) -> "TextFeatures":
        import json
        path = Path(path)
        rerun = "rerun the text_features step (sgmn text-features)"
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path}: no text feature cache ({META_FILE} missing); {rerun}")
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise ValueError(f"{path}: not a {CACHE_FORMAT} v{CACHE_VERSION} cache "
                             f"(format {meta.get('format')!r} v{meta.get('version')!r}); {rerun}")

        def load_array(name):
            try:
                return np.load(path / name, mmap_mode="r")
            except ValueError:  # an empty array cannot be memory-mapped
                return np.load(path / name)

        features, keys = load_array(FEATURES_FILE), load_array(KEYS_FILE)
        shape = (meta["count"], meta["dim"])
        if features.shape != shape or keys.shape != (meta["count"],):
            raise ValueError(f"{path}: features {features.shape} / keys {keys.shape} do not match "
                             f"meta.json's count and dim {shape}; {rerun}")
        return cls(path, features, keys, meta)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return int(self.meta["count"])

    def __contains__(self, text: str) -> bool:
        return is_empty(text) or self._rows([text], raise_missing=False)[0] >= 0

    def _rows(self, texts: list[str], raise_missing: bool = True) -> np.ndarray:
        """Row of each text (-1 for empty text, or for a missing one when not raising)."""
        rows = np.full(len(texts), -1, dtype=np.int64)
        want = [i for i, t in enumerate(texts) if not is_empty(t)]
        if not want or not len(self.keys):
            if want and raise_missing:
                self._missing(texts[want[0]])
            return rows
        keys = np.array([text_key(texts[i]) for i in want], dtype=KEY_DTYPE)
        pos = np.searchsorted(self.keys, keys)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        if raise_missing and not hit.all():
            self._missing(texts[want[int(np.flatnonzero(~hit)[0])]])
        rows[np.asarray(want)[hit]] = pos[hit]
        return rows

    def _missing(self, text: str):
        raise KeyError(f"text not in the text feature cache {self.path}: {text[:60]!r}; the cache is "
                       f"stale or was built for other data - rerun the text_features step "
                       f"(sgmn text-features / snakemake results/{{ds}}/text)")

    def lookup(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) float32 features and (n,) present flags (False for empty text: a zero row).

        A non-empty text that is not cached raises KeyError naming it.
        """
        texts = _check_texts(texts)
        rows = self._rows(texts)
        present = rows >= 0
        out = np.zeros((len(texts), self.dim), np.float32)
        if present.any():
            out[present] = self.features[rows[present]]
        return torch.from_numpy(out), torch.from_numpy(present)


# --------------------------------------------------------------------------- the DAG step

def collect_texts(data_dir: str | Path, fmt: str, on_bad_line: str = "error") -> list[str]:
    """Every ASR text and title of the training and test splits, unique and sorted."""
    from sgmn.data.datasets import read_split
    train = read_split(data_dir, fmt, "train", on_bad_line)
    test = read_split(data_dir, fmt, "test")
    texts = {t for c in train for t in (c.asr, c.title)}
    texts |= {q.asr for q in test.queries}
    texts |= set(test.titles.values())
    return sorted(t if t is not None else "" for t in texts)


def build_text_features(config: dict, data_dir: str | Path, clip_weights: str | None,
                        out_dir: str | Path, device=None, batch_size: int | None = None,
                        dtype: str = "auto") -> Path:
    """Encode every text of the dataset under `data_dir` and write the cache to `out_dir`.

    device: None follows config.train.device (auto: CUDA when available).
    """
    from sgmn.io import provenance
    from sgmn.models.device import resolve_device
    dcfg = config["dataset"]
    texts = collect_texts(data_dir, dcfg["format"], dcfg.get("on_bad_line", "error"))
    n_empty = sum(is_empty(t) for t in texts)
    log.info("%d distinct texts (%d empty) in %s", len(texts), n_empty, data_dir)
    if device is None:
        device = resolve_device(config.get("train", {}).get("device", "auto"))
    encoder = load_text_encoder(config, clip_weights, device)
    batch_size = batch_size or config["text"]["batch_size"]

    def fill(sorted_texts, out):
        rows = [i for i, t in enumerate(sorted_texts) if not is_empty(t)]
        _encode_into(encoder, [sorted_texts[i] for i in rows], rows, out, batch_size)

    meta = {"encoder": encoder.encoder, "model": encoder.model_name,
            "clip_weights": str(clip_weights) if encoder.encoder == "clip" else None,
            "max_length": encoder.max_length,
            "dataset": {"path": str(data_dir), "format": dcfg["format"]},
            "provenance": provenance(config, None)}
    out = _write_cache(out_dir, texts, encoder.dim, dtype, meta, fill)
    log.info("wrote %s: %d x %d features", out, len(texts), encoder.dim)
    return out
