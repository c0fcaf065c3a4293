"""What the evidence rests on: a base model that continues, ground truth for the oracle, a probe that
counts right, no held-out clip read before evaluation, and paired confidence intervals."""
import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_BUILD

from videomask import anchors, data, metrics, probe, train
from videomask.collate import MaskingCollator, MaskingConfig
from videomask.config import ConfigError
from videomask.demo import tiny_clip, truth, world
from videomask.masking import MaskingError
from videomask.model import ModelConfig, build_model, load_tokenizer
from videomask.prep import build

MARK = "zyzzyvaheld"  # a word only the held-out clips say


@pytest.fixture(scope="module")
def split_world(tmp_path_factory):
    """A world with held-out clips in both domains whose transcripts carry a marker word."""
    root = tmp_path_factory.mktemp("split_world")
    cfg = world.WorldConfig(general=6, general_test_fraction=0.34, target=9, size=64, segments=3,
                            segment_seconds=1.0, val_fraction=0.0, test_fraction=0.34)
    world.make_world(root / "world", cfg)
    held = 0
    for domain in ("general", "target"):
        for line in (root / "world" / f"{domain}.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["split"] == "test":
                srt = root / "world" / row["transcript"]
                srt.write_text(srt.read_text().replace("\n\n", f" {MARK} {MARK}.\n\n"))
                held += 1
        build.build(root / "world" / f"{domain}.jsonl", root / domain, TINY_BUILD, progress=False)
    assert held == 5
    return root


def test_no_held_out_clip_is_read_before_evaluation(split_world):
    # the held-out clips are there, and say the marker
    assert any(MARK in s["text"] for s in data.dataset(split_world / "target", "test", frames=False))
    # anchors: from the target's train split (against the general domain), which never says it
    a = anchors.build_anchors([split_world / "target"], [split_world / "general"], k=50, min_count=1, split="train")
    assert a["options"]["split"] == "train" and MARK not in {r["word"] for r in a["anchors"]}
    assert anchors.read_texts(split_world / "target", "train") and not any(
        MARK in t for t in anchors.read_texts(split_world / "target", "train"))
    # the scorer: fitted on train clips only
    _, cues, _ = tiny_clip.world_pairs(split_world / "world", 64, 16)
    assert cues and not any(MARK in c for c in cues)
    # the base model: its training data is the general domain's train split
    cfg = train.load_config([train.CONFIG_DIR / "base_general.yaml"], [f"data.train={split_world / 'general'}"])
    assert cfg.data.train_split == "train" and cfg.masking.strategy == "random"
    seen = list(data.dataset(cfg.data.train, cfg.data.train_split, frames=False))
    assert len(seen) == 4 and not any(MARK in s["text"] for s in seen)


def test_truth_marks_the_target_objects_and_the_planted_words(split_world, tmp_path):
    truth.annotate(split_world / "target", tmp_path / "truth", grid=4)
    n = 0
    for s in data.dataset(tmp_path / "truth", frames=True):
        meta, pt = s["meta"], s["patch_truth"].astype(np.float32)
        assert pt.shape == (len(meta["frame_indices"]), 4, 4)
        assert meta["word_truth"] == [float(w["w"].lower() in world.PLANTED_WORDS) for w in meta["words"]]
        assert sum(meta["word_truth"]) >= 3  # the key shape is named in every cue
        # the key object (a target shape) is on screen in every frame, about one to three patches large, and
        # its colour lies where the truth says
        key = world.COLOURS[meta["answers"][meta["answer_idx"]]]
        frames = s["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        near = (np.abs(frames - np.array(key)).sum(-1) < 90).reshape(len(pt), 4, 16, 4, 16).mean((2, 4))
        for t in range(len(pt)):
            assert 0.4 < pt[t].sum() < 4, pt[t]
            # the key colour's pixels sit in the covered patches, and add up to about the covered area
            assert near[t][pt[t] > 0].sum() > 0.9 * near[t].sum(), (s["key"], t)
            assert 0.5 < near[t].sum() / pt[t].sum() < 1.5, (s["key"], t, near[t].sum(), pt[t].sum())
        n += 1
    assert n == 9
    with pytest.raises(truth.TruthError, match="sample x has no ground truth"):  # not a world sample
        truth.annotate_sample("x", [("json", json.dumps({"words": []}).encode())], 4)


@pytest.mark.parametrize("strategy,planted_share", [("oracle_topk", 0.9), ("oracle", 0.3)])
def test_oracle_masks_ground_truth_through_the_collator(split_world, tmp_path, strategy, planted_share):
    truth.annotate(split_world / "target", tmp_path / "truth", grid=4)
    samples = list(data.dataset(tmp_path / "truth", "train"))
    tok = load_tokenizer(ModelConfig())
    batch = MaskingCollator(tok, MaskingConfig(strategy=strategy, text_ratio=0.15, patch_ratio=0.25),
                            max_length=96, patch_grid=(4, 4))(samples)
    pm, pt = batch["patch_mask"], torch.stack([torch.from_numpy(s["patch_truth"].astype(np.float32)) for s in samples])
    # exact budget: 4 of 16 patches per frame-set of 4 frames -> round(0.25 * 64) = 16 per clip
    assert pm.flatten(1).sum(1).tolist() == [16] * len(samples)
    # the masked patches cover far more target object than a random draw would
    assert float(pt[pm].mean()) > 2 * float(pt.mean())
    # text: planted-word tokens are masked first
    ids = tok([s["text"] for s in samples], padding=True, truncation=True, max_length=96)["input_ids"]
    planted = {i for w in world.PLANTED_WORDS for i in tok(w, add_special_tokens=False)["input_ids"]}
    masked = batch["labels"][batch["labels"] != -100].tolist()
    share = sum(t in planted for t in masked) / len(masked)
    everywhere = sum(t in planted for row in ids for t in row) / sum(len(row) for row in ids)
    # top-k: planted tokens strictly first; the rank-weighted sampler of difference-masking: far above their share
    assert masked and share > planted_share and share > 2 * everywhere, ids[0]
    # data without ground truth: a clear error naming the strategy
    plain = list(data.dataset(split_world / "target", "train"))
    with pytest.raises(MaskingError, match="'oracle' needs ground truth, and sample"):
        MaskingCollator(tok, MaskingConfig(strategy="oracle"), max_length=96, patch_grid=(4, 4))(plain)


def _export(model, cfg: ModelConfig, run):
    from dataclasses import asdict

    from safetensors.torch import save_model

    run.mkdir(parents=True)
    save_model(model, str(run / "model.safetensors"))
    (run / "model_config.json").write_text(json.dumps(asdict(cfg)))
    return run


def test_probe_known_answers(split_world, tmp_path):
    """A real model whose MLM head is made to always say "red": the probe must report exactly the share of
    items whose answer is red."""
    cfg = ModelConfig(preset="tiny")
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, len(tok))
    red = tok.convert_tokens_to_ids("red")
    with torch.no_grad():
        model.mlm.cls.predictions.bias[red] = 1e4
    run = _export(model, cfg, tmp_path / "run")
    r = probe.probe(run, split_world / "target", "test", ratio=0.5, seed=3)
    cloze = [s["meta"]["cloze"] for s in data.dataset(split_world / "target", "test", frames=False)]
    assert r["cloze"]["n"] == len(cloze) == 3
    assert r["cloze"]["accuracy"] == pytest.approx(np.mean([c["answer"] == "red" for c in cloze]))
    assert all(i["pred"] == "red" for i in r["items"] if i["kind"] == "cloze")
    # masked words: right exactly where the masked word is "red"
    mlm = [i for i in r["items"] if i["kind"] == "mlm"]
    assert mlm and r["mlm"]["accuracy"] == pytest.approx(np.mean([i["correct"] for i in mlm]))
    again = probe.probe(run, split_world / "target", "test", ratio=0.5, seed=3, out=tmp_path / "again.json")
    assert again["items"] == r["items"]  # the same questions for every model and run
    with pytest.raises(ValueError, match="no 'val' split to probe on"):
        probe.probe(run, split_world / "target", "val")


def test_continued_pretraining_starts_from_the_base_run(split_world, tmp_path):
    common = [f"data.train={split_world / 'general'}", "data.batch_size=2", "optim.max_steps=2", "run.log_every=1",
              "model.dropout=0.0"]
    base = tmp_path / "base"
    train.train(train.load_config([], [*common, f"run.out={base}", "masking.strategy=random"]))
    cont = tmp_path / "cont"
    cfg = train.load_config([], [*common, f"run.out={cont}", "masking.strategy=random", f"model.init={base}",
                                 "optim.lr=1e-12", "optim.max_steps=1"])
    train.train(cfg)
    from safetensors.torch import load_file

    w0, w1 = load_file(base / "model.safetensors"), load_file(cont / "model.safetensors")
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) < 1e-4  # started from the base, barely moved
    assert json.loads((cont / "model_config.json").read_text())["init"] == ""  # the export stands alone
    # another architecture: refused before anything is written
    bad = tmp_path / "bad"
    with pytest.raises(ValueError, match="model.hidden is 32 here, 64 there"):
        train.train(train.load_config([], [*common, f"run.out={bad}", f"model.init={base}", "model.hidden=32",
                                           "masking.strategy=random"]))
    assert not bad.exists()
    with pytest.raises(ValueError, match="no model.safetensors"):
        train.train(train.load_config([], [*common, f"run.out={bad}", f"model.init={tmp_path}",
                                           "masking.strategy=random"]))
    assert not bad.exists()


