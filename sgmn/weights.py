"""Pretrained weights for machines without internet: fetch them once, point the config at files.

A config names downloaded weights in two keys (docs/offline.md):
  model.pretrained   an open_clip tag of model.clip (`openai` for ViT-B-32), which open_clip
                     downloads (Hugging Face hub first, else the tag's URL) into its cache;
  text.chinese_clip  the hub id of the ChineseCLIP whose text tower encodes ASR texts and titles
                     (text.encoder chinese_clip, read when a run's method uses text).

`fetch_weights` resolves every run of a config (each variant, and Table 2's rows), downloads
what they need through the same calls a run makes (`create_clip`, `load_chinese_clip`), and
writes plain local files under OUT:
  open_clip/{model}-{tag}.safetensors  the state dict as create_clip(model, tag) builds it; its
                                       metadata records QuickGELU (OpenAI's CLIPs use it)
  chinese_clip/{org}--{name}/          config.json, model.safetensors with the text tower and its
                                       projection only (the suite encodes text, never images),
                                       tokenizer files
  manifest.json                        what, from where, sha256 and bytes of every file
  SHA256SUMS                           the written files' sha256 (`sha256sum -c SHA256SUMS`)
  config.yaml                          the config keys to set on the machine without internet
Every written model is loaded back through the suite's own loader and compared with the
downloaded one (weights bit for bit; for ChineseCLIP also token ids and text features).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_FORMAT, MANIFEST_VERSION = "sgmn-weights", 1
MANIFEST_FILE, SNIPPET_FILE, SUMS_FILE = "manifest.json", "config.yaml", "SHA256SUMS"
# texts whose token ids and features must survive the save and reload (a long one is truncated)
PROBE_TEXTS = ["红色连衣裙 女款", "blue cotton shirt, size L", "粉色杯子 " * 60, "直播间 今天 3 折 !!"]


@dataclass
class Need:
    """One set of downloaded weights: open_clip (model, tag) or a ChineseCLIP hub id."""
    kind: str                 # "open_clip" or "chinese_clip"
    name: str                 # model.clip, or text.chinese_clip
    tag: str | None = None    # the open_clip tag (model.pretrained)
    runs: list[str] = field(default_factory=list)   # the runs (variants) that load it

    @property
    def key(self) -> str:
        return "model.pretrained" if self.kind == "open_clip" else "text.chinese_clip"

    @property
    def value(self) -> str:
        return self.tag if self.kind == "open_clip" else self.name


# --------------------------------------------------------------------------- what a config needs

def load_fetch_config(paths) -> dict:
    """The config the DAG runs: workflow/config/default.yaml with each YAML layered on top (as
    `snakemake --configfile A B` does), validated; or one resolved run config (JSON)."""
    from sgmn.config import deep_merge, load_config, load_yaml, validate
    from sgmn.paths import REPO_ROOT
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
    if len(paths) == 1 and paths[0].suffix == ".json":
        return load_config(paths[0])
    default = REPO_ROOT / "workflow" / "config" / "default.yaml"
    merged = load_yaml(default)[0] if default.is_file() else {}
    for p in paths:
        merged = deep_merge(merged, load_yaml(p)[0])
    return validate(merged, " + ".join(str(p) for p in paths))


def run_configs(config: dict) -> dict[str, dict]:
    """Every run of a config, resolved: its variants, and Table 2's (as `table2/{variant}`).
    A resolved run config (`variant` set) is its own one run."""
    from sgmn.config import VARIANTS_PATH, load_variants, resolve_variant, table2_config
    if "variant" in config:
        return {config["variant"]: config}
    path = config.get("variants_file") or VARIANTS_PATH
    variants = load_variants(path)
    runs = {v: resolve_variant(config, v, variants, path) for v in config.get("variants") or []}
    t2 = table2_config(config)
    for v in (t2 or {}).get("variants", []):
        runs[f"table2/{v}"] = resolve_variant(t2, v, variants, path)
    return runs


def _is_local_path(name: str) -> bool:
    """A text.chinese_clip that names a directory (as load_chinese_clip reads it), not a hub id."""
    return (Path(name).expanduser().is_dir() or name.startswith(("/", ".", "~"))
            or name.count("/") > 1 or "\\" in name)


def required_weights(config: dict) -> list[Need]:
    """The downloaded weights the runs of `config` load, each with the runs that load it.

    model.pretrained `pipeline` (the DAG's own CLIP), `none` and local files need nothing; a
    ChineseCLIP is needed only by runs whose method uses text with text.encoder chinese_clip.
    """
    import open_clip

    from sgmn.config import uses_text
    needs: dict[tuple, Need] = {}
    for run, cfg in run_configs(config).items():
        name, pretrained = cfg["model"]["clip"], cfg["model"]["pretrained"]
        if pretrained in open_clip.list_pretrained_tags_by_model(name):
            needs.setdefault(("open_clip", name, pretrained), Need("open_clip", name, pretrained)).runs.append(run)
        text = cfg["text"]
        if text["encoder"] == "chinese_clip" and uses_text(cfg):
            if _is_local_path(text["chinese_clip"]):
                if not Path(text["chinese_clip"]).expanduser().is_dir():
                    log.warning("run %s: text.chinese_clip %s is a local path that does not exist here; "
                                "nothing to fetch for it", run, text["chinese_clip"])
                continue
            key = ("chinese_clip", text["chinese_clip"], None)
            needs.setdefault(key, Need("chinese_clip", text["chinese_clip"])).runs.append(run)
    return list(needs.values())


# --------------------------------------------------------------------------- files

def sha256_file(path: str | Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_entry(path: Path, root: Path | None = None) -> dict:
    return {"path": str(path.relative_to(root) if root else path), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def _check_same_state(a: dict, b: dict, what: str) -> None:
    """Two state dicts with the same keys and bit-identical tensors, else RuntimeError."""
    import torch
    if a.keys() != b.keys():
        raise RuntimeError(f"{what}: the saved weights reload with other keys "
                           f"({sorted(set(a) ^ set(b))[:5]})")
    for k, x in a.items():
        y = b[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            raise RuntimeError(f"{what}: '{k}' differs after saving and reloading")


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`, replacing an earlier fetch there."""
    if target.exists():
        if not target.is_dir() or (any(target.iterdir()) and not (target / "config.json").is_file()):
            raise FileExistsError(f"{target} exists and is not a fetched model directory; "
                                  f"refusing to overwrite it")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# --------------------------------------------------------------------------- fetchers

def fetch_open_clip(name: str, tag: str, out_dir: str | Path, cache_dir: str | None = None) -> dict:
    """Download open_clip's weights `tag` of `name` and save them as OUT/open_clip/{name}-{tag}.safetensors.

    The weights come through open_clip's own download (hub, else URL; `cache_dir` default the
    Hugging Face cache) and `create_clip(name, tag)`, the call a run makes; the saved file is
    loaded back with `create_clip(name, file)` and must give the same modules and tensors.
    """
    import open_clip
    from safetensors.torch import save_file

    from sgmn.io import atomic_path
    from sgmn.models.clip import QUICK_GELU_KEY, create_clip, tag_quick_gelu
    out_dir = Path(out_dir)
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise ValueError(f"'{tag}' is not an open_clip tag of {name}")
    try:
        source = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(f"could not download open_clip weights {name}/{tag} "
                                f"(hub {cfg.get('hf_hub') or '-'}, url {cfg.get('url') or '-'}): {err}") from err
    if not source:
        raise FileNotFoundError(f"open_clip has no download location for {name}/{tag}")
    log.info("open_clip %s/%s: %s", name, tag, source)
    model = create_clip(name, tag, cache_dir=cache_dir)        # exactly as a run builds the tag
    quick_gelu = tag_quick_gelu(name, tag)
    rel = Path("open_clip") / f"{name}-{tag}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", QUICK_GELU_KEY: "true" if quick_gelu else "false",
                "sgmn.open_clip_model": name, "sgmn.open_clip_tag": tag}
    with atomic_path(out_dir / rel) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    reloaded = create_clip(name, str(out_dir / rel))
    if repr(reloaded) != repr(model):
        raise RuntimeError(f"{out_dir / rel}: reloads as another architecture than {name}/{tag}")
    _check_same_state(model.state_dict(), reloaded.state_dict(), str(out_dir / rel))
    return {"kind": "open_clip", "model": name, "tag": tag, "quick_gelu": quick_gelu,
            "source": {"hf_hub": cfg.get("hf_hub") or None, "url": cfg.get("url") or None,
                       "file": _file_entry(Path(source))},
            "path": str(rel), "files": [_file_entry(out_dir / rel, out_dir)]}


