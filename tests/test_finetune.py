import json

import pytest
import torch

from videomask import finetune as ft
from videomask import metrics
from videomask.config import ConfigError


def test_metrics_known_answers():
    r = metrics.scores([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    # per class F1: class 0 2*1/(2+2) = 0.5, class 1 2*2/(2+3) = 0.8, class 2 0
    assert r["per_class_f1"] == [0.5, 0.8, 0.0]
    assert r["macro_f1"] == pytest.approx(1.3 / 3) and r["accuracy"] == r["micro_f1"] == 0.6
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # a class that is neither gold nor predicted does not count in macro-F1 (scikit-learn's default)
    assert metrics.scores([0, 1], [0, 1], 5)["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="no examples"):
        metrics.scores([], [], 2)


def tiny_cfg(shards, tmp_path, *extra):
    return ft.load_config([], [f"shards={shards}", f"out={tmp_path / 'ft'}", "epochs=2", "batch_size=4",
                               "model.dropout=0.0", *extra])


def test_linear_probe_trains_only_the_head(tiny_shards, tmp_path):
    cfg = tiny_cfg(tiny_shards["target"], tmp_path, "task=clip_cls", "mode=probe")
    r = ft.finetune(cfg)
    model_after = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    assert set(model_after) == {"weight", "bias"}  # the probe's checkpoint is the head alone
    assert r["trainable_parameters"] == model_after["weight"].numel() + model_after["bias"].numel()
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert set(m["test"]) >= {"accuracy", "macro_f1", "micro_f1", "confusion"} and (tmp_path / "ft" /
                                                                                    "confusion.png").exists()
    assert m["labels"] == sorted(m["labels"])  # labels from the training split


def test_mcqa_runs_and_bad_inputs(tiny_shards, tmp_path):
    r = ft.finetune(tiny_cfg(tiny_shards["target"], tmp_path, "task=mcqa", "mode=full"))
    assert r["test"]["n"] >= 1 and len(r["labels"]) == 4
    collate = ft.Collate(tiny_cfg(tiny_shards["target"], tmp_path), ft.load_tokenizer(ft.ModelConfig()), None)
    s = {"key": "k", "text": "t", "frames": None, "meta": {"question": "q?", "answers": ["a", "b"], "answer_idx": 2}}
    with pytest.raises(ValueError, match="sample k: answer_idx 2 is out of range for 2 answers"):
        collate([s])
    # varying numbers of candidates: padded and never chosen
    s2 = {"key": "k2", "text": "t", "frames": None, "meta": {"question": "q?", "answers": ["a", "b", "c"],
                                                              "answer_idx": 0}}
    s["meta"]["answer_idx"] = 1
    b = collate([s, s2])
    assert b["candidates"].tolist() == [[True, True, False], [True, True, True]]
    labels = ft.Collate(tiny_cfg(tiny_shards["target"], tmp_path, "task=clip_cls"), collate.tok, ["hexagon"])
    with pytest.raises(ValueError, match="label 'crescent' never occurs in the training split"):
        labels([{"key": "x", "text": "t", "frames": None, "meta": {"label": "crescent"}}])
    with pytest.raises(ConfigError, match="'nope' split is empty"):
        ft.finetune(tiny_cfg(tiny_shards["target"], tmp_path, "val_split=nope"))
    with pytest.raises(ConfigError, match="task must be"):
        tiny_cfg(tiny_shards["target"], tmp_path, "task=regression")
