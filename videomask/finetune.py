"""Downstream fine-tuning and evaluation: ``python -m videomask.finetune [CONFIG.yaml ...] [key=value ...]``.

Tasks (``task``):

- ``mcqa``: multiple-choice video QA (TVQA, Social-IQ, the synthetic world's colour
  questions). Each (clip, "question answer" / transcript) pair is encoded, a linear head
  scores it, and a softmax over the candidates is trained. The frames go through the ViT
  once per clip, not once per candidate. Samples may have different numbers of
  candidates: the missing ones are masked out and never win.
- ``clip_cls``: a clip-level label (the metadata's ``label``).
- ``text_cls``: a text label (ChemProt, ACL-ARC) from a text-only model (``model.kind=text``).

Modes: ``probe`` (the authors' video protocol: only the head trains) or ``full``. In probe
mode every sample is encoded once (``cache_features``) and the head trains on the stored
features, so epochs cost nothing. The encoder comes from a continued-pretraining run
(``init=RUN``) or, for the no-continued-pretraining baseline, from the base model
(``init=`` empty, ``model.preset`` and ``model.*`` as in training).

Shares the trainer's engine (``videomask.engine``): ``torchrun`` (DDP; the data is split
by sample across processes, uneven ends handled by DDP's join), the ``run`` section
(out, seed, device, precision, resume, overwrite), a checkpoint per epoch
(``run.resume=auto`` continues), ``metrics.jsonl`` and TensorBoard. Early stopping on the
validation ``select`` metric; the test metrics (accuracy, macro-F1, micro-F1) come from
the best validation epoch, written to ``OUT/metrics.json`` with a confusion-matrix PNG.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import webdataset as wds
from tqdm import tqdm

from . import data, engine, metrics
from .config import ConfigError, RunConfig, run_cli
from .config import load_config as _load_layered
from .errors import DataError
from .model import (
    ModelConfig,
    TextMLM,
    VideoLanguageModel,
    build_model,
    load_run,
    load_tokenizer,
)

logger = logging.getLogger(__spec__.name if __spec__ else __name__)  # its dotted name under -m too

CKPT = "finetune_checkpoint.pt"


@dataclass
class FinetuneConfig:
    task: str = "mcqa"  # mcqa (multiple-choice video QA), clip_cls or text_cls
    mode: str = "probe"  # probe (only the head trains) or full
    init: str = ""  # a continued-pretraining run folder; "" = the base model described by `model`
    # preset "": the architecture of `init`; a preset that differs from init's is an error
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset=""))
    shards: str = ""  # shards with the labels / QA fields in their metadata
    train_split: str = "train"  # split the head is trained on
    val_split: str = "val"  # split that selects the best epoch
    test_split: str = "test"  # split reported
    batch_size: int = 8  # clips (mcqa: each with all its candidates) per process
    max_text_len: int = 64  # tokens per (question answer [transcript]) text
    # mcqa: what the question and candidates are read with: the clip's "transcript", or "none" (the frames
    # alone must answer: a question the transcript gives away measures reading, not the domain)
    context: str = "transcript"
    lr: float = 1e-3  # learning rate (AdamW)
    # mode full: the new head's learning rate (0: lr). A head trained from scratch at an encoder's fine-tuning
    # rate (5e-5) learns too slowly in a short run: it predicted the majority class only (see finetune_text.yaml)
    head_lr: float = 0.0
    weight_decay: float = 0.0  # AdamW weight decay
    epochs: int = 20  # most epochs
    patience: int = 5  # epochs without a better validation score before stopping
    select: str = "accuracy"  # the validation metric for early stopping: accuracy, macro_f1 (ACL-ARC), micro_f1
    group_by: str = ""  # a metadata field: the test metrics are also reported per value of it (e.g. answer_group)
    cache_features: bool = True  # probe mode: encode every sample once, train the head on the features
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/finetune"))

    def __post_init__(self):
        if self.task not in ("mcqa", "clip_cls", "text_cls"):
            raise ConfigError(f"task must be mcqa, clip_cls or text_cls, got {self.task!r}")
        if self.mode not in ("probe", "full"):
            raise ConfigError(f"mode must be probe or full, got {self.mode!r}")
        if self.context not in ("transcript", "none"):
            raise ConfigError(f"context must be transcript or none, got {self.context!r}")
        if self.select not in ("accuracy", "macro_f1", "micro_f1"):
            raise ConfigError(f"select must be accuracy, macro_f1 or micro_f1, got {self.select!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 1 or self.head_lr < 0:
            raise ConfigError("epochs, batch_size, patience >= 1, lr > 0 and head_lr >= 0")
        if self.run.parallel != "ddp":
            raise ConfigError("fine-tuning runs with run.parallel=ddp (the encoders fit one device)")
        if self.run.precision == "bf16_params":
            raise ConfigError("run.precision=bf16_params is for continued pretraining; fine-tuning takes auto, fp32 "
                              "or bf16")


def load_config(files=(), overrides=()) -> FinetuneConfig:
    return _load_layered(files, overrides, schema=FinetuneConfig)


def load_encoder(cfg: FinetuneConfig):
    """(the encoder to fine-tune, its model config), from a pretraining run or the base model."""
    if not cfg.init:
        if not cfg.model.preset:
            raise ConfigError("give init=RUN (a continued-pretraining run) or model.preset (the base model)")
        return build_model(cfg.model, len(load_tokenizer(cfg.model))), cfg.model
    try:
        return load_run(cfg.init, cfg.model.preset)
    except ValueError as e:
        raise ConfigError(f"init={e}") from None


class Standardize(nn.Module):
    """(x - mean) / std with fixed statistics (identity until set): the linear probe reads standardised
    features, as MAE's probe does with a BatchNorm without affine parameters, so that one learning
    rate suits every encoder whatever the scale of its features."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set(self, features: torch.Tensor):
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp(min=1e-6))

    def forward(self, x):
        return (x - self.mean) / self.std


