"""Stop signals: a signal reaches torchrun's processes at different times (torchrun and Slurm send it to each in
turn), or only one of them; every process must still stop at the same step (epoch) with a checkpoint, or the others
wait in their next collective until they are killed. The worst case is tested: a signal to one process. Also: a
signal to a whole process group (DataLoader workers included), and a second signal, which stops at once."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from videomask.engine import StopSignals

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:  # it has ended
        return []


def kill_all(p: subprocess.Popen):
    """``p``, its children and their process groups: torchrun starts each worker in a session of its own (and a
    worker's DataLoader workers are in its group), so killing torchrun alone would leave them running."""
    for pid in [*children(p.pid), p.pid]:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    p.wait()


def run_and_signal(cmd: list, tmp_path, ready, send, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start ``cmd`` (output to files: a full pipe would block it), call ``send(p)`` once ``ready()`` holds (or
    never, with ``ready=None``), and wait ``timeout`` s for it to end; whatever happens, nothing is left running."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        p = subprocess.Popen(cmd, env=ENV, stdout=o, stderr=e, text=True, start_new_session=True)
    try:
        if ready is not None:
            deadline = time.time() + 150
            while not ready():
                assert p.poll() is None, f"the run ended before the signal:\n{err.read_text()[-3000:]}"
                assert time.time() < deadline, "the run did not start within 150 s"
                time.sleep(0.1)
            send(p)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # e.g. a process waiting in a collective: what these tests guard against
            pytest.fail(f"the run did not end within {timeout:.0f} s of the signal:\n{err.read_text()[-3000:]}")
    finally:
        if p.poll() is None:
            kill_all(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out.read_text(), err.read_text())


def signal_one_worker(p: subprocess.Popen):
    ranks = children(p.pid)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGTERM)


def lines(path, key: str) -> int:
    return path.read_text().count(f'"{key}"') if path.exists() else 0


def training(scored, anchors, out, *extra):
    return ["-m", "videomask.train", f"data.train={scored}", f"data.anchors={anchors}", f"run.out={out}",
            "data.batch_size=2", "run.log_every=1", "model.dropout=0.0", "optim.max_steps=100000", *extra]


@pytest.mark.slow
def test_a_stop_signal_to_one_training_process_stops_both_at_the_same_step(scored_shards, tiny_anchors, tmp_path):
    out = tmp_path / "run"
    r = run_and_signal([*TORCHRUN, "29541", *training(scored_shards, tiny_anchors, out)], tmp_path,
                       lambda: lines(out / "metrics.jsonl", "loss") >= 3, signal_one_worker)
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
    (tmp_path / "a").mkdir()
    r = run_and_signal([*TORCHRUN, "29542", *args], tmp_path / "a",
                       lambda: lines(out / "metrics.jsonl", "train_loss") >= 2, signal_one_worker)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped before epoch" in r.stdout + r.stderr and not (out / "metrics.json").exists()
    epoch = torch.load(out / "finetune_checkpoint.pt", weights_only=False)["epoch"]
    assert epoch >= 1 and lines(out / "metrics.jsonl", "train_loss") == epoch + 1  # the checkpoint is the last epoch
    (tmp_path / "b").mkdir()
    again = run_and_signal([*TORCHRUN, "29543", *args, "run.resume=auto", "run.stop_after=1"], tmp_path / "b",
                           None, None, timeout=150)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(out / "finetune_checkpoint.pt", weights_only=False)["epoch"] == epoch + 1


@pytest.mark.slow
def test_a_stop_signal_to_the_process_group_stops_training_with_dataloader_workers(scored_shards, tiny_anchors,
                                                                                    tmp_path):
    """What torchrun and a terminal's Ctrl-C do: the signal reaches the DataLoader's worker processes too."""
    out = tmp_path / "run"
    r = run_and_signal([sys.executable, *training(scored_shards, tiny_anchors, out, "data.workers=2")], tmp_path,
                       lambda: lines(out / "metrics.jsonl", "loss") >= 3, lambda p: os.killpg(p.pid, signal.SIGTERM))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at step" in r.stdout + r.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] >= 3


def test_a_second_signal_stops_at_once():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a library may have set another)
    try:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGINT)  # the first: noted, the loop stops where it can save
            assert stop.signal == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):  # the second: the handler from before takes it
                signal.raise_signal(signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
