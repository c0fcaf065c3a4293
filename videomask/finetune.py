"""Downstream fine-tuning and evaluation: ``python -m videomask.finetune [CONFIG.yaml ...] [key=value ...]``.

Tasks (``task``):

- ``mcqa``: multiple-choice video QA. Each (clip, question + candidate answer) pair is
  encoded (text pair: "question answer" / the clip's transcript, plus the frames); a
  linear head scores the joint [CLS] state; a softmax over the candidates is trained.
  Samples may have different numbers of candidates: the missing ones are masked out.
- ``clip_cls``: a clip-level label (the metadata's ``label``) from the joint [CLS] state.
- ``text_cls``: a text label from a text-only model (``model.kind=text``).

Modes: ``probe`` (the authors' video protocol: only the head trains, the encoder is
frozen) or ``full``. The encoder comes from a continued-pretraining run folder
(``init=RUN``: ``model.safetensors`` + ``model_config.json``) or, for the
no-continued-pretraining baseline, straight from the base model (``init=`` empty,
``model.*`` as in training). Early stopping on validation accuracy; the test
metrics (accuracy, macro-F1, micro-F1) come from the best validation epoch and are
written to ``OUT/metrics.json`` with a confusion-matrix PNG.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import data, metrics
from .config import ConfigError
from .model import ModelConfig, TextMLM, VideoLanguageModel, build_model, load_tokenizer


@dataclass
class FinetuneConfig:
    task: str = "mcqa"
    mode: str = "probe"
    init: str = ""  # a continued-pretraining run folder; "" = the base model described by `model`
    model: ModelConfig = field(default_factory=ModelConfig)
    shards: str = ""  # shards with the labels / QA fields in their metadata
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    batch_size: int = 8
    max_text_len: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    patience: int = 5  # epochs without a better validation accuracy before stopping
    seed: int = 0
    device: str = "auto"
    out: str = "runs/finetune"

    def __post_init__(self):
        if self.task not in ("mcqa", "clip_cls", "text_cls"):
            raise ConfigError(f"task must be mcqa, clip_cls or text_cls, got {self.task!r}")
        if self.mode not in ("probe", "full"):
            raise ConfigError(f"mode must be probe or full, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 1:
            raise ConfigError("epochs, batch_size, patience >= 1 and lr > 0")


def load_config(files=(), overrides=()) -> FinetuneConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), *[OmegaConf.load(f) for f in files],
                                 OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config error{f' at {key}' if key else ''}: {str(e).splitlines()[0]}") from None


def load_encoder(cfg: FinetuneConfig, vocab_size: int):
    """The encoder to fine-tune, from a pretraining run or from the base model."""
    if not cfg.init:
        return build_model(cfg.model, vocab_size), cfg.model
    run = Path(cfg.init)
    if not (run / "model.safetensors").exists():
        raise ConfigError(f"init={run}: no model.safetensors (is it a finished `python -m videomask.train` run?)")
    saved = ModelConfig(**json.loads((run / "model_config.json").read_text()))
    if cfg.model.preset != ModelConfig().preset and cfg.model.preset != saved.preset:
        raise ConfigError(f"init={run} holds a {saved.preset!r} model, but this config asks for "
                          f"model.preset={cfg.model.preset!r}")
    from safetensors.torch import load_model

    model = build_model(saved, vocab_size)
    load_model(model, str(run / "model.safetensors"))
    return model, saved


class Finetuner(nn.Module):
    """An encoder and a linear head on [mean of the text states; mean of the patch states].

    Mean pooling, not the [CLS] state: masked-token pretraining never trains [CLS] (it is never
    masked), and after continued pretraining its state hardly depends on the input (measured: the
    [CLS] states of four different answers to one question differed by 7e-5 on average).
    """

    def __init__(self, encoder: nn.Module, outputs: int):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.mlm.config.hidden_size
        self.video = isinstance(encoder, VideoLanguageModel)
        self.head = nn.Linear(hidden * (2 if self.video else 1), outputs)

    @staticmethod
    def _mean(states, mask):
        mask = mask.to(states.dtype)[..., None]
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)

    def pooled(self, batch) -> torch.Tensor:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if not self.video:
            return self._mean(self.encoder.mlm.base_model(input_ids=ids, attention_mask=attn).last_hidden_state, attn)
        out, _ = self.encoder.joint(ids, attn, batch.get("frames"), batch.get("frame_valid"))
        L = ids.shape[1]
        text = self._mean(out[:, :L], attn)
        if out.shape[1] == L:
            return torch.cat([text, torch.zeros_like(text)], -1)
        per_frame = (out.shape[1] - L) // batch["frame_valid"].shape[1]
        valid = batch["frame_valid"].repeat_interleave(per_frame, dim=1)  # [B, T * P]
        return torch.cat([text, self._mean(out[:, L:], valid)], -1)

    def forward(self, batch) -> torch.Tensor:
        logits = self.head(self.pooled(batch))
        if "candidates" in batch:  # [B * K, 1] -> [B, K], padded candidates never win
            logits = logits.view(batch["candidates"].shape).masked_fill(~batch["candidates"], float("-inf"))
        return logits


class Collate:
    """Samples -> tensors for one task (no masking: fine-tuning sees whole clips)."""

    def __init__(self, cfg: FinetuneConfig, tokenizer, labels: list[str] | None):
        self.cfg, self.tok, self.labels = cfg, tokenizer, labels

    def frames(self, samples, repeat=1):
        if samples[0].get("frames") is None:
            return {}
        frames = torch.stack([s["frames"] for s in samples]).repeat_interleave(repeat, 0)
        return {"frames": frames, "frame_valid": torch.ones(frames.shape[:2], dtype=torch.bool)}

    def __call__(self, samples):
        cfg = self.cfg
        if cfg.task == "mcqa":
            k_max = max(len(s["meta"]["answers"]) for s in samples)
            firsts, seconds, cands, gold = [], [], torch.zeros(len(samples), k_max, dtype=torch.bool), []
            for b, s in enumerate(samples):
                m = s["meta"]
                if not 0 <= int(m["answer_idx"]) < len(m["answers"]):
                    raise ValueError(f"sample {s['key']}: answer_idx {m['answer_idx']} is out of range for "
                                     f"{len(m['answers'])} answers")
                answers = list(m["answers"]) + [""] * (k_max - len(m["answers"]))
                cands[b, :len(m["answers"])] = True
                firsts += [f"{m['question']} {a}" for a in answers]
                seconds += [s["text"]] * k_max
                gold.append(int(m["answer_idx"]))
            enc = self.tok(firsts, seconds, padding=True, truncation="only_second", max_length=cfg.max_text_len,
                           return_tensors="pt")
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "candidates": cands,
                     **self.frames(samples, k_max)}
        else:
            gold = []
            for s in samples:
                label = str(s["meta"].get("label"))
                if label not in self.labels:
                    raise ValueError(f"sample {s['key']}: label {label!r} never occurs in the training split "
                                     f"(known: {', '.join(self.labels)})")
                gold.append(self.labels.index(label))
            enc = self.tok([s["text"] for s in samples], padding=True, truncation=True, max_length=cfg.max_text_len,
                           return_tensors="pt")
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     **(self.frames(samples) if cfg.task == "clip_cls" else {})}
        batch["gold"] = torch.tensor(gold)
        return batch


def read_split(cfg: FinetuneConfig, split: str) -> list[dict]:
    try:
        samples = list(data.dataset(cfg.shards, split, frames=cfg.task != "text_cls",
                                    handler=data.ErrorCounter(strict=True)))
    except FileNotFoundError:
        samples = []
    if not samples:
        raise ConfigError(f"{cfg.shards}: the {split!r} split is empty; fine-tuning needs train, val and test splits")
    return samples


def batches(samples, collate, batch_size, rng=None):
    order = rng.permutation(len(samples)) if rng is not None else np.arange(len(samples))
    for i in range(0, len(samples), batch_size):
        yield collate([samples[j] for j in order[i:i + batch_size]])


@torch.no_grad()
def predict(model, samples, collate, cfg, device):
    model.eval()
    gold, pred = [], []
    for b in batches(samples, collate, cfg.batch_size):
        logits = model({k: v.to(device) for k, v in b.items()})
        gold += b["gold"].tolist()
        pred += logits.argmax(-1).cpu().tolist()
    return gold, pred


def finetune(cfg: FinetuneConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device == "auto" else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if not cfg.shards:
        raise ConfigError("shards is empty: give the shards whose metadata holds the labels or QA fields")
    train, val, test = (read_split(cfg, s) for s in (cfg.train_split, cfg.val_split, cfg.test_split))
    tokenizer = load_tokenizer(cfg.model)
    encoder, model_cfg = load_encoder(cfg, len(tokenizer))
    if cfg.task == "text_cls" and not isinstance(encoder, TextMLM):
        raise ConfigError("task text_cls needs a text model (model.kind=text)")
    if cfg.task != "text_cls" and not isinstance(encoder, VideoLanguageModel):
        raise ConfigError(f"task {cfg.task} needs the video-language model (model.kind=video)")
    labels = sorted({str(s["meta"].get("label")) for s in train}) if cfg.task != "mcqa" else None
    n_out = 1 if cfg.task == "mcqa" else len(labels)
    model = Finetuner(encoder, n_out).to(device)
    if cfg.mode == "probe":
        model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    collate = Collate(cfg, tokenizer, labels)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(asdict(cfg))))
    rng = np.random.default_rng(cfg.seed)
    best, best_state, history, waited = -1.0, None, [], 0
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.mode == "probe":
            model.encoder.eval()  # a frozen encoder: no dropout either
        losses = []
        for b in batches(train, collate, cfg.batch_size, rng):
            b = {k: v.to(device) for k, v in b.items()}
            loss = F.cross_entropy(model(b), b["gold"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        gold, pred = predict(model, val, collate, cfg, device)
        acc = float(np.mean(np.asarray(gold) == np.asarray(pred)))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": acc})
        print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, val accuracy {acc:.4f}", flush=True)
        if acc > best:
            best, waited = acc, 0
            best_state = copy.deepcopy(model.head.state_dict() if cfg.mode == "probe" else model.state_dict())
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    (model.head if cfg.mode == "probe" else model).load_state_dict(best_state)
    torch.save(best_state, out / "best.pt")
    n_classes = len(labels) if labels else max(len(s["meta"]["answers"]) for s in test)
    names = labels or [f"answer {i}" for i in range(n_classes)]
    result = {"task": cfg.task, "mode": cfg.mode, "init": cfg.init or "base model", "best_val_accuracy": best,
              "test": metrics.scores(*predict(model, test, collate, cfg, device), n_classes), "labels": names,
              "history": history, "trainable_parameters": sum(p.numel() for p in params)}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    metrics.confusion_png(result["test"]["confusion"], names, out / "confusion.png",
                          f"{cfg.task} ({cfg.mode}): test accuracy {result['test']['accuracy']:.3f}")
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    files = [a for a in argv if a.endswith((".yaml", ".yml"))]
    try:
        r = finetune(load_config(files, [a for a in argv if a not in files]))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = r["test"]
    print(f"test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, micro-F1 {t['micro_f1']:.4f} "
          f"(best val accuracy {r['best_val_accuracy']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