class Finetuner(nn.Module):
    """An encoder and a linear head on [mean of the text states; mean of the patch states] (standardised
    with the training split's statistics in probe mode).

    Mean pooling, not the [CLS] state: masked-token pretraining never trains [CLS] (it is never
    masked), and after continued pretraining its state hardly depends on the input (measured: the
    [CLS] states of four different answers to one question differed by 7e-5 on average).
    """

    def __init__(self, encoder: nn.Module, outputs: int):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.mlm.config.hidden_size
        self.video = isinstance(encoder, VideoLanguageModel)
        dim = hidden * (2 if self.video else 1)
        self.head = nn.Sequential(Standardize(dim), nn.Linear(dim, outputs))

    @staticmethod
    def _mean(states, mask):
        mask = mask.to(states.dtype)[..., None]
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)

    def pooled(self, batch) -> torch.Tensor:
        """[N, D]: one feature row per text (mcqa: per candidate)."""
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if not self.video:
            return self._mean(self.encoder.mlm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state, attn)
        repeat = int(batch.get("repeat", 1))
        out, _ = self.encoder.joint(ids, attn, batch.get("frames"), batch.get("frame_valid"), repeat=repeat)
        L = ids.shape[1]
        text = self._mean(out[:, :L], attn)
        if out.shape[1] == L:
            return torch.cat([text, torch.zeros_like(text)], -1)
        per_frame = (out.shape[1] - L) // batch["frame_valid"].shape[1]
        valid = batch["frame_valid"].repeat_interleave(per_frame, dim=1).repeat_interleave(repeat, 0)  # [N, T * P]
        return torch.cat([text, self._mean(out[:, L:], valid)], -1)

    def scores(self, features: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        logits = self.head(features.float())
        if candidates is not None:  # [B * K, 1] -> [B, K], padded candidates never win
            logits = logits.view(candidates.shape).masked_fill(~candidates, float("-inf"))
        return logits

    def forward(self, batch) -> torch.Tensor:
        return self.scores(self.pooled(batch), batch.get("candidates"))


class Collate:
    """Samples -> tensors for one task (no masking: fine-tuning sees whole clips)."""

    def __init__(self, cfg: FinetuneConfig, tokenizer, labels: list[str] | None):
        self.cfg, self.tok, self.labels = cfg, tokenizer, labels
        self.texts = self.truncated = 0  # text classification: documents longer than max_text_len, counted

    @staticmethod
    def frames(samples):
        if samples[0].get("frames") is None:
            return {}
        frames = torch.stack([s["frames"] for s in samples])
        return {"frames": frames, "frame_valid": torch.ones(frames.shape[:2], dtype=torch.bool)}

    def __call__(self, samples):
        cfg = self.cfg
        if cfg.task == "mcqa":
            k_max = max(len(s["meta"]["answers"]) for s in samples)
            firsts, seconds, cands, gold = [], [], torch.zeros(len(samples), k_max, dtype=torch.bool), []
            for b, s in enumerate(samples):
                m = s["meta"]
                if not 0 <= int(m["answer_idx"]) < len(m["answers"]):
                    raise DataError(f"sample {s['key']}: answer_idx {m['answer_idx']} is out of range for "
                                     f"{len(m['answers'])} answers")
                answers = list(m["answers"]) + [""] * (k_max - len(m["answers"]))
                cands[b, :len(m["answers"])] = True
                firsts += [f"{m['question']} {a}" for a in answers]
                seconds += [s["text"]] * k_max
                gold.append(int(m["answer_idx"]))
            if cfg.context == "none":
                enc = self.tok(firsts, padding=True, truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
            else:
                enc = self.tok(firsts, seconds, padding=True, truncation="only_second", max_length=cfg.max_text_len,
                               return_tensors="pt")
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "candidates": cands,
                     "repeat": k_max, **self.frames(samples)}
        else:
            gold = []
            for s in samples:
                label = str(s["meta"].get("label"))
                if label not in self.labels:
                    raise DataError(f"sample {s['key']}: label {label!r} never occurs in the training split "
                                     f"(known: {', '.join(self.labels)})")
                gold.append(self.labels.index(label))
            texts = [s["text"] for s in samples]
            enc = self.tok(texts, padding=True, truncation=True, max_length=cfg.max_text_len, return_tensors="pt")
            if cfg.task == "text_cls":  # a classifier reads the first max_text_len tokens (as the DSP baselines
                # do); never silently: how many documents were cut is reported (metrics.json "truncated")
                full = self.tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
                self.texts += len(texts)
                self.truncated += sum(len(x) > cfg.max_text_len for x in full)
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     **(self.frames(samples) if cfg.task == "clip_cls" else {})}
        batch["gold"] = torch.tensor(gold)
        return batch


