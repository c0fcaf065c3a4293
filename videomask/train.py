"""Continued pretraining with difference-masking: ``python -m videomask.train [CONFIG.yaml ...] [key=value ...]``.

With no arguments: ``configs/train_default.yaml``, the synthetic world's target
domain (what ``python -m videomask demo`` produced) with difference-masking, on CPU.
Distributed: ``torchrun --nproc_per_node N -m videomask.train ...`` (DDP; gloo on
CPU, nccl on GPU). See ``videomask.config`` for every option.

Read top to bottom: ``train`` checks everything that can be refused, then ``_train`` sets up
(run folder, model, loaders, optimizer, resume) and runs the loop, one named step at a time:
``skip_check``, ``optimizer_step`` (accumulate, guard, clip, step), ``log_step``, validation,
``checkpoint``; then ``export``. The loop's state is one ``engine.LoopState``; what stays fixed
during a run is one ``Run``.
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import anchors as anchors_mod
from . import data, engine, freezing, masking, urls
from .collate import MaskingCollator
from .precision import MasterWeights, to_bf16
from .config import CONFIG_DIR, ConfigError, TrainConfig, load_config, run_cli
from .engine import LoopState, all_ranks_true, to_device
from .errors import Unfinished
from .files import FolderLock
from .loader import Loader, make_loader
from .masking import strategies
from .model import build_model, export_hf, init_run, load_tokenizer, text_positions

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


CKPT = "checkpoint.pt"
DEFAULT_CONFIG = str(CONFIG_DIR / "train_default.yaml")


# -- data ---------------------------------------------------------------------------------------
def configured_anchors_hash(cfg: TrainConfig) -> str | None:
    if not cfg.data.anchors:
        return None
    if not Path(cfg.data.anchors).exists():
        raise ConfigError(f"data.anchors={cfg.data.anchors}: no such file (python -m videomask.anchors writes it)")
    return anchors_mod.load(cfg.data.anchors)["hash"]


def load_ngrams(cfg: TrainConfig):
    """The PMI n-gram vocabulary of ``masking.strategy=pmi`` (None for other strategies)."""
    if "ngrams" not in masking.plan(cfg.masking).needs:
        return None
    if not cfg.data.ngrams:
        raise ConfigError(f"masking.strategy={cfg.masking.strategy} needs data.ngrams: "
                          + strategies.HOW_TO_GET["ngrams"])
    if not Path(cfg.data.ngrams).exists():
        raise ConfigError(f"data.ngrams={cfg.data.ngrams}: no such file")
    from .scoring import pmi

    return pmi.load(cfg.data.ngrams)


def check_data(cfg: TrainConfig, collate) -> None:
    """Before anything is written: the shards and splits exist, and their first sample carries what the
    strategy reads (scores, ground truth) and matches the anchors. Each message names the key and value."""
    for key, folder, split in (("data.train", cfg.data.train, cfg.data.train_split),
                               ("data.val", cfg.data.val or cfg.data.train, cfg.data.val_split)):
        if key == "data.val" and not split:
            continue
        if not urls.is_url(folder) and not Path(folder).exists():
            raise ConfigError(f"{key}={folder}: no such folder")
        try:
            shards = data.shard_urls(folder, split or None)
        except FileNotFoundError as e:
            raise ConfigError(f"{key}={folder}: {e}") from None
        # the first usable sample (unusable ones are the loader's to skip and count, not a reason to refuse)
        first = next(iter(data.dataset(shards, split_by_node=False, handler=data.ErrorCounter(verbose=False))), None)
        if first is not None:
            try:
                collate.check(first)
            except masking.MaskingError as e:
                raise ConfigError(f"{key}={folder} with masking.strategy={cfg.masking.strategy}: {e}") from None


# -- optimisation -------------------------------------------------------------------------------
def lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def f(step):
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps)
        return max(0.0, 1 - t) if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def make_optimizer(model, cfg: TrainConfig, masters: dict | None = None):
    """AdamW (no weight decay on biases and norms) and its warm-up + decay schedule; over the fp32 ``masters``
    of bf16 parameters (``videomask.precision``) when given."""
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]  # frozen: not optimised
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def adamw(groups):
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)

    if masters is not None:  # bf16 parameters: the optimiser keeps their fp32 masters
        opt = MasterWeights(groups, masters, adamw)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt.opt, lr_lambda(cfg))
    opt = adamw(groups)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))




@dataclass
class Run:
    """What stays fixed while a run trains."""

    cfg: TrainConfig
    out: Path
    model: torch.nn.Module  # wrapped for DDP / FSDP when several processes train
    raw_model: torch.nn.Module  # the module itself: what is saved and exported
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    rank: int
    world: int
    device: torch.device
    fsdp: bool
    log: engine.MetricsLog


def resume(run: Run) -> LoopState:
    """With ``run.resume=auto`` and a checkpoint in the run folder: its weights, optimizer, schedule and RNG
    state, and where the loop was; a fresh ``LoopState`` otherwise."""
    state = engine.resume_state(run.out, run.cfg, CKPT)
    if state is None:
        return LoopState()
    engine.load_full_state(run.raw_model, run.opt, state, run.fsdp)
    run.sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if run.rank == 0:
        logger.info(f"resumed from {run.out / CKPT} at step {state['step']}")
    return LoopState(step=state["step"], epoch=state["epoch"], batch_in_epoch=state["batch_in_epoch"],
                     saved_step=state["step"])


def checkpoint(run: Run, state: LoopState):
    """Save weights, optimizer, schedule, RNG and the loop's place. Every process calls it (gathering FSDP
    shards is a collective); weights that are not finite are refused, naming the last finite checkpoint."""
    if not engine.weights_finite(run.raw_model, run.world, run.device):
        last = f"{run.out / CKPT} (step {state.saved_step})" if state.saved_step is not None else "none was written"
        raise FloatingPointError(f"the weights at step {state.step} are not finite (the run diverged: lower "
                                 f"optim.lr?); they were not saved. The last finite checkpoint: {last}")
    model_state, opt_state = engine.full_state(run.raw_model, run.opt, run.fsdp)
    if run.rank == 0:
        engine.save_checkpoint(run.out / CKPT, {
            "model": model_state, "optimizer": opt_state, "scheduler": run.sched.state_dict(), "step": state.step,
            "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
            "rng": torch.get_rng_state()}, run.cfg)  # dropout and the like; masks have their own generators
    state.saved_step = state.step


def epochs(run: Run, loader: Loader, collate: MaskingCollator, state: LoopState, stop: engine.StopSignals):
    """Batches without end: epoch after epoch of the shards (new masks each epoch), resumable mid-epoch. Each
    finished epoch's reading is logged and judged: data that is mostly unusable, or that cannot make one batch,
    stops the run here rather than spin. A stop signal ends the batches (the loop then saves and returns); with
    several processes only the loop's agreed check at the end of a step does, so that all stop at the same step."""
    alone = run.world == 1
    while True:
        collate.set_epoch(state.epoch)
        n = 0
        for b in loader:
            n += 1
            if stop.signal and alone:
                return
            if n <= state.batch_in_epoch:
                continue  # already trained on before the resume
            state.batch_in_epoch = n
            yield b
        seen, counts = loader.skips.end_epoch()
        run.log.write({"step": state.step, "epoch": state.epoch, "samples_read": seen,
                       "samples_skipped": sum(counts.values()), **{f"skipped_{r}": k for r, k in counts.items()}},
                      state.step)
        if loader.skips.failed:
            raise data.DataError(loader.skips.failed)
        if n == 0:
            cfg = run.cfg
            why = f" ({loader.skips.line()}; {loader.skips.reasons()})" if sum(counts.values()) else ""
            raise data.DataError(f"no training batches in {cfg.data.train} (split {cfg.data.train_split!r}){why}; "
                                 f"with {run.world} processes each needs at least one batch of {cfg.data.batch_size}")
        if stop.signal and alone:
            return
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def skip_check(run: Run, loader: Loader, state: LoopState, finished: bool = False):
    """A broken dataset stops the run; a few bad samples are skipped and counted. Judged on the host; with
    several processes only at log steps, where all of them are, so that they stop together. ``finished``: at the
    end of the run, on everything read (however few samples that was)."""
    if run.world > 1 and state.step % run.cfg.run.log_every and not finished:
        return
    why = loader.skips.failed or loader.skips.too_many(*(loader.skips.read() if finished else loader.skips.epoch()),
                                                       finished=finished)
    if run.world > 1 and not all_ranks_true(not why, run.world, run.device):
        why = why or (f"another process skipped more than data.max_skip_fraction={run.cfg.data.max_skip_fraction} "
                      "of its samples (see its message)")
    if why:
        raise data.DataError(why)


