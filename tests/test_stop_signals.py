"""Stop signals under torchrun: a signal reaches the processes at different times (torchrun and Slurm send it to each
in turn), or only one of them; every process must still stop at the same step (epoch) with a checkpoint, or the
others wait in their next collective until they are killed. The worst case is tested: a signal to one process."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def workers(pid: int) -> list[int]:
    """The processes torchrun started (its children)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def signal_one_worker_when(launch: list, ready, port: str) -> subprocess.CompletedProcess:
    """Run ``launch`` under torchrun with two processes; once ``ready()`` holds, SIGTERM to one worker only."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, *launch]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ready():
            assert p.poll() is None and time.time() < deadline, "the run ended (or never started) before the signal"
            time.sleep(0.1)
        ranks = workers(p.pid)
        assert len(ranks) == 2
        os.kill(ranks[-1], signal.SIGTERM)
        try:
            stdout, stderr = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # the other process waits in a collective: what this guards against
            pytest.fail("the processes did not stop together within 120 s")
    finally:  # a failure kills the workers too: each runs in a session of its own, so torchrun killed alone leaves them
        if p.poll() is None:
            for pid in [*workers(p.pid), p.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            p.communicate()
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)


def lines(path, key: str) -> int:
    return path.read_text().count(f'"{key}"') if path.exists() else 0


@pytest.mark.slow
def test_a_stop_signal_to_one_training_process_stops_both_at_the_same_step(scored_shards, tiny_anchors, tmp_path):
    out = tmp_path / "run"
    args = ["-m", "videomask.train", f"data.train={scored_shards}", f"data.anchors={tiny_anchors}", f"run.out={out}",
            "data.batch_size=2", "run.log_every=1", "model.dropout=0.0", "optim.max_steps=100000"]
    r = signal_one_worker_when(args, lambda: lines(out / "metrics.jsonl", "loss") >= 3, "29541")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at step" in r.stdout + r.stderr
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 3 and not (out / "model.safetensors").exists()
    # both processes stopped after the same step: the one the checkpoint holds is the last logged
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step


@pytest.mark.slow
def test_a_stop_signal_to_one_fine_tuning_process_stops_both_at_an_epoch_end_and_the_run_resumes(tiny_shards,
                                                                                                 tmp_path):
    out = tmp_path / "ft"
    args = ["-m", "videomask.finetune", f"shards={tiny_shards['target']}", f"run.out={out}", "task=clip_cls",
            "mode=full", "batch_size=2", "model.preset=tiny", "model.dropout=0.0", "epochs=1000", "patience=1000"]
    r = signal_one_worker_when(args, lambda: lines(out / "metrics.jsonl", "train_loss") >= 2, "29542")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped before epoch" in r.stdout + r.stderr and not (out / "metrics.json").exists()
    epoch = torch.load(out / "finetune_checkpoint.pt", weights_only=False)["epoch"]
    assert epoch >= 1 and lines(out / "metrics.jsonl", "train_loss") == epoch + 1  # the checkpoint is the last epoch
    again = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                            "29543", *args, "run.resume=auto", "run.stop_after=1"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(out / "finetune_checkpoint.pt", weights_only=False)["epoch"] == epoch + 1