# -- data: streamed from the shards, split by sample across processes -------------------------------
def split_info(cfg: FinetuneConfig, split: str) -> tuple[int, list[str], int, list]:
    """(number of samples, sorted labels, most candidates, each sample's ``group_by`` value) of a split, from the
    metadata alone, in the split's order."""
    try:
        metas = [s["meta"] for s in data.dataset(cfg.shards, split, frames=False, split_by_node=False,
                                                 handler=data.ErrorCounter(strict=True))]
    except FileNotFoundError:
        metas = []
    if not metas:
        raise ConfigError(f"{cfg.shards}: the {split!r} split is empty; fine-tuning needs train, val and test splits")
    if cfg.task == "mcqa":
        missing = [m.get("key") for m in metas if not {"question", "answers", "answer_idx"} <= set(m)]
        if missing:
            raise ConfigError(f"{cfg.shards} ({split}): {len(missing)} samples lack question/answers/answer_idx, "
                              f"e.g. {missing[0]} (task=mcqa needs QA metadata)")
    labels = sorted({str(m.get("label")) for m in metas})
    groups = [str(m.get(cfg.group_by)) for m in metas] if cfg.group_by else []
    if cfg.group_by and all(m.get(cfg.group_by) is None for m in metas):
        raise ConfigError(f"{cfg.shards} ({split}): no sample has the metadata field group_by={cfg.group_by!r}")
    return len(metas), labels, max((len(m.get("answers", [])) for m in metas), default=0), groups