def test_paired_bootstrap_known_answers():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 400)) < 0.7).astype(float)
    r = metrics.paired_bootstrap(a, a)
    assert r["mean"] == r["lo"] == r["hi"] == 0.0
    b = a.copy()
    b[:, :40] = 1 - b[:, :40]  # 40 of 400 questions flipped: a known difference
    d = metrics.paired_bootstrap(a, b, seed=1)
    assert d["mean"] == pytest.approx((a - b).mean()) and d["lo"] < d["mean"] < d["hi"]
    # a clear effect excludes 0; noise of mean 0 does not
    better = np.maximum(a, (rng.random((3, 400)) < 0.3))
    assert metrics.paired_bootstrap(better, a)["lo"] > 0
    noise = (rng.random((3, 400)) < 0.7).astype(float)
    n = metrics.paired_bootstrap(noise, a)
    assert n["lo"] < 0 < n["hi"]
    with pytest.raises(ValueError, match="seeds, items"):
        metrics.paired_bootstrap(np.zeros(3), np.zeros(3))


def test_the_verdict_follows_the_preregistered_rule():
    from videomask import experiments, results

    cfg = experiments.load_config([], ["primary=test accuracy (target)"])
    pair = lambda cond, lo, hi, measure="test accuracy (target)": {"condition": cond, "reference": "random",
                                                                  "measure": measure, "mean": (lo + hi) / 2,
                                                                  "lo": lo, "hi": hi}
    v = lambda *pairs: results.verdict(cfg, list(pairs))
    assert v(pair("oracle", 0.01, 0.2), pair("difference", 0.02, 0.1))["claim"] == "better"
    assert v(pair("oracle", 0.01, 0.2), pair("difference", -0.2, -0.01))["claim"] == "worse"
    r = v(pair("oracle", 0.01, 0.2), pair("difference", -0.01, 0.1))
    assert (r["gate"], r["claim"]) == ("passes", "no detectable difference")
    r = v(pair("oracle", -0.01, 0.2), pair("difference", 0.05, 0.1))  # a failed gate: the claim is not read
    assert (r["gate"], r["claim"]) == ("fails", None) and "not read" in r["text"]
    r = v(pair("oracle", 0.01, 0.2, "test accuracy"), pair("difference", 0.05, 0.1))  # another measure: undecided
    assert (r["gate"], r["claim"]) == (None, None) and "not decided" in r["text"]
    assert results.verdict(experiments.load_config([], []), [pair("oracle", 0.01, 0.2)]) is None


