"""The main command as a user runs it: ``python -m videomask demo`` at toy sizes (``--smoke``), every stage,
its console output clean (no traceback, no logging error, no per-epoch lines) and the verdict written."""
import json
import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_the_demo_runs_every_stage_with_clean_output(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "videomask", "demo", "--smoke", "--out", str(out),
                        "strategies=[random,oracle]"], capture_output=True, text=True, env=ENV, timeout=600)
    console = r.stdout + r.stderr
    assert r.returncode == 0, console[-3000:]
    for bad in ("Traceback", "Logging error", "Warning", "epoch "):
        assert bad not in console, (bad, console[-3000:])
    for stage in ("== world", "== shards: target", "== anchors", "== scorer", "== scores", "== base", "== ablation",
                  "demo finished in"):
        assert stage in console, stage
    results = (out / "ablation" / "results.md").read_text()
    assert results.startswith("**Verdict** (the pre-registered rule): gate (oracle − random, mlm accuracy (anchor))")
    decided = json.loads((out / "ablation" / "verdict.json").read_text())
    assert decided["gate"] in ("passes", "fails") and decided["primary"] == "mlm accuracy (anchor)"
    assert [d["primary"] for d in decided["secondary"]] == ["test accuracy", "test accuracy (target)"]
    assert "Secondary measures, by the same rule" in results
    # each fine-tuning's per-epoch history is in its own run folder, not on the console
    history = json.loads((out / "ablation" / "cells" / "random_s0" / "finetune" / "metrics.json").read_text())["history"]
    assert len(history) == 2
