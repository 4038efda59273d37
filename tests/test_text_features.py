"""The text_features step (SGMN's frozen text encoder, Eq. 4): encoders, cache, lookup, CLI."""
import json

import numpy as np
import pytest
import torch

from sgmn.config import validate
from sgmn.data.datasets import read_split
from sgmn.models.clip import create_clip, save_clip
from sgmn.text import features as tf

CHINESE_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("红色蓝色的连衣裙衬衫男女款大小号粉杯子")
                 + ["red", "blue", "dress", "cup", "a", "b", "##s", ",", "."])

TEXTS = ["红色连衣裙", "蓝色衬衫 blue", "", "   ", "红色连衣裙", "pink cup with red trim", "粉色杯子 " * 40,
         "\t\n", "a red dress"]


def _config(**text):
    return validate({"model": {"clip": "lpr-tiny-clip", "pretrained": "none"}, "text": text})


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    save_clip(create_clip("lpr-tiny-clip", "none"), path)
    return str(path)


@pytest.fixture(scope="module")
def chinese_clip_dir(tmp_path_factory):
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel
    out = tmp_path_factory.mktemp("chinese_clip")
    vocab = list(dict.fromkeys(CHINESE_VOCAB))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"))
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    cfg = ChineseCLIPConfig(
        text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 16},
        vision_config={**small, "image_size": 32, "patch_size": 16, "projection_dim": 16},
        projection_dim=16)
    torch.manual_seed(0)
    ChineseCLIPModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _check_features(feats: np.ndarray, texts: list[str], dim: int):
    assert feats.shape == (len(texts), dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    norms = np.linalg.norm(feats, axis=1)
    for t, f, n in zip(texts, feats, norms):
        if t.strip():
            assert abs(n - 1) < 1e-5, t
        else:
            assert (f == 0).all(), repr(t)
    same = [i for i, t in enumerate(texts) if t == texts[0]]
    assert len(same) > 1 and all((feats[i] == feats[same[0]]).all() for i in same)
    nonempty = [f for t, f in zip(texts, feats) if t.strip()]
    assert len({f.tobytes() for f in nonempty}) == len({t for t in texts if t.strip()})  # distinct texts differ


def test_clip_encoder(clip_weights, monkeypatch):
    config = _config(encoder="clip", batch_size=2)
    seen = []
    load = tf.load_text_encoder

    def spy(*args, **kwargs):
        enc = load(*args, **kwargs)
        inner = enc.encode
        enc.encode = lambda texts: (seen.extend(texts), inner(texts))[1]
        return enc

    monkeypatch.setattr(tf, "load_text_encoder", spy)
    feats = tf.encode_texts(TEXTS, config, clip_weights)
    _check_features(feats, TEXTS, 128)
    # each distinct non-empty text reaches the encoder exactly once; empty ones never
    assert sorted(seen) == sorted({t for t in TEXTS if t.strip()})
    # the same numbers as the CLIP text tower itself (long text truncated to the context length)
    from sgmn.models.clip import get_tokenizer
    model = create_clip("lpr-tiny-clip", clip_weights).eval()
    with torch.no_grad():
        ref = model.encode_text(get_tokenizer("lpr-tiny-clip")([TEXTS[6], TEXTS[1]]), normalize=True)
    np.testing.assert_allclose(feats[[6, 1]], ref.numpy(), atol=1e-5)


def test_chinese_clip_encoder(chinese_clip_dir):
    config = _config(encoder="chinese_clip", chinese_clip=chinese_clip_dir, batch_size=3)
    enc = tf.load_text_encoder(config, None)
    assert enc.dim == 16 and enc.max_length == 16
    feats = tf.encode_texts(TEXTS, config, None, encoder=enc)
    _check_features(feats, TEXTS, 16)
    # batch composition (padding) does not change a text's feature
    alone = tf.encode_texts([TEXTS[1]], config, None, encoder=enc)
    np.testing.assert_allclose(alone[0], feats[1], atol=1e-5)
    assert tf.encode_texts(["", " "], config, None, encoder=enc).tolist() == [[0.0] * 16] * 2
    # the same numbers as transformers' own ChineseCLIP text path, written out: the [CLS] state
    # of the text model through text_projection (what get_text_features computes), normalised
    from transformers import AutoTokenizer, ChineseCLIPModel
    model = ChineseCLIPModel.from_pretrained(chinese_clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(chinese_clip_dir)
    for k in (1, 6):                                     # 6 is longer than 16 positions: truncated
        batch = tokenizer([TEXTS[k]], truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            cls = model.text_model(**batch).last_hidden_state[:, 0]
            ref = torch.nn.functional.normalize(model.text_projection(cls), dim=-1)
        np.testing.assert_allclose(feats[k], ref[0].numpy(), atol=1e-5)


def test_chinese_clip_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network retries in the test
    with pytest.raises(FileNotFoundError, match="local directory") as err:
        tf.load_chinese_clip("sgmn-no-such-org/no-such-chinese-clip")
    assert "sgmn-no-such-org/no-such-chinese-clip" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        tf.load_chinese_clip(str(tmp_path / "missing" / "chinese_clip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a ChineseCLIP model"):
        tf.load_chinese_clip(str(tmp_path / "empty"))


def test_cache_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["b", "a", "", "  ", "红色连衣裙"]
    feats = rng.normal(size=(5, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats[2:4] = 0
    out = tf.write_text_features(tmp_path / "text", texts, feats, {"encoder": "test"})
    cache = tf.TextFeatures.load(out)
    assert cache.dim == 8 and len(cache) == 5 and cache.meta["n_empty"] == 2
    assert isinstance(cache.features, np.memmap)
    query = ["红色连衣裙", "", "a", "b", "a", "\t"]
    got, present = cache.lookup(query)
    assert got.dtype == torch.float32 and got.shape == (6, 8)
    assert present.tolist() == [True, False, True, True, True, False]
    np.testing.assert_array_equal(got.numpy(), feats[[4, 2, 1, 0, 1, 3]])
    assert "a" in cache and "" in cache and "zzz" not in cache
    with pytest.raises(KeyError, match=r"not in the text feature cache.*'never seen text.*rerun the text_features step"):
        cache.lookup(["a", "never seen text " + "x" * 100])
    with pytest.raises(KeyError) as err:
        cache.lookup(["never seen text " + "x" * 100])
    assert "x" * 44 + "'" in str(err.value) and "x" * 45 not in str(err.value)  # first 60 characters
    empty, present = cache.lookup([])
    assert empty.shape == (0, 8) and present.shape == (0,)
    # float16 storage, float32 out
    out16 = tf.write_text_features(tmp_path / "text16", texts, feats, dtype="float16")
    got16, _ = tf.TextFeatures.load(out16).lookup(texts)
    assert got16.dtype == torch.float32
    np.testing.assert_allclose(got16.numpy(), feats, atol=1e-3)
    # an existing cache is replaced, anything else is not overwritten
    tf.write_text_features(out, ["c"], feats[:1])
    assert len(tf.TextFeatures.load(out)) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        tf.write_text_features(tmp_path / "other", texts, feats)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_collect_texts(smoke_data):
    texts = tf.collect_texts(smoke_data, "lpr4m", "error")
    assert texts == sorted(set(texts))
    train, test = read_split(smoke_data, "lpr4m", "train"), read_split(smoke_data, "lpr4m", "test")
    expected = {c.asr for c in train} | {c.title for c in train} | {q.asr for q in test.queries} \
        | set(test.titles.values())
    assert set(texts) == expected
    assert set(test.titles.values()) - {c.title for c in train}  # test titles are collected too


def test_build_and_cli(smoke_data, mf_data, clip_weights, tmp_path):
    from sgmn.cli import main
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps({"model": {"clip": "lpr-tiny-clip", "pretrained": "none"},
                                    "text": {"batch_size": 16}, "train": {"device": "cpu"}}))
    out = tmp_path / "text"
    assert main(["text-features", "--config", str(cfg_path), "--data", str(smoke_data),
                 "--clip-weights", clip_weights, "--out", str(out), "--threads", "1"]) == 0
    cache = tf.TextFeatures.load(out)
    texts = tf.collect_texts(smoke_data, "lpr4m")
    assert len(cache) == len(texts) and cache.dim == 128
    assert cache.meta["encoder"] == "clip" and cache.meta["clip_weights"] == clip_weights
    assert cache.meta["provenance"]["versions"]["torch"]
    got, present = cache.lookup(texts)
    assert present.tolist() == [bool(t.strip()) for t in texts]
    direct = tf.encode_texts(texts, _config(encoder="clip"), clip_weights)
    np.testing.assert_allclose(got.numpy(), direct, atol=1e-6)  # lookup equals encode
    # MovingFashion has no text: every feature is zero, still a valid cache
    config = validate({"dataset": {"format": "movingfashion"}, "model": {"clip": "lpr-tiny-clip"},
                       "train": {"device": "cpu"}})
    mf = tf.TextFeatures.load(tf.build_text_features(config, mf_data, clip_weights, tmp_path / "mf"))
    assert mf.dim == 128 and mf.meta["n_empty"] == len(mf)
    got, present = mf.lookup([""] * 3)
    assert not present.any() and (got == 0).all()
    # a bad encoder source is a clean CLI error, not a traceback
    cfg_path.write_text(json.dumps({"text": {"encoder": "chinese_clip",
                                             "chinese_clip": str(tmp_path / "no_model")}}))
    assert main(["text-features", "--config", str(cfg_path), "--data", str(smoke_data),
                 "--out", str(tmp_path / "bad")]) == 2