def optimizer_step(run: Run, batches, state: LoopState, autocast) -> dict:
    """One optimizer step over ``optim.grad_accum`` micro-batches: forward, the finite-loss guard, backward,
    clipping, step. Returns the step's mean metrics (and the gradient norm)."""
    o, logs = run.cfg.optim, {}
    for micro in range(o.grad_accum):
        tw = time.perf_counter()
        batch = to_device(next(batches), run.device)
        state.data_wait += time.perf_counter() - tw
        sync = micro == o.grad_accum - 1 or run.world == 1
        if run.fsdp:
            run.model.set_requires_gradient_sync(sync)
        with (run.model.no_sync() if not sync and not run.fsdp else nullcontext()), autocast:
            r = run.model(batch)
        # every process takes the same branch, or the collectives below would wait forever
        if not all_ranks_true(bool(torch.isfinite(r["loss"])), run.world, run.device):
            nonfinite_loss(run, state, r)
        (r["loss"] / o.grad_accum).backward()
        for k, v in engine.metrics_values(r).items():
            logs[k] = logs.get(k, 0.0) + v / o.grad_accum
    if o.clip > 0:  # with bf16 parameters, on the fp32 masters' copies of the gradients
        params = run.opt.master_grads() if isinstance(run.opt, MasterWeights) else run.model.parameters()
        norm = torch.nn.utils.clip_grad_norm_(params, o.clip)
        logs["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    state.step, state.steps_here = state.step + 1, state.steps_here + 1
    return logs


def nonfinite_loss(run: Run, state: LoopState, r: dict):
    """Stop on a non-finite loss, saving the weights first if they are still finite (this step has not been
    applied: they are the last good ones)."""
    if engine.weights_finite(run.raw_model, run.world, run.device):
        checkpoint(run, state)
    where = (f"{run.out / CKPT} (step {state.saved_step})" if state.saved_step is not None
             else "no checkpoint (none was finite)")
    raise FloatingPointError(f"non-finite loss {float(r['loss'])} at step {state.step} "
                             f"({', '.join(f'{k}={float(v):.4g}' for k, v in r.items())}); "
                             f"the last good state is in {where}")


def log_step(run: Run, loader: Loader, state: LoopState, logs: dict, bar) -> dict:
    """At log steps: the metrics averaged over processes, with the data's counts, rate and wait, to
    ``metrics.jsonl`` and TensorBoard."""
    cfg, step = run.cfg, state.step
    if step % cfg.run.log_every and step != cfg.optim.max_steps:
        return logs
    if run.world > 1:  # the global mean
        keys = sorted(logs)
        t = torch.tensor([logs[k] for k in keys], device=run.device)
        dist.all_reduce(t)
        logs = dict(zip(keys, (t / run.world).tolist()))
    if run.rank == 0:
        elapsed = time.perf_counter() - state.t_log
        seen, counts = loader.skips.epoch()
        logs.update(samples_skipped=sum(counts.values()), short_texts=loader.totals()["short_texts"])
        logs.update(step=step, epoch=state.epoch, lr=run.sched.get_last_lr()[0],
                    samples_per_s=cfg.run.log_every * cfg.optim.grad_accum * cfg.data.batch_size * run.world / elapsed,
                    data_wait=state.data_wait / elapsed)
        run.log.write(logs, step)
        bar.set_postfix(loss=f"{logs['loss']:.3f}")
        state.data_wait, state.t_log = 0.0, time.perf_counter()
    return logs


@torch.no_grad()
def validate(model, loader: Loader, device, autocast, max_batches: int) -> dict:
    model.eval()
    sums, n = {}, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        with autocast:
            r = model(to_device(batch, device))
        for k, v in r.items():
            if k.startswith(("loss", "acc")):
                sums[k] = sums.get(k, 0.0) + float(v)
        n += 1
    model.train()
    return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}