def stream(cfg: FinetuneConfig, split: str, collate, rank: int, world: int, seed: int | None = None):
    """Batches of this process's samples (sample i goes to process i % world), with their indices.
    ``seed``: shuffled (a buffer of 1000 samples, seeded, so each epoch has its own order)."""
    # the whole buffer filled before the first draw: a split stored in label order (many releases are) would
    # otherwise reach the model one class at a time, and a short fine-tuning learns the majority class only
    pipe = data.dataset(cfg.shards, split, frames=cfg.task != "text_cls", split_by_node=False,
                        shuffle=1000 if seed is not None else 0, shuffle_initial=1000, seed=seed or 0,
                        handler=data.ErrorCounter(strict=True))
    pipe.append(enumerate)  # the sample's index in the split, before the split across processes
    pipe.append(data.split_samples(rank, world))
    pipe.append(wds.batched(cfg.batch_size, collation_fn=lambda rows: ([i for i, _ in rows],
                                                                       collate([s for _, s in rows]))))
    yield from pipe


# -- evaluation -----------------------------------------------------------------------------------
def gather_predictions(local: list[tuple[int, int, int]], world: int):
    """[(index, gold, pred)] of every process -> gold, pred in sample order."""
    rows = sorted(r for part in engine.gather_objects(local, world) for r in part)
    return [g for _, g, _ in rows], [p for _, _, p in rows]


@torch.no_grad()
def predict(model, cfg, split, collate, rank, world, device, autocast):
    model.eval()
    local = []
    for idx, b in stream(cfg, split, collate, rank, world):
        b = engine.to_device(b, device)
        with autocast:
            logits = model(b)
        local += list(zip(idx, b["gold"].tolist(), logits.argmax(-1).tolist()))
    return gather_predictions(local, world)


@torch.no_grad()
def encode_split(model, cfg, split, collate, rank, world, device, autocast):
    """Probe features of a whole split, on every process: (features [N, K, D] or [N, D],
    candidates [N, K] or None, gold [N])."""
    model.eval()
    local = []
    for idx, b in tqdm(stream(cfg, split, collate, rank, world), desc=f"features ({split})", unit="batch",
                       disable=True if rank != 0 else None, leave=False):  # None: not when stderr is no terminal
        b = engine.to_device(b, device)
        with autocast:
            f = model.pooled(b).float()
        if "candidates" in b:
            f = f.view(*b["candidates"].shape, -1)
        for j, i in enumerate(idx):
            local.append((i, f[j].cpu(), None if "candidates" not in b else b["candidates"][j].cpu(),
                          int(b["gold"][j])))
    rows = sorted((r for part in engine.gather_objects(local, world) for r in part), key=lambda r: r[0])
    if cfg.task != "mcqa":
        return torch.stack([r[1] for r in rows]), None, torch.tensor([r[3] for r in rows])
    k = max(r[1].shape[0] for r in rows)  # batches were padded to their own longest: pad to the split's
    feats = torch.zeros(len(rows), k, rows[0][1].shape[-1])
    cands = torch.zeros(len(rows), k, dtype=torch.bool)
    for n, r in enumerate(rows):
        feats[n, :r[1].shape[0]], cands[n, :r[2].shape[0]] = r[1], r[2]
    return feats, cands, torch.tensor([r[3] for r in rows])


def cached_predict(model, split_features, device):
    feats, cands, gold = (t if t is None else t.to(device) for t in split_features)
    with torch.no_grad():
        logits = model.scores(feats, cands)
    return gold.tolist(), logits.argmax(-1).tolist()


# -- main -----------------------------------------------------------------------------------------
def build_finetuner(cfg: FinetuneConfig, labels: list[str] | None):
    """(model, the module that trains: the head in probe mode, else the model, tokenizer)."""
    encoder, model_cfg = load_encoder(cfg)
    if cfg.task == "text_cls" and not isinstance(encoder, TextMLM):
        raise ConfigError("task text_cls needs a text model (model.kind=text)")
    if cfg.task != "text_cls" and not isinstance(encoder, VideoLanguageModel):
        raise ConfigError(f"task {cfg.task} needs the video-language model (model.kind=video)")
    model = Finetuner(encoder, 1 if cfg.task == "mcqa" else len(labels))
    if cfg.mode == "probe":
        model.encoder.requires_grad_(False)
    return model, model.head if cfg.mode == "probe" else model, load_tokenizer(model_cfg)


