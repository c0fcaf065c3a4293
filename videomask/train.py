"""Continued pretraining with difference-masking: ``python -m videomask.train [CONFIG.yaml ...] [key=value ...]``.

With no arguments: ``configs/train_default.yaml``, the synthetic world's target
domain (what ``python -m videomask demo`` produced) with difference-masking, on CPU.
Distributed: ``torchrun --nproc_per_node N -m videomask.train ...`` (DDP; gloo on
CPU, nccl on GPU). See ``videomask.config`` for every option.

Read top to bottom: setup (distributed, config, run folder), data, model and
optimizer, resume, the loop (accumulate, clip, step, log, validate, checkpoint),
export.
"""
from __future__ import annotations

import json
import logging
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import anchors as anchors_mod
from . import data, engine, masking
from .collate import MaskingCollator
from .config import CONFIG_DIR, ConfigError, TrainConfig, load_config, run_cli
from .engine import all_ranks_true, to_device
from .files import FolderLock
from .model import build_model, check_init, export_hf, load_tokenizer, text_positions

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too


CKPT = "checkpoint.pt"
DEFAULT_CONFIG = str(CONFIG_DIR / "train_default.yaml")


# -- data ---------------------------------------------------------------------------------------
def make_loader(cfg: TrainConfig, folder: str, split: str, collate, rank: int, world: int, train: bool):
    import webdataset as wds

    by_samples = cfg.data.split_by == "samples" and world > 1
    pipe = data.dataset(folder, split or None, resampled=train and cfg.data.resampled, seed=cfg.run.seed,
                        shuffle=cfg.data.shuffle if train else 0, split_by_node=not by_samples)
    handler = pipe.errors  # unusable samples are skipped and counted by reason (videomask.data.Validate)
    if by_samples:
        pipe.append(engine.split_samples(rank, world))
    # text-only documents longer than the context become overlapping windows (never silently truncated)
    windows = data.Windows(collate.tokenizer, cfg.data.max_text_len, cfg.data.window_stride)
    pipe.append(windows)
    if cfg.data.cache:  # decoded samples kept after the first pass; masks are still drawn per epoch in collate
        pipe = wds.DataPipeline(data.Cached(pipe))
    pipe.append(wds.batched(cfg.data.batch_size, collation_fn=collate, partial=not train))
    pipe.append(data.with_report(handler))  # each batch says what its worker has skipped so far
    # its own generator: making an iterator draws a base seed from it, and from the global RNG without one, which
    # would shift dropout after a resume (the checkpoint restores the global RNG before the loop makes one)
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=cfg.data.workers,
                                         generator=torch.Generator().manual_seed(cfg.run.seed))
    loader.windows = windows  # its counts (in this process; with workers, each worker counts its own)
    loader.errors = handler
    return loader


def check_anchors(cfg: TrainConfig) -> str | None:
    if not cfg.data.anchors:
        return None
    if not Path(cfg.data.anchors).exists():
        raise ConfigError(f"data.anchors={cfg.data.anchors}: no such file (python -m videomask.anchors writes it)")
    return anchors_mod.load(cfg.data.anchors)["hash"]


def check_ngrams(cfg: TrainConfig):
    """The PMI n-gram vocabulary of ``masking.strategy=pmi`` (None for other strategies)."""
    if masking.pairing(cfg.masking.strategy)[0] != "pmi":
        return None
    if not cfg.data.ngrams:
        raise ConfigError("masking.strategy=pmi needs data.ngrams: the n-gram vocabulary of "
                          "`python -m videomask.scoring.pmi TRAIN_SHARDS --out ngrams.json`")
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
        if not Path(folder).exists():
            raise ConfigError(f"{key}={folder}: no such folder")
        try:
            urls = data.shard_urls(folder, split or None)
        except FileNotFoundError as e:
            raise ConfigError(f"{key}={folder}: {e}") from None
        # the first usable sample (unusable ones are the loader's to skip and count, not a reason to refuse)
        first = next(iter(data.dataset(urls, split_by_node=False, handler=data.ErrorCounter(verbose=False))), None)
        if first is not None:
            try:
                collate._check(first)
            except masking.MaskingError as e:
                raise ConfigError(f"{key}={folder} with masking.strategy={cfg.masking.strategy}: {e}") from None


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, model_state, opt_state, sched, step: int, epoch: int, batch_in_epoch: int,
                    cfg: TrainConfig):
    engine.save_checkpoint(path, {"model": model_state, "optimizer": opt_state, "scheduler": sched.state_dict(),
                                  "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                  # dropout and the like; masks have their own per-sample generators
                                  "rng": torch.get_rng_state()}, cfg)


def lr_lambda(cfg: TrainConfig):
    o = cfg.optim

    def f(step):
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps)
        return max(0.0, 1 - t) if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


