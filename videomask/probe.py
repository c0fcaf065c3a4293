"""The zero-shot domain probe: ``python -m videomask.probe RUN SHARDS [--split test] [--anchors anchors.json]``.

What did continued pretraining teach about the target domain? Two label-free measures on
held-out samples (docs/method.md §10), seconds to run, the same inputs for every model:

- ``mlm``: masked-token accuracy on held-out target transcripts (frames visible). A share
  ``--ratio`` of each sample's word tokens is replaced by the mask token, chosen by a generator
  seeded from (``--seed``, sample key): every model is asked the same questions. Reported for
  all masked tokens, and apart for tokens of anchor words and of other words (``--anchors``).
- ``cloze``: samples whose metadata has a ``cloze`` field (the synthetic world: ``{"prompt":
  "a {mask} hexagon", "answer": "violet", "choices": [colour words], "group": "target"}``)
  read the prompt, with the mask token in place of ``{mask}``, beside their frames; the
  prediction is the choice whose (first) token the model rates highest. The transcript is not
  read, so the answer must come from the frames. Reported overall and per group (target vs
  general colours).

Writes ``--out`` (default ``RUN/probe_SPLIT.json``): the figures and one row per asked item
(key, kind, group, correct; a masked token's position in its tokenised text as ``index``), which the ablation harness pairs across conditions for its
confidence intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import data, masking, urls
from .collate import batch_word_ids, sample_generator
from .errors import DataError, VideomaskError
from .model import TextMLM, build_model, load_run, load_tokenizer


def _logits(model, ids, attn, frames=None) -> torch.Tensor:
    """MLM logits over the text positions [B, L, V] (on the CPU), frames (if any) visible and unmasked."""
    dev = next(model.parameters()).device
    ids, attn = ids.to(dev), attn.to(dev)
    if isinstance(model, TextMLM):
        return model.mlm(input_ids=ids, attention_mask=attn).logits.cpu()
    frames = None if frames is None else frames.to(dev)
    fv = None if frames is None else torch.ones(frames.shape[:2], dtype=torch.bool, device=dev)
    out, _ = model.joint(ids, attn, frames, fv)
    return model.head(out[:, :ids.shape[1]]).cpu()


def _frames(samples):
    if any(s.get("frames") is None for s in samples):
        return None
    return torch.stack([s["frames"] for s in samples])


def mlm_items(model, tok, samples, anchors: set, ratio: float, seed: int, max_len: int) -> list[dict]:
    enc = tok([s["text"] for s in samples], padding=True, truncation=True, max_length=max_len,
              return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    word_ids = batch_word_ids(enc["offset_mapping"], [s["words"] for s in samples])
    words = word_ids >= 0  # word tokens only: punctuation is not asked
    if not words.any():
        return []
    gens = [sample_generator(seed, 0, s["key"], "probe") for s in samples]
    ratio_rows = words.sum(1)
    mask = torch.zeros_like(words)
    rows = (ratio_rows * ratio).round() >= 1  # a sample too short for one mask is not asked
    if rows.any():
        mask[rows] = masking.select("random", None, words[rows], ratio, [g for g, r in zip(gens, rows) if r])
    ids = enc["input_ids"].masked_fill(mask, tok.mask_token_id)
    with torch.no_grad():
        pred = _logits(model, ids, enc["attention_mask"], _frames(samples)).argmax(-1)
    items = []
    for b, i in mask.nonzero().tolist():
        w = samples[b]["words"][int(word_ids[b, i])]["w"].lower()
        items.append({"key": samples[b]["key"], "kind": "mlm", "group": "anchor" if w in anchors else "other",
                      "index": i, "correct": bool(pred[b, i] == enc["input_ids"][b, i])})
    return items


def cloze_items(model, tok, samples) -> list[dict]:
    samples = [s for s in samples if isinstance(s["meta"].get("cloze"), dict)]
    if not samples:
        return []
    prompts = [s["meta"]["cloze"]["prompt"].format(mask=tok.mask_token) for s in samples]
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = _logits(model, enc["input_ids"], enc["attention_mask"], _frames(samples))
    items = []
    for b, s in enumerate(samples):
        c = s["meta"]["cloze"]
        pos = (enc["input_ids"][b] == tok.mask_token_id).nonzero().flatten()
        if len(pos) != 1:
            raise DataError(f"sample {s['key']}: its cloze prompt must hold one {{mask}}, got {c['prompt']!r}")
        best = _best(tok, logits[b, int(pos[0])], c["choices"])
        items.append({"key": s["key"], "kind": "cloze", "group": c.get("group", "all"), "correct": best == c["answer"],
                      "pred": best})
        if c.get("group_choices"):  # the same cloze among the answer's own group only (violet vs turquoise)
            best = _best(tok, logits[b, int(pos[0])], c["group_choices"])
            items.append({"key": s["key"], "kind": "cloze_in_group", "group": c.get("group", "all"),
                          "correct": best == c["answer"], "pred": best})
    return items


def _best(tok, logits: torch.Tensor, choices: list) -> str:
    """The choice whose first token the model rates highest at a masked position (``logits`` [V])."""
    ids = [tok(ch, add_special_tokens=False)["input_ids"][0] for ch in choices]
    return choices[int(logits[ids].argmax())]


def summary(items: list[dict]) -> dict:
    out = {}
    for kind in sorted({i["kind"] for i in items}):
        rows = [i for i in items if i["kind"] == kind]
        out[kind] = {"accuracy": float(np.mean([i["correct"] for i in rows])), "n": len(rows)}
        for g in sorted({i["group"] for i in rows}):
            sub = [i["correct"] for i in rows if i["group"] == g]
            out[kind][f"{g}_accuracy"], out[kind][f"n_{g}"] = float(np.mean(sub)), len(sub)
    return out


def probe(run, shards, split: str = "test", anchors=None, ratio: float = 0.15, seed: int = 0, batch_size: int = 16,
          max_len: int = 64, out=None, progress: bool = False, device: str = "cpu") -> dict:
    """Run both measures on ``split`` of ``shards`` with the model of ``run``; see the module docstring.
    ``device``: ``cpu``, ``cuda``, or ``auto`` (CUDA when available); fp32 either way. Writes ``out``
    (default ``RUN/probe_SPLIT.json``)."""
    run = Path(run)
    model, cfg = load_run(run)
    result = {"run": str(run), **probe_model(model, load_tokenizer(cfg), shards, split, anchors, ratio, seed,
                                             batch_size, max_len, progress, device)}
    out = Path(out) if out else run / f"probe_{split}.json"
    out.write_text(json.dumps(result, indent=1))
    return result


def released(model_cfg, init_seed: int = 0) -> tuple:
    """(model, tokenizer) of a base model that has no run folder (``model.init`` empty: the model as its config
    builds it, e.g. a released text encoder whose masked-LM head is untrained), its untrained parts drawn from
    ``init_seed``, as fine-tuning draws them from its seed."""
    torch.manual_seed(init_seed)
    tok = load_tokenizer(model_cfg)
    return build_model(model_cfg, len(tok)), tok


def probe_released(model_cfg, shards, split: str = "test", anchors=None, init_seed: int = 0, out=None, **kw) -> dict:
    """``probe`` of ``released(model_cfg, init_seed)``. ``kw``: as ``probe_model``. Writes ``out`` if given."""
    model, tok = released(model_cfg, init_seed)
    result = {"run": None, **probe_model(model, tok, shards, split, anchors, **kw)}
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def probe_model(model, tok, shards, split: str = "test", anchors=None, ratio: float = 0.15, seed: int = 0,
                batch_size: int = 16, max_len: int = 64, progress: bool = False, device: str = "cpu") -> dict:
    """``probe`` of a model in memory (a ``TextMLM`` or a video model) with its tokenizer; nothing is written."""
    try:
        urls = data.shard_urls(shards, split)
    except FileNotFoundError:
        raise DataError(f"{shards}: no {split!r} split to probe on (the probe reads held-out target "
                         "samples: build the shards with a test or val split)") from None
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    model.to(device).eval()
    anchor_words = set()
    if anchors:
        from . import anchors as anchors_mod

        anchor_words = {a["word"] for a in anchors_mod.load(anchors)["anchors"]}
    items, batch = [], []
    pipe = data.dataset(urls, frames=not isinstance(model, TextMLM), split_by_node=False,
                        handler=data.ErrorCounter(strict=True))

    def flush():
        items.extend(mlm_items(model, tok, batch, anchor_words, ratio, seed, max_len))
        items.extend(cloze_items(model, tok, batch))
        batch.clear()

    torch.manual_seed(seed)
    for s in tqdm(pipe, desc="probe", unit="sample", disable=not progress):
        batch.append(s)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not items:
        raise DataError(f"{shards} ({split}): no sample had words or a cloze to probe")
    return {"shards": str(shards), "split": split, "ratio": ratio, "seed": seed,
            "anchors": str(anchors) if anchors else None, **summary(items), "items": items}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished training run (model.safetensors + model_config.json)")
    p.add_argument("shards", type=urls.location, help="target shards with a held-out split (a folder or a URL: videomask.urls)")
    p.add_argument("--split", default="test")
    p.add_argument("--anchors", type=Path, help="anchors.json: report anchor words apart from the others")
    p.add_argument("--ratio", type=float, default=0.15, help="share of word tokens masked (default 0.15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA when available)")
    p.add_argument("--out", type=Path, help="default: RUN/probe_SPLIT.json")
    a = p.parse_args(argv)
    try:
        r = probe(a.run, a.shards, a.split, a.anchors, a.ratio, a.seed, a.batch_size, out=a.out, progress=True,
                  device=a.device)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind in ("mlm", "cloze"):
        if kind in r:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r[kind].items() if k.endswith("accuracy"))
            print(f"{kind}: {parts} ({r[kind]['n']} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
