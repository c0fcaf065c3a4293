"""Collate scored samples into masked batches: tokenise, map word scores to tokens, mask, 80/10/10.

    collate = MaskingCollator(tokenizer, MaskingConfig(strategy="difference"), patch_grid=(7, 7))
    batch = collate([sample, ...])  # samples as videomask.data yields them

``batch``: ``input_ids`` / ``attention_mask`` / ``labels`` (-100 wherever a token is not
masked) / ``text_mask`` ``[B, L]``; for video samples also ``frames`` uint8
``[B, T, 3, S, S]`` (a ``jpeg.EncodedBatch`` when the samples' frames are still JPEGs, ``data.decode=device``),
``frame_valid`` ``[B, T]`` and ``patch_mask`` ``[B, T, gh, gw]`` (True = masked); ``keys``. With
``text_only=True`` only the three keys a Hugging Face masked-LM takes, so the collator plugs into
``transformers.Trainer`` as it is.

Word scores are stored per word with character offsets; a fast tokenizer's offset
mapping gives each token the word it starts in, and the word's score. Tokens outside
any word (punctuation) are not ranked: neither difference-masking nor its inverse
chooses them first. Patch scores are resampled from the scorer's grid to the model's by
area interpolation. The ``oracle`` control reads ground truth the same way:
``meta["word_truth"]`` (1 for a truly domain-specific word) and ``patch_truth``
(``[T, gh, gw]``, the share of each patch that a domain-specific object covers).

Rows of plain text (a ``str``, or a dict with ``text`` and optionally ``word_scores``,
``key``, ``anchors_hash``: a Hugging Face ``datasets`` row) are turned into samples by
``text_sample``, so a ``datasets.Dataset`` feeds the collator inside ``transformers.Trainer``
directly; ``SetEpochCallback`` gives it a new epoch's masks each epoch there.

Randomness: every sample gets its own generators, seeded from (run seed, epoch,
sample key): the same configuration draws the same masks in every run, for any
worker count or batch composition, and after a resume.
"""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import torch
import torch.nn.functional as F

from . import masking
from .jpeg import EncodedBatch, EncodedFrames
from .masking import MaskingConfig, strategies