def make_optimizer(model, cfg: TrainConfig):
    """AdamW (no weight decay on biases and norms) and its warm-up + decay schedule."""
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay,
                            "weight_decay": 0.0}], lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def resume(raw_model, opt, sched, cfg: TrainConfig, out: Path, fsdp: bool, rank: int) -> tuple[int, int, int]:
    """With ``run.resume=auto`` and a checkpoint in ``out``: its weights, optimizer, schedule and RNG state.
    Returns (step, epoch, batches already trained in that epoch); zeros for a fresh run."""
    if cfg.run.resume != "auto" or not (out / CKPT).exists():
        return 0, 0, 0
    state = engine.read_checkpoint(out / CKPT, cfg)
    engine.load_full_state(raw_model, opt, state, fsdp)
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if rank == 0:
        logger.info(f"resumed from {out / CKPT} at step {state['step']}")
    return state["step"], state["epoch"], state["batch_in_epoch"]


@torch.no_grad()
def validate(model, loader, device, autocast, max_batches: int) -> dict:
    model.eval()
    sums, n = {}, 0
    batches = (b for b in loader if "input_ids" in b)  # not the stream's closing report
    for i, batch in enumerate(batches):
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
    check_init(cfg.model)
    if cfg.data.max_text_len > text_positions(cfg.model):
        raise ConfigError(f"data.max_text_len={cfg.data.max_text_len} is more than the model's "
                          f"{text_positions(cfg.model)} text positions: lower it (or model.max_positions for a "
                          "model built from scratch)")
    tokenizer = load_tokenizer(cfg.model)
    collate = MaskingCollator(tokenizer, cfg.masking, cfg.data.max_text_len, None, anchors_hash=check_anchors(cfg),
                              ngrams=check_ngrams(cfg), text_only=cfg.model.kind == "text")
    check_data(cfg, collate)
    # one training per run folder: a second one (a resume started twice, say) is refused, naming the holder
    lock = FolderLock(Path(cfg.run.out), "videomask train").acquire() if rank == 0 else None
    try:
        return _train(cfg, rank, world, device, tokenizer, collate)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, rank: int, world: int, device, tokenizer, collate) -> dict:
    out = engine.prepare_run_folder(cfg, rank, run_files=(CKPT, "metrics.jsonl"))
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)

    model = build_model(cfg.model, len(tokenizer)).to(device)
    grid = getattr(model, "grid", None)
    collate.patch_grid = (grid, grid) if grid else None
    loader = make_loader(cfg, cfg.data.train, cfg.data.train_split, collate, rank, world, train=True)
    val_loader = (make_loader(cfg, cfg.data.val or cfg.data.train, cfg.data.val_split, collate, rank, world, False)
                  if cfg.data.val_split else None)

    fsdp = world > 1 and cfg.run.parallel == "fsdp"
    model = engine.wrap(model, world, device, cfg.run.parallel, find_unused=cfg.model.kind == "video")
    raw_model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    opt, sched = make_optimizer(model, cfg)  # after wrapping: FSDP replaces the parameters by sharded ones
    step, epoch, skip = resume(raw_model, opt, sched, cfg, out, fsdp, rank)
    o = cfg.optim
    autocast = engine.autocast(cfg.run, device)

    stop, logs = {"signal": None}, {}
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:  # finish the step, save, exit; the caller's handlers come back afterwards
        signal.signal(sig, lambda s, f: stop.update(signal=s))
    try:
        log = engine.MetricsLog(out, rank)
        bar = tqdm(total=o.max_steps, initial=step, disable=rank != 0, desc="train", unit="step")
        started, batch_in_epoch, data_wait, t_log, steps_here = step, skip, 0.0, time.perf_counter(), 0
        model.train()

        saved = {"step": step if step else None}  # the step of the last checkpoint written, all finite

        def checkpoint():  # every process calls it: gathering FSDP shards is a collective
            if not all_ranks_true(all(bool(torch.isfinite(engine.local(p)).all()) for p in raw_model.parameters()),
                                  world, device):
                last = f"{out / CKPT} (step {saved['step']})" if saved["step"] is not None else "none was written"
                raise FloatingPointError(f"the weights at step {step} are not finite (the run diverged: lower "
                                         f"optim.lr?); they were not saved. The last finite checkpoint: {last}")
            model_state, opt_state = engine.full_state(raw_model, opt, fsdp)
            if rank == 0:
                save_checkpoint(out / CKPT, model_state, opt_state, sched, step, epoch, batch_in_epoch, cfg)
            saved["step"] = step

        def batches():  # endless: epochs of the shards (a fresh mask draw per epoch), resumable mid-epoch
            nonlocal epoch, batch_in_epoch
            while True:
                collate.set_epoch(epoch)
                loader.errors.reset()  # counts per epoch (DataLoader workers start from this copy)
                n = 0
                for b in loader:
                    skips.update(b.pop("data_report"))
                    if "input_ids" not in b:
                        continue  # a worker's closing report
                    n += 1
                    short_texts["n"] += int(b.pop("short_texts", 0))
                    if n <= batch_in_epoch:
                        continue  # already trained on before the resume
                    batch_in_epoch = n
                    yield b
                seen, counts = skips.end_epoch()
                log.write({"step": step, "epoch": epoch, "samples_read": seen, "samples_skipped": sum(counts.values()),
                           **{f"skipped_{r}": k for r, k in counts.items()}}, step)
                skips.failed = skips.too_many(seen, counts, finished=True)
                if n == 0 and not skips.failed:
                    raise ConfigError(f"no training batches in {cfg.data.train} (split {cfg.data.train_split!r}); "
                                      f"with {world} processes each needs at least one batch of {cfg.data.batch_size}")
                epoch, batch_in_epoch = epoch + 1, 0

        skips = data.SkipReport(cfg.data.max_skip_fraction)
        skips.failed, short_texts = None, {"n": 0}
        it = batches()
        while step < o.max_steps:
            # a broken dataset stops the run; a few bad samples are skipped and counted. Judged on the host; with
            # several processes only at log steps, where all of them are, so that they stop together
            if world == 1 or step % cfg.run.log_every == 0:
                why = skips.failed or skips.too_many(*skips.epoch())
                if world > 1 and not all_ranks_true(not why, world, device):
                    why = why or (f"another process skipped more than data.max_skip_fraction="
                                  f"{cfg.data.max_skip_fraction} of its samples (see its message)")
                if why:
                    raise data.DataError(why)
            logs = {}
            for micro in range(o.grad_accum):
                tw = time.perf_counter()
                batch = to_device(next(it), device)
                data_wait += time.perf_counter() - tw
                sync = micro == o.grad_accum - 1 or world == 1
                if fsdp:
                    model.set_requires_gradient_sync(sync)
                with (model.no_sync() if not sync and not fsdp else nullcontext()), autocast:
                    r = model(batch)
                # every process takes the same branch, or the collectives below would wait forever
                if not all_ranks_true(bool(torch.isfinite(r["loss"])), world, device):
                    finite = all_ranks_true(all(bool(torch.isfinite(engine.local(p)).all()) for p in raw_model.parameters()),
                                            world, device)
                    if finite:  # this step has not been applied: the weights are the last good ones
                        checkpoint()
                    where = (f"{out / CKPT} (step {saved['step']})" if saved["step"] is not None
                             else "no checkpoint (none was finite)")
                    raise FloatingPointError(f"non-finite loss {float(r['loss'])} at step {step} "
                                             f"({', '.join(f'{k}={float(v):.4g}' for k, v in r.items())}); "
                                             f"the last good state is in {where}")
                (r["loss"] / o.grad_accum).backward()
                # one device-to-host copy for all metrics (one sync per micro-step, not one per metric)
                values = torch.stack([v.detach().float().reshape(()) for v in r.values()]).tolist()
                for k, v in zip(r, values):
                    logs[k] = logs.get(k, 0.0) + v / o.grad_accum
            if o.clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
                logs["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, steps_here = step + 1, steps_here + 1
            bar.update(1)
            if world > 1 and (step % cfg.run.log_every == 0 or step == o.max_steps):  # log the global mean
                keys = sorted(logs)
                t = torch.tensor([logs[k] for k in keys], device=device)
                dist.all_reduce(t)
                logs = dict(zip(keys, (t / world).tolist()))
            if rank == 0 and (step % cfg.run.log_every == 0 or step == o.max_steps):
                elapsed = time.perf_counter() - t_log
                seen, counts = skips.epoch()
                logs.update(samples_skipped=sum(counts.values()), short_texts=short_texts["n"])
                logs.update(step=step, epoch=epoch, lr=sched.get_last_lr()[0],
                            samples_per_s=cfg.run.log_every * o.grad_accum * cfg.data.batch_size * world / elapsed,
                            data_wait=data_wait / elapsed)
                log.write(logs, step)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                data_wait, t_log = 0.0, time.perf_counter()
            if val_loader is not None and (
                    (cfg.run.val_every and step % cfg.run.val_every == 0) or step == o.max_steps):
                v = validate(model, val_loader, device, autocast, cfg.run.val_batches)
                log.write({"step": step, **v}, step)
            if (cfg.run.save_every and step % cfg.run.save_every == 0) or step == o.max_steps:
                checkpoint()
            if stop["signal"] or (cfg.run.stop_after and steps_here >= cfg.run.stop_after):
                checkpoint()
                if rank == 0:
                    why = f"signal {stop['signal']}" if stop["signal"] else f"run.stop_after={cfg.run.stop_after}"
                    logger.info(f"stopped at step {step} ({why}); resume with run.resume=auto")
                break
        bar.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.close()
    if step >= o.max_steps:
        export(raw_model, opt, cfg, out, rank, fsdp, tokenizer)
    engine.teardown(world)
    if rank == 0:
        logger.info(skips.line() + (f"; {short_texts['n']} transcripts were too short to mask any token (trained "
                                    "unmasked)" if short_texts["n"] else ""))
        c = loader.windows.counts
        if c["windowed"]:
            logger.info(f"{c['windowed']} of {c['documents']} documents read were longer than data.max_text_len="
                        f"{cfg.data.max_text_len} tokens: split into {c['windows']} overlapping windows")
        logger.info(f"trained {step - started} steps in this run; {out}")
    return {"out": str(out), "step": step, "finished": step >= o.max_steps,
            "model": str(out / "model.safetensors") if step >= o.max_steps else None,
            "last": {k: v for k, v in logs.items() if isinstance(v, (int, float))}}


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