def train_step(model, opt, batch, autocast=nullcontext()) -> float:
    with autocast:
        loss = F.cross_entropy(model(batch).float(), batch["gold"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def finetune(cfg: FinetuneConfig) -> dict:
    rank, world, device = engine.setup_distributed(cfg.run)
    result = _finetune(cfg, rank, world, device)  # an error ends this process; torchrun then stops the others
    engine.teardown(world)
    return result


def split_summary(cfg: FinetuneConfig) -> dict:
    """The three splits' sizes, the training labels (None for mcqa) and the most test candidates, read from
    the metadata before anything trains or is written; unseen test labels are refused here."""
    if not cfg.shards:
        raise ConfigError("shards is empty: give the shards whose metadata holds the labels or QA fields")
    (n_train, labels, _, _), (n_val, _, _, _), (n_test, test_labels, k_test, groups) = (
        split_info(cfg, s) for s in (cfg.train_split, cfg.val_split, cfg.test_split))
    if cfg.task != "mcqa":
        unseen = sorted(set(test_labels) - set(labels))
        if unseen:  # said before training, not after an hour of it
            raise DataError(f"{cfg.shards}: test labels {unseen} never occur in the {cfg.train_split!r} split "
                            f"(known: {', '.join(labels)}); the head cannot predict them")
    return {"samples": {"train": n_train, "val": n_val, "test": n_test},
            "labels": labels if cfg.task != "mcqa" else None, "k_test": k_test, "test_groups": groups}


def write_results(cfg: FinetuneConfig, out: Path, result: dict, best_state: dict, rank: int):
    """metrics.json, the best head (or model) and the confusion matrix picture, on rank 0."""
    if rank == 0:
        torch.save(best_state, out / "best.pt")
        (out / "metrics.json").write_text(json.dumps(result, indent=1))
        metrics.confusion_png(result["test"]["confusion"], result["labels"], out / "confusion.png",
                              f"{cfg.task} ({cfg.mode}): test accuracy {result['test']['accuracy']:.3f}")


@dataclass
class Run:
    """What stays fixed while a fine-tuning run trains."""

    cfg: FinetuneConfig
    model: "Finetuner"
    trainable: nn.Module  # the head in probe mode, else the model: what the checkpoint keeps
    opt: torch.optim.Optimizer
    collate: "Collate"
    labels: Optional[list]
    out: Path
    rank: int
    world: int
    device: torch.device
    autocast: object
    features: Optional[dict] = None  # probe mode: each split's cached (features, candidates, gold)
    ddp: Optional[nn.Module] = None  # what trains: the model, DDP-wrapped with several processes


@dataclass
class Progress:
    """Fine-tuning's loop state: where it is and the best epoch so far (all of it in the checkpoint)."""

    start: int = 0  # the first epoch this invocation trains
    best: float = -1.0  # the best validation score so far
    best_state: Optional[dict] = None  # the trainable weights of that epoch
    history: list = field(default_factory=list)  # one row per finished epoch
    waited: int = 0  # epochs since the best one (early stopping at cfg.patience)


def make_optimizer(cfg: FinetuneConfig, model: Finetuner) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, the new head at ``head_lr`` (default: ``lr``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.head.parameters()}
    groups = [{"params": [p for p in params if id(p) in head], "lr": cfg.head_lr or cfg.lr},
              {"params": [p for p in params if id(p) not in head], "lr": cfg.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def resume(cfg: FinetuneConfig, out: Path, trainable: nn.Module, opt, rank: int) -> Progress:
    st = engine.resume_state(out, cfg, CKPT)
    if st is None:
        return Progress()
    trainable.load_state_dict(st["trainable"])
    opt.load_state_dict(st["optimizer"])
    torch.set_rng_state(st["rng"])
    if rank == 0:
        logger.info(f"resumed from {out / CKPT} after epoch {st['epoch']}")
    return Progress(st["epoch"] + 1, st["best"], st["best_state"], st["history"], st["waited"])


def train_epoch(ft: "Run", epoch: int) -> tuple[list, list, list]:
    """One epoch of the head (on cached features) or of the model; returns (losses, val gold, val predictions)."""
    cfg, model, opt, device = ft.cfg, ft.model, ft.opt, ft.device
    model.train()
    if cfg.mode == "probe":
        model.encoder.eval()  # a frozen encoder: no dropout either
    losses = []
    if ft.features is not None:
        f, c, g = ft.features[cfg.train_split]
        order = torch.from_numpy(np.random.default_rng([cfg.run.seed, epoch]).permutation(len(g)))
        for i in range(0, len(g), cfg.batch_size):
            j = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model.scores(f[j].to(device), None if c is None else c[j].to(device)),
                                   g[j].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return (losses, *cached_predict(model, ft.features[cfg.val_split], device))
    # processes may hold one batch more than others: DDP's join lets the short ones wait
    with ft.ddp.join() if ft.world > 1 else nullcontext():
        for _, b in stream(cfg, cfg.train_split, ft.collate, ft.rank, ft.world, seed=cfg.run.seed * 1000 + epoch):
            losses.append(train_step(ft.ddp, opt, engine.to_device(b, device), ft.autocast))
    return (losses, *predict(model, cfg, cfg.val_split, ft.collate, ft.rank, ft.world, device, ft.autocast))


def end_epoch(ft: "Run", progress: Progress, epoch: int, losses: list, gold: list, pred: list, log):
    """Score the epoch on the validation split, keep the best weights, count patience, checkpoint."""
    cfg, labels, rank = ft.cfg, ft.labels, ft.rank
    n_classes = len(labels) if labels else max(pred + gold) + 1
    val = metrics.scores(gold, pred, n_classes)
    score = val[cfg.select]
    row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
    progress.history.append(row)
    log.write(row, epoch)
    logger.debug(f"epoch {epoch}: train loss {row['train_loss']:.4f}, val {cfg.select} {score:.4f}")
    if score > progress.best:
        progress.best, progress.waited = score, 0
        progress.best_state = copy.deepcopy(ft.trainable.state_dict())
    else:
        progress.waited += 1
    if rank == 0:
        engine.save_checkpoint(ft.out / CKPT, {
            "trainable": ft.trainable.state_dict(), "optimizer": ft.opt.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "best": progress.best, "best_state": progress.best_state,
            "history": progress.history, "waited": progress.waited}, cfg)


def test_result(ft: "Run", progress: Progress, splits: dict, params: int) -> dict:
    """The best epoch's weights on the test split, and everything metrics.json holds."""
    cfg, model, labels, collate = ft.cfg, ft.model, ft.labels, ft.collate
    args = (cfg, cfg.test_split, collate, ft.rank, ft.world, ft.device, ft.autocast)
    ft.trainable.load_state_dict(progress.best_state)
    if ft.features is not None:
        gold, pred = cached_predict(model, encode_split(model, *args), ft.device)
    else:
        gold, pred = predict(model, *args)
    n_classes = len(labels) if labels else splits["k_test"]
    return {"stopped": False, "task": cfg.task, "mode": cfg.mode, "init": cfg.init or "base model",
            "select": cfg.select, f"best_val_{cfg.select}": progress.best, "test": metrics.scores(gold, pred, n_classes),
            "labels": labels or [f"answer {i}" for i in range(n_classes)], "history": progress.history,
            "trainable_parameters": params, "samples": splits["samples"], "processes": ft.world,
            **({"truncated": {"texts": collate.texts, "longer_than_max_text_len": collate.truncated,
                              "max_text_len": cfg.max_text_len}} if cfg.task == "text_cls" else {}),
            **({"test_by_group": by_group(gold, pred, splits["test_groups"], n_classes), "group_by": cfg.group_by}
               if cfg.group_by else {}),
            # per question, in the shards' order: what paired comparisons across models resample
            "test_predictions": {"gold": list(map(int, gold)), "pred": list(map(int, pred)),
                                 **({"group": splits["test_groups"]} if cfg.group_by else {})}}


def by_group(gold: list, pred: list, groups: list, n_classes: int) -> dict:
    """The test metrics of each value of ``group_by`` (questions in the split's order)."""
    return {g: metrics.scores([x for x, k in zip(gold, groups) if k == g], [x for x, k in zip(pred, groups) if k == g],
                              n_classes) for g in sorted(set(groups))}


def _finetune(cfg: FinetuneConfig, rank: int, world: int, device) -> dict:
    splits = split_summary(cfg)
    labels = splits["labels"]
    torch.manual_seed(cfg.run.seed)
    model, trainable, tokenizer = build_finetuner(cfg, labels)  # before the run folder: a bad init writes nothing
    out = engine.prepare_run_folder(cfg, rank, run_files=(CKPT, "metrics.jsonl", "metrics.json"))
    model = model.to(device)
    opt = make_optimizer(cfg, model)
    collate = Collate(cfg, tokenizer, labels)
    autocast = engine.autocast(cfg.run, device)
    ft = Run(cfg, model, trainable, opt, collate, labels, out, rank, world, device, autocast)
    if cfg.mode == "probe" and cfg.cache_features:  # a frozen encoder: its features computed once, split across processes
        ft.features = {s: encode_split(model, cfg, s, collate, rank, world, device, autocast)
                          for s in (cfg.train_split, cfg.val_split)}
        f, c, _ = ft.features[cfg.train_split]
        model.head[0].set((f[c] if c is not None else f).to(device))  # real candidates only, not the padding
        ft.ddp = model  # every process then trains the (tiny) head on all features, identically: no DDP needed
    else:  # the pretraining heads (MLM, patch predictor, mask token) get no gradients here: DDP must expect that
        ft.ddp = engine.wrap(model, world, device, "ddp", find_unused=True)
    progress = resume(cfg, out, trainable, opt, rank)
    log = engine.MetricsLog(out, rank)
    # a stop signal (SIGTERM, SIGINT) ends the run at the end of the epoch it arrives in, whose checkpoint is then
    # written: resumable, as with run.stop_after (time-limited jobs); an epoch cut short could not be resumed
    with engine.StopSignals() as stop:
        for epoch in range(progress.start, cfg.epochs):
            if progress.waited >= cfg.patience:
                break
            signalled = stop.agreed(world, device)
            if signalled or (cfg.run.stop_after and epoch - progress.start >= cfg.run.stop_after):
                log.close()
                if rank == 0:
                    logger.info(f"stopped before epoch {epoch} ({stop.why(signalled, cfg.run.stop_after)}); "
                                "continue with run.resume=auto")
                return {"stopped": True, "epoch": epoch - 1, "history": progress.history}
            end_epoch(ft, progress, epoch, *train_epoch(ft, epoch), log)
    log.close()
    result = test_result(ft, progress, splits, sum(p.numel() for p in model.parameters() if p.requires_grad))
    write_results(cfg, out, result, progress.best_state, rank)
    if rank == 0 and cfg.task == "text_cls" and collate.truncated:
        logger.warning(f"{collate.truncated} of {collate.texts} texts read were longer than max_text_len="
                       f"{cfg.max_text_len} tokens and were cut to it (metrics.json: truncated)")
    return result


def _report(cfg: FinetuneConfig) -> dict:
    r = finetune(cfg)
    t = r.get("test")
    if t and int(os.environ.get("RANK", "0")) == 0:
        best = r[f"best_val_{r['select']}"]
        print(f"test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, micro-F1 {t['micro_f1']:.4f} "
              f"(best val {r['select']} {best:.4f})")
    return r


def main(argv=None) -> int:
    return run_cli(argv, FinetuneConfig, _report, "python -m videomask.finetune", __doc__)


if __name__ == "__main__":
    sys.exit(main())
