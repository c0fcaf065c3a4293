"""What continued pretraining and fine-tuning share: processes, run folders, checkpoints, logs.

Both ``videomask.train`` and ``videomask.finetune`` configs carry a ``run``
section (``videomask.config.RunConfig``); everything here reads it. Under
``torchrun`` the process group comes from the environment (gloo on CPU, nccl on
GPU); alone, nothing distributed is set up.
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from .config import ConfigError, to_yaml


# -- processes ----------------------------------------------------------------------------------
def setup_distributed(run):
    """(rank, world, device) from torchrun's environment and ``run.device``."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and run.device in ("auto", "cuda")
    # more ranks than GPUs on a node (a check on one GPU) share them round robin; nccl refuses that, gloo does not
    device = torch.device(f"cuda:{local % torch.cuda.device_count()}" if cuda else "cpu" if run.device == "auto"
                          else run.device)
    if world > 1:
        backend = run.backend if run.backend != "auto" else "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def teardown(world: int):
    if world > 1:
        dist.barrier()  # no process leaves while another still talks to it (gloo aborted at exit without)
        dist.destroy_process_group()


def autocast(run, device):
    """bf16 autocast on CUDA (``run.precision=auto``) or when asked; fp32 otherwise."""
    bf16 = run.precision in ("bf16", "bf16_params") or (run.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def all_ranks_true(flag: bool, world: int, device) -> bool:
    t = torch.tensor([float(flag)], device=device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj, world: int) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` alone)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class LoopState:
    """What changes while a run trains; the checkpoint keeps step, epoch and batch_in_epoch."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # passes over the training data begun
    batch_in_epoch: int = 0  # batches of this epoch trained on (a resume skips that many)
    saved_step: Optional[int] = None  # the step of the last checkpoint written (its weights all finite)
    steps_here: int = 0  # steps taken in this invocation (run.stop_after)
    data_wait: float = 0.0  # seconds spent waiting for batches since the last logged step
    t_log: float = field(default_factory=time.perf_counter)  # when the last logged step ended


class StopSignals:
    """``with StopSignals() as stop:`` SIGTERM and SIGINT set ``stop.signal`` instead of ending the process, so
    the loop can finish its step, save and return; the caller's handlers come back on exit, or at a second signal,
    which they then receive."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal: Optional[int] = None
        self.previous: dict = {}

    def _set(self, signum, frame):
        if self.signal is not None:  # a second signal means now: the handler from before takes it (KeyboardInterrupt)
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signal = signum

    def agreed(self, world: int, device) -> bool:
        """Whether any process has been signalled. With several, a collective that every process reaches once per
        step (or epoch): a signal reaches the processes at different times (torchrun and Slurm send it to each in
        turn), and one that stopped alone would leave the others waiting in their next collective."""
        if world == 1:
            return self.signal is not None
        return not all_ranks_true(self.signal is None, world, device)

    def why(self, signalled: bool, stop_after: int) -> str:
        """What stopped the loop, for its log line: a signal here, one to another process, or ``run.stop_after``."""
        if self.signal:
            return f"signal {self.signal}"
        return "a stop signal to another process" if signalled else f"run.stop_after={stop_after}"

    def __enter__(self) -> "StopSignals":
        self.previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, self._set)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def weights_finite(model, world: int, device) -> bool:
    """All parameters finite on every process (a collective with several)."""
    return all_ranks_true(all(bool(torch.isfinite(local(p)).all()) for p in model.parameters()), world, device)


def metrics_values(r: dict) -> dict:
    """A forward pass's outputs as floats, in one device-to-host copy (one sync, not one per metric)."""
    values = torch.stack([v.detach().float().reshape(()) for v in r.values()]).tolist()
    return dict(zip(r, values))


def resume_state(out: Path, cfg, ckpt: str) -> Optional[dict]:
    """The checkpoint ``out/ckpt`` to continue from with ``run.resume=auto`` (checked against ``cfg``), else None."""
    if cfg.run.resume != "auto" or not (out / ckpt).exists():
        return None
    return read_checkpoint(out / ckpt, cfg)


# -- run folders and checkpoints ------------------------------------------------------------------
#: what may differ between invocations of one run: how it is invoked, and where its folder is (a moved folder or a
#: relative spelling of an absolute run.out is the same run)
INVOCATION_KEYS = ("resume", "overwrite", "stop_after", "out", "backend")


def comparable(yaml_text: str) -> dict:
    """The configuration minus what may change between invocations of one run, flattened to dotted keys."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(OmegaConf.create(yaml_text))
    for k in INVOCATION_KEYS:
        c["run"].pop(k, None)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    return flat(c)


def config_differences(saved_yaml: str, cfg) -> list[str]:
    """``key: saved -> now`` for every key that differs between a run's saved config and ``cfg`` (invocation
    keys aside)."""
    a, b = comparable(saved_yaml), comparable(to_yaml(cfg))
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def prepare_run_folder(cfg, rank: int, run_files=()) -> Path:
    """``cfg.run.out``, refusing a folder that holds a different run unless resuming it or told to
    overwrite (then ``run_files`` are deleted first)."""
    out = Path(cfg.run.out)
    saved = out / "config.yaml"
    if saved.exists() and not cfg.run.overwrite:
        differ = config_differences(saved.read_text(), cfg)
        same = not differ
        if not same and cfg.run.resume:
            raise ConfigError(f"{out} holds a run with another configuration ({'; '.join(differ[:5])}"
                              f"{'; ...' if len(differ) > 5 else ''}): resuming it with this one would mix two runs. "
                              "Nothing was changed; use another run.out")
        if not same or not cfg.run.resume:
            raise ConfigError(f"{out} already holds a run ({saved}); pass run.resume=auto to continue it, "
                              "run.overwrite=true to replace it, or choose another run.out")
    if dist.is_initialized():  # every process has checked the folder before the first one writes to it
        dist.barrier()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.run.overwrite:
            for name in run_files:
                (out / name).unlink(missing_ok=True)
        saved.write_text(to_yaml(cfg))
    return out


def save_checkpoint(path: Path, state: dict, cfg):
    """``state`` + the config, written atomically: a kill mid-write leaves the previous file intact. A full disk
    (PyTorch reports it as a RuntimeError, not an OSError) leaves no partial file behind and becomes an
    ``OSError`` naming the file and the space it needs."""
    import errno
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({**state, "config": to_yaml(cfg)}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        need = _state_bytes(state)
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "No space left" in str(e)))
        if not full:
            raise
        kept = f"the last complete checkpoint, {path}, is kept" if path.exists() else "no checkpoint was written yet"
        raise OSError(errno.ENOSPC, f"no space left on the device: writing the checkpoint needs about "
                                    f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free; {kept}",
                      str(path)) from None


def _state_bytes(state) -> int:
    """The bytes a state's tensors hold (what a checkpoint of it needs, give or take its pickle)."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def read_checkpoint(path: Path, cfg) -> dict:
    import pickle

    try:  # weights_only: a checkpoint from elsewhere cannot run code
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["config"]
    except (RuntimeError, EOFError, KeyError, TypeError, ValueError, AttributeError, pickle.UnpicklingError,
            IndexError) as e:
        from .errors import DataError

        # PyTorch's own text advises weights_only=False, i.e. running whatever the file holds: not repeated here
        raise DataError(f"{path} cannot be read as a videomask checkpoint ({type(e).__name__}): truncated, corrupt "
                        "or not a checkpoint? Move it away to start the run again from its beginning, or restore "
                        "a copy; nothing was changed") from None
    differ = config_differences(state["config"], cfg)
    if differ:
        raise ConfigError(f"{path} was written by a run with another configuration ({'; '.join(differ[:5])}); "
                          "not resuming (nothing changed)")
    return state


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard in the run folder, written by rank 0 only."""

    def __init__(self, out: Path, rank: int):
        self.on = rank == 0
        if self.on:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
            self.file = open(out / "metrics.jsonl", "a")

    def write(self, row: dict, step: int):
        if not self.on:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in row.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def close(self):
        if self.on:
            self.file.close()
            self.writer.close()


# -- parallelism (shared by train and finetune) ---------------------------------------------------
def transformer_blocks(model) -> list:
    """The blocks FSDP shards one by one: the joint encoder's layers and the ViT's."""
    blocks = list(getattr(model.mlm.base_model.encoder, "layer", []))
    if hasattr(model, "visual"):
        blocks += list(model.visual.transformer.resblocks)
    return blocks


def wrap(model, world: int, device, parallel: str = "ddp", find_unused: bool = True):
    """DDP or FSDP (FSDP2's ``fully_shard``: per block, then the rest); the model itself when alone.
    ``find_unused``: some parameters may get no gradient in a step (a text-only batch leaves the vision
    tower out; fine-tuning leaves the pretraining heads out): DDP must be told to expect that."""
    if world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)  # in place: the module is now an FSDP module
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                     find_unused_parameters=find_unused)


def full_state(model, opt, fsdp: bool):
    """Unsharded model and optimizer state (a collective under FSDP: every process must call it)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_state_dict,
        )

        return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict(), opt.state_dict()


def load_full_state(model, opt, state: dict, fsdp: bool):
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_state_dict,
            )

            set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError) as e:
        raise ConfigError("the checkpoint does not fit this model: " + " ".join(str(e).split())[:400]) from None


def local(t):
    """A parameter's local shard under FSDP (a DTensor), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t