def test_probe_items_pair_per_group(tmp_path, caplog):
    """``mlm accuracy (anchor)``: the masked tokens of anchor words alone, paired item by item across cells, and
    only between cells asked the same items."""
    from videomask import experiments, results

    cfg = experiments.load_config([], ["primary=mlm accuracy (anchor)", "strategies=[random,oracle]", "seeds=[0,1]"])
    groups = ["anchor", "other", "anchor", "other", "anchor", "anchor"]
    correct = {("oracle", 0): [1, 0, 1, 1, 0, 1], ("oracle", 1): [1, 1, 0, 0, 1, 1],
               ("random", 0): [0, 1, 1, 0, 0, 0], ("random", 1): [1, 1, 0, 1, 0, 0]}

    def write(cond, seed, groups, keys=None):
        folder = tmp_path / "cells" / f"{cond}_s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        items = [{"key": (keys or [f"k{j // 2}" for j in range(6)])[i], "index": 3 + i % 2, "kind": "mlm", "group": g,
                  "correct": bool(c)}
                 for i, (g, c) in enumerate(zip(groups, correct[cond, seed]))]
        items.insert(2, {"key": "k0", "kind": "cloze", "group": "target", "correct": True})
        (folder / "probe.json").write_text(json.dumps({"items": items}))
        return {"condition": cond, "seed": seed, "cell": f"{cond}_s{seed}"}

    rows = [write(cond, seed, groups) for cond, seed in correct]
    assert results.item_scores(cfg, tmp_path, "oracle_s0", "mlm:anchor") == [1.0, 1.0, 0.0, 1.0]
    assert results.item_scores(cfg, tmp_path, "oracle_s0", "mlm") == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    pairs = {p["measure"]: p for p in results.paired(cfg, rows, tmp_path)}
    # by hand: anchor items (0, 2, 4, 5) of oracle minus random, per seed, averaged over seeds and items
    anchor = np.mean([[1 - 0, 1 - 1, 0 - 0, 1 - 0], [1 - 1, 0 - 0, 1 - 0, 1 - 0]])
    assert pairs["mlm accuracy (anchor)"]["mean"] == pytest.approx(anchor)  # 0.5
    assert pairs["mlm accuracy (other)"]["mean"] == pytest.approx(np.mean([[0 - 1, 1 - 0], [1 - 1, 0 - 1]]))
    assert pairs["mlm accuracy"]["mean"] == pytest.approx((4 * anchor + 2 * -0.25) / 6)
    assert results.verdict(cfg, list(pairs.values()))["text"].startswith("gate (oracle − random, mlm accuracy "
                                                                          "(anchor)): +0.500 [")
    # a secondary measure: the same rule, reported beside the primary verdict
    cfg2 = experiments.load_config([], ["primary=mlm accuracy (anchor)", "secondary=[mlm accuracy (other)]"])
    decided = results.verdict(cfg2, list(pairs.values()))
    assert decided["primary"] == "mlm accuracy (anchor)" and [d["gate"] for d in decided["secondary"]] == ["fails"]
    assert decided["secondary"][0]["text"].startswith("gate (oracle − random, mlm accuracy (other)): -0.250 [")
    assert "Secondary measures" in results.markdown([], [], decided)
    # a measure the table does not have is named as such, with the table's measures
    cfg3 = experiments.load_config([], ["primary=test accuracy (targt)"])
    assert "the paired table's measures: cloze accuracy, mlm accuracy," in results.verdict(cfg3, list(pairs.values()))["text"]
    # cells asked other items (another anchors file: other words are "anchor") are not paired on those groups
    rows[-1] = write("random", 1, ["other", "anchor", "anchor", "other", "anchor", "anchor"])
    caplog.set_level("WARNING", logger="videomask")
    vm = logging.getLogger("videomask")
    vm.addHandler(caplog.handler)
    try:
        measures = {p["measure"] for p in results.paired(cfg, rows, tmp_path)}
    finally:
        vm.removeHandler(caplog.handler)
    assert "mlm accuracy (anchor)" not in measures and "mlm accuracy" in measures  # same keys: the whole kind pairs
    assert "were not asked the same probe items" in caplog.text
    rows[-1] = write("random", 1, groups, keys=[f"x{i}" for i in range(6)])  # other clips altogether
    assert "mlm accuracy" not in {p["measure"] for p in results.paired(cfg, rows, tmp_path)}
    with pytest.raises(ConfigError, match="primary: 'mlm accuracy \\(anchors\\)' is not a measure"):
        experiments.load_config([], ["primary=mlm accuracy (anchors)"])
    with pytest.raises(ConfigError, match="reads the zero-shot probe"):
        experiments.load_config([], ["primary=mlm accuracy (anchor)", "probe=false"])
    with pytest.raises(ConfigError, match="secondary: 'test acc' is not a measure"):
        experiments.load_config([], ["primary=mlm accuracy (anchor)", "secondary=[test acc]"])
    with pytest.raises(ConfigError, match="beside a primary one"):
        experiments.load_config([], ["secondary=[test accuracy]"])


def test_experiment_config_checks_strategies_before_training():
    from videomask import experiments

    with pytest.raises(ConfigError, match="strategies=.*unknown masking strategy 'differnce'"):
        experiments.load_config([], ["strategies=[random,differnce]"])
    with pytest.raises(ConfigError, match=r"alphas=\[1.5\]: .*alpha must be in \[0, 1\]"):
        experiments.load_config([], ["alphas=[1.5]"])


def test_reference_solvers(qa_shards):
    from videomask.demo import solvers

    r = solvers.solve(qa_shards, "test")
    assert r["n"] == 144
    # the answers alone are chance (4 candidates: 0.25; 3 standard errors on 144 questions is 0.11)
    assert r["answers only"] < 0.36
    # the transcript names the colour in half the clips; the frames hold it in every clip
    assert r["transcript"] > r["answers only"] + 0.15 and r["frames (pixel colour)"] > 0.8
