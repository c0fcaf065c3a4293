"""videomask inside the Hugging Face world: datasets rows -> word scores -> the collator in Trainer, per-epoch masks."""
import json

import pytest
import torch

from videomask import data
from videomask.collate import (
    MaskingCollator,
    MaskingConfig,
    set_epoch_callback,
    text_sample,
)
from videomask.masking import MaskingError
from videomask.model import ModelConfig, load_tokenizer
from videomask.prep import build
from videomask.scoring import score
from videomask.scoring.text_scorer import TextEncoderScorer

TEXTS = [f"the kinase {i} binds an agonist while caspase cleaves the substrate of cell {i}." for i in range(12)]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoderScorer()


def test_rows_scored_like_shards(tmp_path, tiny_anchors, encoder):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[:3]))
    build.build(tmp_path / "c.jsonl", tmp_path / "shards", build.BuildOptions(), progress=False)
    score.score_shards(tmp_path / "shards", tmp_path / "scored", tiny_anchors, text_encoder=encoder, progress=False)
    shard_scores = {s["text"]: s["meta"]["word_scores"] for s in data.dataset(tmp_path / "scored")}
    f = score.word_scorer(tiny_anchors, encoder)
    rows = f({"text": TEXTS[:3]})
    assert rows["word_scores"] == [shard_scores[t] for t in TEXTS[:3]]
    one = f({"text": TEXTS[0]})  # unbatched map
    assert one["word_scores"] == shard_scores[TEXTS[0]] and one["anchors_hash"] == rows["anchors_hash"][0]


def test_text_sample_from_plain_text_and_rows():
    s = text_sample("the kinase binds.")
    assert [w["w"] for w in s["words"]] == ["the", "kinase", "binds"] and s["frames"] is None
    assert text_sample("the kinase binds.")["key"] == s["key"]  # the same text, the same masks
    assert text_sample({"text": "a b", "id": 7})["key"] == "7"
    with pytest.raises(MaskingError, match="2 word scores for 3 words"):
        text_sample({"text": "the kinase binds.", "word_scores": [0.1, 0.2]})
    with pytest.raises(MaskingError, match="needs a 'text' string"):
        text_sample({"sentence": "x"})


def test_datasets_rows_in_trainer_with_new_masks_each_epoch(tmp_path, tiny_anchors, encoder):
    datasets = pytest.importorskip("datasets")
    from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

    ds = datasets.Dataset.from_dict({"text": TEXTS}).map(score.word_scorer(tiny_anchors, encoder), batched=True)
    tok = load_tokenizer(ModelConfig())
    anchors_hash = json.loads(tiny_anchors.read_text())["hash"]
    collate = MaskingCollator(tok, MaskingConfig(strategy="difference", text_ratio=0.3), max_length=32, text_only=True,
                              anchors_hash=anchors_hash)
    seen = []

    def recording(rows):
        b = collate(rows)
        seen.append((collate.epoch, b["labels"].clone()))
        return b

    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=12, num_train_epochs=3,
                             learning_rate=1e-3, report_to=[], remove_unused_columns=False, use_cpu=True,
                             save_strategy="no", logging_steps=1, seed=0, data_seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=recording,
                      callbacks=[set_epoch_callback(collate)])
    trainer.train()
    assert [e for e, _ in seen] == [0, 1, 2]
    masks = [(labels != -100) for _, labels in seen]
    assert all(m.any() for m in masks)
    # a row's masks depend on (seed, epoch, key) only: the same in one epoch, others in the next
    one = ds[0]
    collate.set_epoch(0)
    first = collate([one])["labels"] != -100
    assert torch.equal(first, collate([one])["labels"] != -100)
    collate.set_epoch(1)
    assert not torch.equal(first, collate([one])["labels"] != -100)
    with pytest.raises(MaskingError, match="configured anchors"):
        MaskingCollator(tok, MaskingConfig(strategy="difference"), text_only=True, anchors_hash="other")([one])
