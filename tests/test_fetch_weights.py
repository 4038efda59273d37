"""`sgmn fetch-weights` (docs/offline.md): what a config downloads, fetched into local files that
the config can name, giving the same model and the same text features as the hub's weights.

No network here: the tests build their own "hub" in a Hugging Face cache layout (a random
ViT-B-32 as open_clip's `openai` weights, a tiny ChineseCLIP under a made-up hub id) and run
with huggingface_hub's offline mode, so open_clip's and transformers' real download paths
(hf_hub_download, cache lookup) resolve the files.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sgmn import weights as W
from sgmn.cli import main
from sgmn.config import deep_merge, resolve_variant, validate
from sgmn.models.clip import QUICK_GELU_KEY, create_clip, save_clip, weights_metadata
from sgmn.text import features as tf

OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"   # open_clip's hub entry of ViT-B-32/openai
CHINESE_ID = "sgmn-test/tiny-chinese-clip"
REVISION = "0123456789abcdef0123456789abcdef01234567"
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("红色蓝的连衣裙女款粉杯子直播间今天折衬衫")
         + ["blue", "cotton", "shirt", "size", "l", "red", "dress", "cup", "3", ",", "!", "##s"])
TEXTS = ["红色连衣裙", "blue cotton shirt", "粉色杯子 " * 30, "直播间 今天 3 折 !!", "", "a red dress"]


def _snapshot(cache: Path, repo: str) -> Path:
    """A repo's snapshot folder in the Hugging Face cache layout, `main` pointing at it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache holding ViT-B-32 `openai` weights and a tiny ChineseCLIP."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel
    cache = tmp_path_factory.mktemp("hf_cache")
    torch.manual_seed(0)
    vit = {k: v.contiguous() for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}
    save_file(vit, str(_snapshot(cache, OPENAI_REPO) / "open_clip_model.safetensors"), metadata={"format": "pt"})

    snap = _snapshot(cache, CHINESE_ID)
    (snap / "vocab.txt").write_text("\n".join(dict.fromkeys(VOCAB)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(snap))   # BertTokenizer(vocab_file=) ignores the file in v5
    assert tokenizer.convert_tokens_to_ids("红") != tokenizer.unk_token_id
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = ChineseCLIPConfig(
        text_config={**small, "vocab_size": len(dict.fromkeys(VOCAB)), "max_position_embeddings": 24},
        vision_config={**small, "image_size": 32, "patch_size": 16}, projection_dim=16)
    torch.manual_seed(1)
    ChineseCLIPModel(cfg).save_pretrained(snap)           # the full model, vision tower included
    tokenizer.save_pretrained(snap)
    return {"cache": cache, "vit": vit, "chinese_dir": snap}


@pytest.fixture
def offline(monkeypatch, hub):
    """huggingface_hub offline (it reads HF_HUB_OFFLINE at import) with the test's cache as default."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["cache"]))
    return hub


def _config_yaml(tmp_path, **text) -> Path:
    """An LPR4M-like config (ViT-B-32/openai, ChineseCLIP text) with two variants, as YAML."""
    data = {"model": {"clip": "ViT-B-32", "pretrained": "openai", "image_size": 224, "num_frames": 2},
            "text": {"encoder": "chinese_clip", "chinese_clip": CHINESE_ID, **text},
            "variants": ["sgmn", "sgmn_wo_te", "random_init"], "table2": {"enabled": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_required_weights_of_the_lpr4m_config(tmp_path):
    # four of lpr4m.yaml's rows (resolving each re-reads the schema: ~1 s a row on a busy CPU)
    rows = tmp_path / "rows.yaml"
    rows.write_text(yaml.safe_dump({"variants": ["gra_only", "sgmn", "sgmn_wo_te", "clip_zeroshot"]}))
    config = W.load_fetch_config(["workflow/config/lpr4m.yaml", str(rows)])
    needs = {(n.kind, n.name, n.tag): n for n in W.required_weights(config)}
    assert set(needs) == {("open_clip", "ViT-B-32", "openai"),
                          ("chinese_clip", "OFA-Sys/chinese-clip-vit-base-patch16", None)}
    # every LPR4M run starts from OpenAI's CLIP; only the runs with the text branch read ChineseCLIP
    assert needs["open_clip", "ViT-B-32", "openai"].runs == ["gra_only", "sgmn", "sgmn_wo_te", "clip_zeroshot"]
    assert needs["chinese_clip", "OFA-Sys/chinese-clip-vit-base-patch16", None].runs == ["sgmn"]
    # the default config (LPR-Synth: the DAG's own CLIP, text by its text tower) downloads nothing,
    # Table 2's rows (MF-Synth, on by default) included
    rows.write_text(yaml.safe_dump({"variants": ["sgmn", "random_init"],
                                    "table2": {"variants": ["sgmn_wo_finetune", "sgmn"]}}))
    config = W.load_fetch_config(["workflow/config/default.yaml", str(rows)])
    assert config["table2"]["enabled"] and set(W.run_configs(config)) == {
        "sgmn", "random_init", "table2/sgmn_wo_finetune", "table2/sgmn"}
    assert W.required_weights(config) == []


def test_required_weights_skips_local_and_untaken(tmp_path):
    base = yaml.safe_load(_config_yaml(tmp_path).read_text())
    local = tmp_path / "cc"
    local.mkdir()
    cfg = validate(deep_merge(base, {"text": {"chinese_clip": str(local)}}))
    assert [(n.kind, n.runs) for n in W.required_weights(cfg)] == [("open_clip", ["sgmn", "sgmn_wo_te"])]
    weights = tmp_path / "vit.pt"
    cfg = validate(deep_merge(base, {"model": {"pretrained": str(weights)}, "variants": ["sgmn_wo_te"]}))
    assert W.required_weights(cfg) == []                 # a local file, and no run uses text


def test_fetch_weights_end_to_end(offline, tmp_path, capsys):
    config_path = _config_yaml(tmp_path)
    out, dest = tmp_path / "fetched", tmp_path / "cluster" / "weights"
    assert main(["fetch-weights", "--config", str(config_path), "--out", str(out), "--dest", str(dest),
                 "--cache-dir", str(offline["cache"])]) == 0
    printed = capsys.readouterr().out
    vit_file = dest / "open_clip" / "ViT-B-32-openai.safetensors"
    cc_dir = dest / "chinese_clip" / "sgmn-test--tiny-chinese-clip"
    assert f"model.pretrained: {vit_file}" in printed and f"text.chinese_clip: {cc_dir}" in printed
    assert "HF_HUB_OFFLINE=1" in printed

    # the copy to the machine without internet: nothing may point back at OUT
    dest.parent.mkdir()
    shutil.move(str(out), str(dest))
    manifest = json.loads((dest / "manifest.json").read_text())
    assert str(out) not in json.dumps(manifest) and str(out) not in (dest / "config.yaml").read_text()
    entries = {e["kind"]: e for e in manifest["entries"]}
    assert entries["open_clip"]["quick_gelu"] is True and entries["open_clip"]["runs"] == ["sgmn", "sgmn_wo_te"]
    assert entries["chinese_clip"]["runs"] == ["sgmn"]
    hub_file = offline["cache"] / f"models--{OPENAI_REPO.replace('/', '--')}" / "snapshots" / REVISION
    assert entries["open_clip"]["source"]["file"]["sha256"] == W.sha256_file(hub_file / "open_clip_model.safetensors")
    assert entries["chinese_clip"]["source"]["revision"] == REVISION
    assert {f["path"] for f in entries["chinese_clip"]["source"]["files"]} >= {"config.json", "model.safetensors"}
    sums = (dest / "SHA256SUMS").read_text().splitlines()
    for e in manifest["entries"]:
        for f in e["files"]:
            assert W.sha256_file(dest / f["path"]) == f["sha256"] and (dest / f["path"]).stat().st_size == f["bytes"]
            assert f"{f['sha256']}  {f['path']}" in sums
    assert {Path(f["path"]).name for f in entries["chinese_clip"]["files"]} >= {
        "config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"}
    # the text tower only: no vision weights in the fetched ChineseCLIP
    from safetensors import safe_open
    with safe_open(str(cc_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys and not any(k.startswith(("vision_model.", "visual_projection.")) for k in keys)
    assert any(k.startswith("text_model.") for k in keys) and "text_projection.weight" in keys
    assert weights_metadata(vit_file)[QUICK_GELU_KEY] == "true"

    # the config with config.yaml layered on top (snakemake --configfile cfg.yaml config.yaml)
    snippet = yaml.safe_load((dest / "config.yaml").read_text())
    assert snippet == {"model": {"pretrained": str(vit_file)}, "text": {"chinese_clip": str(cc_dir)}}
    local = resolve_variant(validate(deep_merge(yaml.safe_load(config_path.read_text()), snippet)), "sgmn")
    hubcfg = resolve_variant(validate(yaml.safe_load(config_path.read_text())), "sgmn")

    # the CLIP tower from the file: the hub's weights bit for bit, the same modules as the tag
    # builds (QuickGELU: OpenAI's CLIPs were trained with it)
    from open_clip.transformer import QuickGELU

    from sgmn.models.factory import build_model
    model = build_model(local, local["model"]["pretrained"], text_dim=16)
    clip_state = model.visual.state_dict()
    for k, v in clip_state.items():
        assert torch.equal(v, offline["vit"]["visual." + k]), k
    assert any(isinstance(m, QuickGELU) for m in model.visual.modules())
    tagged = create_clip("ViT-B-32", "openai", 224)       # open_clip's tag, from the offline cache
    assert repr(tagged.visual) == repr(model.visual)
    for k, v in tagged.visual.state_dict().items():
        assert torch.equal(v, clip_state[k]), k

    # text features of the fetched ChineseCLIP equal those of the hub's (full) model
    feats_local = tf.encode_texts(TEXTS, local, None)
    feats_hub = tf.encode_texts(TEXTS, hubcfg, None)
    assert np.array_equal(feats_local, feats_hub)
    assert np.abs(feats_local[0]).sum() > 0 and not np.array_equal(feats_local[0], feats_local[1])
    from transformers import ChineseCLIPModel
    original = ChineseCLIPModel.from_pretrained(str(offline["chinese_dir"]))
    fetched, _ = tf.load_chinese_clip(str(cc_dir))
    assert fetched.vision_model is None
    for k, v in fetched.state_dict().items():
        assert torch.equal(v, original.state_dict()[k]), k


def test_fetch_fails_clearly_when_nothing_can_be_downloaded(offline, tmp_path, capsys):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    rc = main(["fetch-weights", "--config", str(_config_yaml(tmp_path)), "--out", str(tmp_path / "w"),
               "--cache-dir", str(empty)])
    assert rc == 2
    err = capsys.readouterr().err                         # the CLI logs to stderr
    assert "could not download open_clip weights ViT-B-32/openai" in err and OPENAI_REPO in err
    assert not (tmp_path / "w" / "manifest.json").exists()


def test_local_safetensors_metadata_sets_quick_gelu(tmp_path):
    """A fetched file's metadata rebuilds the architecture its tag has (tiny model: fast)."""
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = create_clip("lpr-tiny-clip", "none")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for quick in (True, False):
        path = tmp_path / f"tiny-{quick}.safetensors"
        save_file(state, str(path), metadata={"format": "pt", QUICK_GELU_KEY: str(quick).lower()})
        loaded = create_clip("lpr-tiny-clip", str(path))
        assert any(isinstance(m, QuickGELU) for m in loaded.modules()) is quick
        assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    save_clip(model, tmp_path / "plain.pt")                # no metadata: the config's own activation
    assert not any(isinstance(m, QuickGELU) for m in create_clip("lpr-tiny-clip", str(tmp_path / "plain.pt")).modules())


def test_chinese_clip_dir_missing_text_weights_is_refused(hub, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(hub["chinese_dir"], bad)
    state = load_file(str(bad / "model.safetensors"))
    del state["text_projection.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FileNotFoundError, match="text_projection.weight"):
        tf.load_chinese_clip(str(bad))