def sample_generator(seed: int, epoch: int, key: str, stream: str) -> torch.Generator:
    """A generator that depends only on (run seed, epoch, sample key, stream)."""
    digest = hashlib.sha256(f"{seed}|{epoch}|{key}|{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def word_ids_from_offsets(offsets: torch.Tensor, words: list[dict]) -> torch.Tensor:
    """For each token (character span ``offsets[i]``), the index of the word its first character lies
    in, or -1 (special tokens, padding, punctuation). ``offsets``: long [L, 2]."""
    return batch_word_ids(offsets[None], [words])[0]


def batch_word_ids(offsets: torch.Tensor, words: list[list[dict]]) -> torch.Tensor:
    """``word_ids_from_offsets`` for a batch: ``offsets`` [B, L, 2] -> long [B, L], one searchsorted."""
    n = max([len(w) for w in words] + [1])
    bounds = np.full((len(words), n, 2), np.iinfo(np.int64).max, dtype=np.int64)  # padding words start at +inf
    for b, ws in enumerate(words):
        if ws:
            bounds[b, :len(ws)] = [(w["s"], w["e"]) for w in ws]
    bounds = torch.from_numpy(bounds)
    s, e = offsets[..., 0].contiguous(), offsets[..., 1]
    j = torch.searchsorted(bounds[..., 0].contiguous(), s, right=True) - 1  # the last word starting at or before
    inside = (e > s) & (j >= 0)
    j = j.clamp(min=0)
    inside &= s < torch.gather(bounds[..., 1], 1, j)
    return torch.where(inside, j, torch.full_like(j, -1))


def resample_grid(scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch scores [T, gh, gw] -> [T, *grid] by area interpolation (averages when shrinking)."""
    scores = scores.float()
    if tuple(scores.shape[-2:]) == tuple(grid):
        return scores
    return F.interpolate(scores[:, None], size=grid, mode="area")[:, 0]


def too_short(valid: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose ``ratio`` of units rounds to none (a transcript of one to three tokens at 0.15) are left
    unmasked rather than stopping the run (``masking.budgets`` refuses them: pure functions don't guess).
    Returns the valid units with those rows emptied, and how many rows that was (the train loop reports it)."""
    n = valid.flatten(1).sum(1)
    short = (n > 0) & (masking.budget_sizes(n, ratio) == 0)
    if short.any():
        valid = valid.clone()
        valid[short] = False
    return valid, short.sum()


def apply_mlm(input_ids, mask, tokenizer, generators, mask_prob=0.8, random_prob=0.1):
    """BERT's rule on the chosen tokens: ``mask_prob`` -> mask token, ``random_prob`` -> a random
    token, the rest unchanged. Returns (inputs, labels) with labels -100 off the mask."""
    labels = input_ids.masked_fill(~mask, -100)
    u = masking.uniform(input_ids.shape, generators)
    rand_tok = torch.stack([torch.randint(len(tokenizer), input_ids.shape[1:], generator=g) for g in generators])
    inputs = input_ids.clone()
    inputs[mask & (u < mask_prob)] = tokenizer.mask_token_id
    swap = mask & (u >= mask_prob) & (u < mask_prob + random_prob)
    inputs[swap] = rand_tok[swap]
    return inputs, labels


def text_sample(row, key: str | None = None) -> dict:
    """A collator sample from plain text or a row (``datasets`` row, dict): ``text``; optionally ``word_scores``
    (one per word of ``videomask.prep.transcripts.text_words(text)``, as ``videomask.scoring.score.word_scorer``
    computes them), ``key`` / ``id`` (seeds the sample's masks; default: a hash of the text, so the same text
    gets the same masks in every run), ``anchors_hash`` (checked against the collator's)."""
    from .prep.transcripts import text_words

    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise masking.MaskingError(f"a text sample needs a 'text' string, got {type(row).__name__} "
                                   f"{str(row)[:80]!r}")
    text = row["text"]
    words = text_words(text)
    key = key or row.get("key") or row.get("id")
    key = str(key) if key is not None else hashlib.sha256(text.encode()).hexdigest()[:16]
    meta = {"words": words}
    if row.get("word_scores") is not None:
        if len(row["word_scores"]) != len(words):
            raise masking.MaskingError(f"sample {key}: {len(row['word_scores'])} word scores for {len(words)} words "
                                       "(scores must come from videomask.scoring.score.word_scorer on this text)")
        meta["word_scores"] = list(row["word_scores"])
    if row.get("anchors_hash"):
        meta["scores"] = {"anchors_hash": row["anchors_hash"]}
    return {"key": key, "text": text, "words": words, "meta": meta, "frames": None}


def set_epoch_callback(collator: "MaskingCollator"):
    """A ``transformers.TrainerCallback`` that calls ``collator.set_epoch`` as each epoch begins, so that
    ``Trainer`` draws new masks every epoch as ``videomask.train`` does. The DataLoader's workers get the new
    epoch only if they are started each epoch (``dataloader_persistent_workers=False``, the default)."""
    from transformers import TrainerCallback

    class SetEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.set_epoch(int(round(state.epoch or 0)))

    return SetEpochCallback()


class MaskingCollator:
    """See the module docstring. ``patch_grid``: the model's (gh, gw); default: the stored grid."""

    def __init__(self, tokenizer, config: MaskingConfig = MaskingConfig(), max_length: int = 128,
                 patch_grid: tuple[int, int] | None = None, anchors_hash: str | None = None, ngrams=None,
                 text_only: bool = False, epoch: int = 0):
        if tokenizer.mask_token is None:
            raise masking.MaskingError(f"tokenizer {tokenizer.name_or_path!r} has no mask token: it cannot be "
                                       "used for masked-token prediction")
        if not tokenizer.is_fast:
            raise masking.MaskingError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer: word scores "
                                       "are mapped to tokens through offset mappings, which only fast ones give")
        self.tokenizer, self.config, self.max_length = tokenizer, config, max_length
        self.patch_grid, self.anchors_hash, self.text_only, self.epoch = patch_grid, anchors_hash, text_only, epoch
        self.ngrams = ngrams
        self.plan = masking.plan(config)  # what each modality gets: the strategy's record, every parameter resolved
        if "ngrams" in self.plan.needs and ngrams is None:
            raise strategies.missing(config.strategy, "ngrams", "the collator (ngrams=)")

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __call__(self, samples: list) -> dict:
        """See the module docstring; plain-text rows are turned into samples first (``text_sample``)."""
        samples = [s if isinstance(s, dict) and "words" in s and "meta" in s else text_sample(s) for s in samples]
        return self.collate(samples)

    def check(self, s: dict):
        """Refuse a sample scored with other anchors, or without the values the strategy ranks by."""
        meta = s.get("meta", {})
        if self.anchors_hash is not None and "scores" in meta and meta["scores"].get("anchors_hash") != self.anchors_hash:
            raise masking.MaskingError(
                f"sample {s['key']} was scored with anchors {meta['scores'].get('anchors_hash')}, but the "
                f"configured anchors are {self.anchors_hash}: rescore the shards with these anchors")
        text, patches = self.plan.text.reads, self.plan.patches.reads
        if text and strategies.VALUE_KEYS[text][0] not in meta:
            raise strategies.missing(self.config.strategy, text, f"sample {s['key']}")
        if patches and s.get("frames") is not None and s.get(strategies.VALUE_KEYS[patches][1]) is None:
            raise strategies.missing(self.config.strategy, patches, f"sample {s['key']}")

    def _gens(self, samples, stream):
        return [sample_generator(self.config.seed, self.epoch, s["key"], stream) for s in samples]

    def text(self, samples):
        cfg = self.config
        # numpy, then torch: building tensors from the tokenizer's lists directly was 4 ms of 11 per batch
        enc = self.tokenizer([s["text"] for s in samples], padding=True, truncation=True, max_length=self.max_length,
                             return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="np")
        enc = {k: torch.from_numpy(v.astype(np.int64)) for k, v in enc.items()}
        valid = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
        word_ids = batch_word_ids(enc["offset_mapping"], [s["words"] for s in samples])
        word_ids[~valid] = -1
        gens = self._gens(samples, "text")
        side = self.plan.text
        context = {"word_ids": word_ids, "ngrams": self.ngrams, "words": [[w["w"] for w in s["words"]] for s in samples]}
        n_words = max([len(s["words"]) for s in samples] + [1])
        w_scores = self._word_values(samples, n_words, strategies.VALUE_KEYS[side.reads][0]) if side.reads else None
        if side.words:
            # words are the units: a word is kept only if its first token survived truncation
            w_valid = torch.zeros(len(samples), n_words, dtype=torch.bool)
            for b in range(len(samples)):
                w_valid[b, word_ids[b][word_ids[b] >= 0].unique()] = True
            w_valid, short = too_short(w_valid, cfg.text_ratio)
            w_mask = side.draw(w_scores, w_valid, gens, **{**context, "word_ids": None})
            mask = torch.gather(w_mask, 1, word_ids.clamp(min=0)) & (word_ids >= 0)
        else:
            valid, short = too_short(valid, cfg.text_ratio)
            scores = None
            if w_scores is not None:  # each token gets its word's value; punctuation is not ranked (word id -1)
                scores = torch.where(word_ids >= 0, torch.gather(w_scores, 1, word_ids.clamp(min=0)), 0.0)
            mask = side.draw(scores, valid, gens, **context)
        inputs, labels = apply_mlm(enc["input_ids"], mask, self.tokenizer, gens, cfg.mask_prob, cfg.random_prob)
        out = {"input_ids": inputs, "attention_mask": enc["attention_mask"], "labels": labels, "text_mask": mask,
               "short_texts": short}
        if all("word_truth" in s["meta"] for s in samples):  # diagnostics: which tokens are truly domain-specific
            wt = w_scores if side.reads == "truth" else self._word_values(samples, n_words, "word_truth")
            out["truth_tokens"] = (torch.gather(wt, 1, word_ids.clamp(min=0)) > 0) & (word_ids >= 0)
        return out

    @staticmethod
    def _word_values(samples, n_words, key):
        rows = [s["meta"][key] for s in samples]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        wrong = (lengths != np.fromiter((len(s["words"]) for s in samples), np.int64, len(rows))).nonzero()[0]
        if len(wrong):
            s = samples[wrong[0]]
            raise masking.MaskingError(f"sample {s['key']}: {len(s['meta'][key])} {key.replace('_', ' ')} for "
                                       f"{len(s['words'])} words")
        out = np.zeros((len(samples), n_words), dtype=np.float32)
        # one conversion of all the values, placed by a mask of the filled slots (row-major, as they come)
        out[np.arange(n_words)[None, :] < lengths[:, None]] = np.fromiter(itertools.chain.from_iterable(rows),
                                                                          dtype=np.float32, count=int(lengths.sum()))
        bad = np.isnan(out).any(1).nonzero()[0]
        if len(bad):
            raise masking.MaskingError(f"sample {samples[bad[0]]['key']}: its {key.replace('_', ' ')} contain NaN")
        return torch.from_numpy(out)

    def video(self, samples):
        has = [s.get("frames") is not None for s in samples]
        first = samples[has.index(True)]
        T, _, S, _ = first["frames"].shape
        side = self.plan.patches
        key = strategies.VALUE_KEYS[side.reads][1] if side.reads else None
        stored = first[key].shape[-2:] if key and first.get(key) is not None else (
            first["patch_scores"].shape[-2:] if first.get("patch_scores") is not None else None)
        grid = tuple(self.patch_grid or stored or (1, 1))
        for s in samples:
            if s.get("frames") is not None and (s["frames"].shape[1:] != (3, S, S) or s["frames"].shape[0] > T):
                raise masking.MaskingError(f"sample {s['key']}: frames {tuple(s['frames'].shape)} don't match the "
                                           f"batch's [{T}, 3, {S}, {S}]")
        if isinstance(first["frames"], EncodedFrames):  # data.decode=device: decoded by the loader in the training process
            frames = EncodedBatch([s["frames"] if h else None for s, h in zip(samples, has)], T, (S, S))
            frame_valid = torch.tensor([[h and t < s["frames"].shape[0] for t in range(T)] for s, h in zip(samples, has)],
                                       dtype=torch.bool)
        elif all(has) and all(s["frames"].shape[0] == T for s in samples):
            frames = torch.stack([s["frames"] for s in samples])  # the common case: one copy
            frame_valid = torch.ones(len(samples), T, dtype=torch.bool)
        else:
            frames = torch.zeros(len(samples), T, 3, S, S, dtype=torch.uint8)
            frame_valid = torch.zeros(len(samples), T, dtype=torch.bool)
            for b, s in enumerate(samples):
                if has[b]:
                    t = s["frames"].shape[0]
                    frames[b, :t], frame_valid[b, :t] = s["frames"], True
        valid = frame_valid[:, :, None, None].expand(-1, -1, *grid)
        scores = None
        if key:
            if all(has) and all(s[key].shape == (T, *stored) for s in samples):
                raw = np.stack([s[key] for s in samples]).astype(np.float32)
            else:
                raw = np.zeros((len(samples), T, *stored), dtype=np.float32)
                for b, s in enumerate(samples):
                    if has[b]:
                        raw[b, :s[key].shape[0]] = s[key]
            bad = np.isnan(raw).reshape(len(samples), -1).any(1).nonzero()[0]
            if len(bad):
                raise masking.MaskingError(f"sample {samples[bad[0]]['key']}: its {key.replace('_', ' ')} contain NaN")
            scores = resample_grid(torch.from_numpy(raw).flatten(0, 1), grid).view(len(samples), T, *grid)
        gens = self._gens([s for s, r in zip(samples, has) if r], "patch")
        if all(has):
            patch_mask = side.draw(scores, valid, gens)
        else:  # text-only samples of a mixed batch have no patches to mask
            rows = torch.tensor(has)
            patch_mask = torch.zeros_like(valid)
            patch_mask[rows] = side.draw(scores[rows] if scores is not None else None, valid[rows], gens)
        out = {"frames": frames, "frame_valid": frame_valid, "patch_mask": patch_mask}
        if all(has) and all(s.get("patch_truth") is not None and s["patch_truth"].shape[0] == T for s in samples):
            # diagnostics: how much of the truly domain-specific area each patch holds
            if key == "patch_truth":  # the oracle already ranked by it
                out["patch_truth"] = scores
            else:
                raw = torch.from_numpy(np.stack([s["patch_truth"] for s in samples]).astype(np.float32))
                out["patch_truth"] = resample_grid(raw.flatten(0, 1), grid).view(len(samples), T, *grid)
        return out

    def collate(self, samples: list[dict]) -> dict:
        for s in samples:
            self.check(s)
        batch = self.text(samples)
        if self.text_only:  # only what a Hugging Face masked-LM takes (rows too short to mask stay unmasked)
            return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        if any(s.get("frames") is not None for s in samples):
            batch.update(self.video(samples))
        batch["keys"] = [s["key"] for s in samples]
        return batch