# -- main ---------------------------------------------------------------------------------------
def _default_files(files, overrides):
    """No config file and no data: the embedded default (the demo's difference-masking run)."""
    if files or any(o.startswith("data.train=") for o in overrides):
        return files
    cfg = load_config([DEFAULT_CONFIG], overrides)
    if not Path(cfg.data.train).exists():
        raise ConfigError(f"{cfg.data.train} does not exist: the default config continues the demo's run; "
                          "run `python -m videomask demo` first, or give data.train=SCORED_SHARDS")
    return [DEFAULT_CONFIG]


def main(argv=None) -> int:
    return run_cli(argv, TrainConfig, train, "python -m videomask.train", __doc__, _default_files)


def train(cfg: TrainConfig) -> dict:
    rank, world, device = engine.setup_distributed(cfg.run)
    if not cfg.data.train:
        raise ConfigError("data.train is empty: give scored shards (python -m videomask.scoring.score's output)")
    # everything that can be refused is checked before the run folder exists: a refused start leaves
    # nothing that blocks the corrected rerun
    init_run(cfg.model)
    if cfg.data.max_text_len > text_positions(cfg.model):
        raise ConfigError(f"data.max_text_len={cfg.data.max_text_len} is more than the model's "
                          f"{text_positions(cfg.model)} text positions: lower it (or model.max_positions for a "
                          "model built from scratch)")
    tokenizer = load_tokenizer(cfg.model)
    collate = MaskingCollator(tokenizer, cfg.masking, cfg.data.max_text_len, None, anchors_hash=configured_anchors_hash(cfg),
                              ngrams=load_ngrams(cfg), text_only=cfg.model.kind == "text")
    check_data(cfg, collate)
    # one training per run folder: a second one (a resume started twice, say) is refused, naming the holder
    lock = FolderLock(Path(cfg.run.out), "videomask train").acquire() if rank == 0 else None
    try:
        return _train(cfg, rank, world, device, tokenizer, collate)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, rank: int, world: int, device, tokenizer, collate) -> dict:
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    model = build_model(cfg.model, len(tokenizer))
    # what trains, checked on the model before the run folder is written (a wrong name blocks no rerun)
    trainable, total = freezing.apply(model, cfg.optim.train, cfg.optim.freeze)
    out = engine.prepare_run_folder(cfg, rank, run_files=(CKPT, "metrics.jsonl"))
    if rank == 0 and trainable < total:
        logger.info(f"training {trainable:,} of {total:,} parameters (optim.train={list(cfg.optim.train)}, "
                    f"optim.freeze={list(cfg.optim.freeze)})")
    model = model.to(device)
    grid = getattr(model, "grid", None)
    collate.patch_grid = (grid, grid) if grid else None
    loader = make_loader(cfg, cfg.data.train, cfg.data.train_split, collate, rank, world, train=True, device=device)
    val_loader = (make_loader(cfg, cfg.data.val or cfg.data.train, cfg.data.val_split, collate, rank, world, False,
                              device=device) if cfg.data.val_split else None)

    fsdp = world > 1 and cfg.run.parallel == "fsdp"
    # bf16 parameters before DDP wraps the model: its gradient hooks belong to the parameters it was built with
    masters = to_bf16(model) if cfg.run.precision == "bf16_params" else None
    model = engine.wrap(model, world, device, cfg.run.parallel, find_unused=cfg.model.kind == "video")
    raw_model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    opt, sched = make_optimizer(model, cfg, masters)  # after wrapping: FSDP replaces the parameters by sharded ones
    run = Run(cfg, out, model, raw_model, opt, sched, rank, world, device, fsdp, engine.MetricsLog(out, rank))
    state = resume(run)
    started, o, autocast = state.step, cfg.optim, engine.autocast(cfg.run, device)
    logs = {}

    with engine.StopSignals() as stop:  # a signal: finish the step, save, return
        bar = tqdm(total=o.max_steps, initial=state.step, disable=True if rank != 0 else None, desc="train", unit="step")
        batches = epochs(run, loader, collate, state, stop)
        model.train()
        while state.step < o.max_steps:
            skip_check(run, loader, state)
            try:
                logs = log_step(run, loader, state, optimizer_step(run, batches, state, autocast), bar)
            except StopIteration:  # a stop signal while reading (one process): this step was not taken
                checkpoint(run, state)
                if rank == 0:
                    logger.info(f"stopped at step {state.step} (signal {stop.signal}); resume with run.resume=auto")
                break
            bar.update(1)
            if val_loader is not None and ((cfg.run.val_every and state.step % cfg.run.val_every == 0)
                                           or state.step == o.max_steps):
                run.log.write({"step": state.step, **validate(model, val_loader, device, autocast,
                                                              cfg.run.val_batches)}, state.step)
            if (cfg.run.save_every and state.step % cfg.run.save_every == 0) or state.step == o.max_steps:
                checkpoint(run, state)
            signalled = stop.agreed(world, device)  # every step, on every process: it is a collective
            # a stop on the last step is no stop: the run has finished and is exported below
            stopping = signalled or (cfg.run.stop_after and state.steps_here >= cfg.run.stop_after)
            if stopping and state.step < o.max_steps:
                if state.saved_step != state.step:  # once: with FSDP a checkpoint gathers every shard
                    checkpoint(run, state)
                if rank == 0:
                    logger.info(f"stopped at step {state.step} ({stop.why(signalled, cfg.run.stop_after)}); "
                                "resume with run.resume=auto")
                break
        bar.close()
    run.log.close()
    finished = state.step >= o.max_steps
    if finished:  # the verdict on what was read, whether or not an epoch ended: the same for any optim.max_steps
        skip_check(run, loader, state, finished=True)
        if isinstance(opt, MasterWeights):  # the exported weights are the fp32 masters
            opt.to_fp32()
        export(raw_model, opt, cfg, out, rank, fsdp, tokenizer)
    engine.teardown(world)
    if rank == 0:
        report(cfg, loader, out, state.step - started)
    return {"out": str(out), "step": state.step, "finished": finished,
            "model": str(out / "model.safetensors") if finished else None,
            "last": {k: v for k, v in logs.items() if isinstance(v, (int, float))}}


