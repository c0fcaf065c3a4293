import csv
import json
import logging

import pytest

from videomask import experiments
from videomask.config import ConfigError


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
    # the zero-shot probe of each continued model (the base here has no run to probe), and its columns
    assert (out / "cells" / "random_s0" / "probe.json").exists()
    assert not (out / "cells" / "no_continued_pretraining_s0" / "probe.json").exists()
    assert table[1]["mlm_accuracy"] != "" and table[0]["mlm_accuracy"] == ""
    # paired differences against random, with an interval, for every other condition and measure
    pairs = json.loads((out / "paired.json").read_text())
    assert {(p["condition"], p["measure"]) for p in pairs} >= {("difference k=4", "test accuracy"),
                                                               ("no continued pretraining", "test accuracy"),
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