def _hub_snapshot(name: str, cache_dir: str | None) -> dict:
    """The revision (commit) of the hub model `name` in the Hugging Face cache, and its files there."""
    from huggingface_hub import try_to_load_from_cache
    config = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return {"revision": None, "files": []}
    snapshot = Path(config).parent    # .../models--org--name/snapshots/{commit}/
    return {"revision": snapshot.name,
            "files": [_file_entry(p.resolve()) | {"path": p.name} for p in sorted(snapshot.iterdir()) if p.is_file()]}


def _copy_hub_vocab(name: str, cache_dir: str | None, target: Path) -> None:
    """The hub's vocab.txt beside the saved tokenizer (transformers 5 saves tokenizer.json only):
    older transformers and the slow BertTokenizer read vocab.txt."""
    from huggingface_hub import try_to_load_from_cache
    vocab = try_to_load_from_cache(name, "vocab.txt", cache_dir=cache_dir)
    if isinstance(vocab, str) and not (target / "vocab.txt").exists():
        shutil.copyfile(vocab, target / "vocab.txt")


def fetch_chinese_clip(name: str, out_dir: str | Path, cache_dir: str | None = None) -> dict:
    """Download the ChineseCLIP `name` and save its text tower, projection and tokenizer as
    OUT/chinese_clip/{org}--{model}/ (a directory text.chinese_clip can name).

    The model comes through `load_chinese_clip`, the text_features step's loader; the saved
    directory is loaded back the same way and must give the same weights, config, token ids
    and text features.
    """
    import torch
    from safetensors.torch import save_file

    from sgmn.text.features import chinese_clip_text_encoder, load_chinese_clip
    out_dir = Path(out_dir)
    model, tokenizer = load_chinese_clip(name, cache_dir=cache_dir)
    model.eval()
    rel = Path("chinese_clip") / name.replace("/", "--")
    target = out_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _copy_hub_vocab(name, cache_dir, tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    what = f"{target} (ChineseCLIP {name})"
    reloaded, retok = load_chinese_clip(str(target))
    reloaded.eval()
    _check_same_state(model.state_dict(), reloaded.state_dict(), what)
    if reloaded.config.to_diff_dict() != model.config.to_diff_dict():
        raise RuntimeError(f"{what}: the saved config differs from the downloaded one")
    if retok.model_max_length != tokenizer.model_max_length:
        raise RuntimeError(f"{what}: tokenizer model_max_length {retok.model_max_length} != "
                           f"{tokenizer.model_max_length}")
    for text in PROBE_TEXTS:
        if retok(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise RuntimeError(f"{what}: the saved tokenizer splits {text[:20]!r} differently")
    with torch.no_grad():
        a = chinese_clip_text_encoder(model, tokenizer, name, "cpu").encode(PROBE_TEXTS)
        b = chinese_clip_text_encoder(reloaded, retok, str(target), "cpu").encode(PROBE_TEXTS)
    if not torch.equal(a, b):
        raise RuntimeError(f"{what}: text features differ after saving and reloading")
    files = [_file_entry(p, out_dir) for p in sorted(target.iterdir()) if p.is_file()]
    return {"kind": "chinese_clip", "model": name, "parts": "text tower, text_projection, logit_scale, tokenizer",
            "source": {"hf_hub": name, **_hub_snapshot(name, cache_dir)},
            "path": str(rel), "files": files}


# --------------------------------------------------------------------------- the command

def fetch_weights(config: dict, out_dir: str | Path, dest: str | None = None,
                  cache_dir: str | None = None, sources: list[str] | None = None) -> dict:
    """Fetch everything `config`'s runs download; write OUT/manifest.json and OUT/config.yaml.

    dest: where OUT will be on the machines without internet (default OUT's absolute path);
    the paths in config.yaml and the manifest's `config` keys start there.
    """
    from sgmn.io import library_versions, write_json
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = str(dest or out_dir.resolve()).rstrip("/")
    entries = []
    for need in required_weights(config):
        log.info("fetching %s %s%s (runs: %s)", need.kind, need.name, f"/{need.tag}" if need.tag else "",
                 ", ".join(need.runs))
        if need.kind == "open_clip":
            entry = fetch_open_clip(need.name, need.tag, out_dir, cache_dir)
        else:
            entry = fetch_chinese_clip(need.name, out_dir, cache_dir)
        entry.update(key=need.key, replaces=need.value, runs=need.runs,
                     config={need.key: f"{dest}/{entry['path']}"})
        entries.append(entry)
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "configs": [str(s) for s in sources or []],
                "dest": dest, "entries": entries, "versions": library_versions()}
    write_json(manifest, out_dir / MANIFEST_FILE)
    (out_dir / SNIPPET_FILE).write_text(config_snippet(manifest, config), encoding="utf-8")
    # `sha256sum -c SHA256SUMS` in OUT checks a copy without Python
    sums = [f"{f['sha256']}  {f['path']}" for e in entries for f in e["files"]]
    (out_dir / SUMS_FILE).write_text("".join(line + "\n" for line in sums), encoding="utf-8")
    return manifest


def _in_base(entry: dict, config: dict) -> bool:
    """Whether the config's own keys (not only a variant's overrides) name these weights."""
    if entry["kind"] == "open_clip":
        return (config["model"]["clip"], config["model"]["pretrained"]) == (entry["model"], entry["tag"])
    return config["text"]["chinese_clip"] == entry["model"]


def config_snippet(manifest: dict, config: dict) -> str:
    """YAML with the config keys that point at the fetched files, to layer on the run's config."""
    import yaml
    keys: dict[str, dict] = {}
    notes = []
    for e in manifest["entries"]:
        (key, path), = e["config"].items()
        if _in_base(e, config):
            section, leaf = key.split(".")
            keys.setdefault(section, {})[leaf] = path
        else:
            notes.append(f"# variants {', '.join(e['runs'])} set {key}: {e['replaces']} in their "
                         f"overrides; set it to {path} there")
    head = ["# Written by `sgmn fetch-weights` (manifest.json beside it): the config keys that point at",
            "# the fetched weights. On the machine without internet, layer it after the run's config",
            "# (snakemake --configfile <config> <this file>) or copy the keys; docs/offline.md."]
    body = yaml.safe_dump(keys, sort_keys=True, allow_unicode=True) if keys else "{}\n"
    return "\n".join(head + notes) + "\n" + body


def instructions(manifest: dict, out_dir: str | Path) -> str:
    """What to do next, printed by the command."""
    out_dir = Path(out_dir)
    if not manifest["entries"]:
        return "This config downloads no weights (model.pretrained pipeline/none/a file; no ChineseCLIP): nothing to copy."
    lines = [f"Fetched into {out_dir}:"]
    for e in manifest["entries"]:
        size = sum(f["bytes"] for f in e["files"])
        lines.append(f"  {e['path']}  ({size / 2**20:.1f} MiB; {e['key']} was {e['replaces']})")
    lines += ["", f"1. Copy {out_dir} to {manifest['dest']} on the machines without internet.",
              f"2. Set these keys (or pass {Path(manifest['dest']) / SNIPPET_FILE} as one more --configfile):", ""]
    lines += ["   " + line for line in config_snippet_body(manifest)]
    lines += ["", "3. There, export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 (fail fast instead of trying the hub).",
              f"   Check the copy there: cd {manifest['dest']} && sha256sum -c {SUMS_FILE}"]
    return "\n".join(lines)


def config_snippet_body(manifest: dict) -> list[str]:
    return [f"{key}: {path}" for e in manifest["entries"] for key, path in e["config"].items()]