def train_to_end(cfg: TrainConfig) -> dict:
    """``train`` for a pipeline whose next stage reads the finished model (a base stage, an experiment's cell): a
    run that stops early (a signal, ``run.stop_after``) raises ``Unfinished`` rather than returning, so that the
    next stage never starts from a model that is not there."""
    r = train(cfg)
    if not r["finished"]:
        raise Unfinished(f"{cfg.run.out} stopped at step {r['step']} of {cfg.optim.max_steps} (its state is saved): "
                         "rerun the same command to continue it")
    return r


def report(cfg: TrainConfig, loader: Loader, out: Path, steps: int):
    """The run's closing lines: what the data held back (skips, short transcripts, windows)."""
    c = loader.totals()
    logger.info(loader.skips.line() + (f"; {c['short_texts']} transcripts were too short to mask any token "
                                       "(trained unmasked)" if c["short_texts"] else ""))
    if c["windowed"]:
        logger.info(f"{c['windowed']} of {c['documents']} documents read were longer than data.max_text_len="
                    f"{cfg.data.max_text_len} tokens: split into {c['windows']} overlapping windows")
    logger.info(f"trained {steps} steps in this run; {out}")


def export(model, opt, cfg: TrainConfig, out: Path, rank: int, fsdp: bool, tokenizer):
    """The final weights as safetensors + the model config, loadable without the optimizer; and ``hf/``, the
    masked-LM in Hugging Face's layout (``videomask.model.export_hf``): the run stands alone."""
    from safetensors.torch import save_file, save_model

    if fsdp:
        state, _ = engine.full_state(model, opt, fsdp)
        if rank == 0:  # tied weights come back as separate copies: each is saved
            save_file({k: v.contiguous().clone() for k, v in state.items()}, str(out / "model.safetensors"))
    elif rank == 0:
        save_model(model, str(out / "model.safetensors"))
        state = None
    if rank == 0:  # the exported weights are whole: loading them needs no base run
        (out / "model_config.json").write_text(json.dumps({**asdict(cfg.model), "init": ""}, indent=1))
        export_hf(model, tokenizer, out, state)


if __name__ == "__main__":
    sys.exit(main())
