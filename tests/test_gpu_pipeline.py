"""The GPU pipeline script (bench/gpu_pipeline.py) runs every stage on CPU at toy sizes, so that it is known to
work before a GPU is lent; and its fallback check flags a stage meant for CUDA that never initialised it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
STAGES = {"build_general", "build_target", "anchors", "tiny_clip", "score", "truth", "base", "cpt_random_s0",
          "cpt_difference_s0", "cpt_difference_decode_device", "finetune_probe", "finetune_full", "probe",
          "torchrun_gloo", "text_build", "text_anchors", "text_score", "text_train"}


@pytest.mark.slow
def test_the_gpu_pipeline_runs_every_stage_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "gpu_pipeline.py"), "--device", "cpu", "--smoke", "--out",
                        str(tmp_path / "gpu")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert summary["ok"] and not summary["failures"] and STAGES <= set(summary["stages"])
    stages = summary["stages"]
    assert all(s["exit"] == 0 for s in stages.values())
    for name in ("base", "cpt_random_s0", "cpt_difference_s0", "cpt_difference_decode_device", "torchrun_gloo",
                 "text_train"):
        assert stages[name]["samples_per_s"] > 0 and 0 <= stages[name]["data_wait"] < 1, name
    assert 0 <= stages["finetune_probe"]["test_accuracy"] <= 1
    assert (tmp_path / "gpu" / "logs" / "text_train.log").exists()


def test_a_stage_that_never_touches_cuda_is_a_fallback(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_pipeline import Pipeline
    finally:
        sys.path.remove(str(BENCH))
    p = Pipeline(tmp_path, "cuda", smoke=True)
    rec = p.stage("version", ["--version"])
    assert rec["exit"] == 0 and rec["cuda"] is False and rec["fell_back_to_cpu"]
    assert p.failed == ["version: ran on the CPU (never initialised CUDA)"]
    p.stage("listing", ["--version"], gpu=False)  # a CPU stage is not one
    assert len(p.failed) == 1
