"""Read videomask shards: composable webdataset stages, safe decoding only.

    pipe = videomask.data.dataset("out/shards", split="train")      # a wds.DataPipeline
    for s in pipe:
        s["frames"]   # uint8 [T, 3, S, S] (None for text-only samples)
        s["text"], s["words"], s["meta"], s["key"]

The stages (each a plain generator function or webdataset filter, usable alone):
shard list (``SimpleShardList``, or ``ResampledShards`` for multi-node training)
-> ``split_by_node`` -> ``split_by_worker`` -> ``tarfile_to_samples`` ->
``safe_decode`` -> ``to_sample``.

Safety: only JPEG, JSON, UTF-8 text and ``.npy`` (``allow_pickle=False``) are
decoded. A member with any other extension (``.pyd``, ``.pickle``, ``.pth``...)
makes the sample fail: a shard from the internet can never run code here.

Errors are a parameter (``ErrorCounter``): in training mode a corrupt sample or
a truncated tar is skipped and counted; in strict mode it raises.
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from .errors import DataError, MissingError

FRAME_RE = re.compile(r"^f(\d{3,})\.jpe?g$")
SAFE_EXTS = {"jpg", "jpeg", "json", "txt", "npy"}


class UnsafeMemberError(DataError):
    pass


class ErrorCounter:
    """A webdataset ``handler``: counts and skips (``strict=False``) or raises (``strict=True``)."""

    def __init__(self, strict: bool = False, verbose: bool = True, max_messages: int = 10):
        self.strict, self.verbose, self.max_messages = strict, verbose, max_messages
        self.counts: Counter = Counter()

    def __call__(self, exn: Exception) -> bool:
        if self.strict:
            raise exn
        self.counts[type(exn).__name__] += 1
        if self.verbose and sum(self.counts.values()) <= self.max_messages:
            print(f"videomask.data: skipped ({type(exn).__name__}: {str(exn)[:300]})")
        return True  # continue with the next sample / shard

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())


def shard_urls(path, split: str | None = None) -> list[str]:
    """Shard paths from a shard folder's ``manifest.json`` (optionally one split), a single .tar,
    a brace pattern, or a list. An empty result is an error naming the place looked at."""
    if isinstance(path, (list, tuple)):
        urls = [str(p) for p in path]
    else:
        p = Path(path)
        if p.is_dir():
            mf = p / "manifest.json"
            if mf.exists():
                manifest = json.loads(mf.read_text())
                urls = [str(p / s["name"]) for s in manifest["shards"] if split is None or s["split"] == split]
            else:
                urls = sorted(str(x) for x in p.glob(f"{split}-*.tar" if split else "*.tar"))
        else:
            urls = list(wds.shardlists.expand_urls(str(path)))
    if not urls:
        raise MissingError(f"no shards found at {path}" + (f" for split {split!r}" if split else ""))
    return urls


def frame_names(members) -> list[str]:
    """The frame members (``f000.jpg``, ``f001.jpg``, ...) of a sample, in frame order."""
    return sorted((n for n in members if FRAME_RE.match(n)), key=lambda n: int(FRAME_RE.match(n).group(1)))


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 [H, W, 3] (libjpeg-turbo through Pillow)."""
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # JPEG only: no format sniffing
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


def safe_decode(sample: dict) -> dict:
    """Decode the members of one raw webdataset sample; refuse anything that could execute code."""
    out = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        ext = _ext(name)
        if ext not in SAFE_EXTS:
            raise UnsafeMemberError(
                f"{sample.get('__url__')}: sample {sample.get('__key__')} has member '.{name}', which videomask "
                f"refuses to decode (allowed: {', '.join(sorted(SAFE_EXTS))}); pickles can run code")
        if ext == "json":
            out[name] = json.loads(value)
        elif ext == "txt":
            out[name] = value.decode("utf-8")
        elif ext == "npy":
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
        else:
            out[name] = value  # JPEG bytes: decoded together in to_sample
    return out


def to_sample(sample: dict, frames: bool = True) -> dict:
    """Decoded members -> ``{"key", "frames", "text", "words", "meta", ...arrays}``.
    ``frames=False`` leaves the JPEGs undecoded (``frames`` is None): for text-only consumers."""
    meta = sample.get("json")
    if not isinstance(meta, dict):
        raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no .json metadata")
    names = frame_names(sample)
    expected = len(meta.get("frame_indices", []))
    if len(names) != expected:
        raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has {len(names)} frames, "
                         f"its metadata lists {expected} (truncated shard?)")
    decoded = None
    if frames and names:
        first = decode_jpeg(sample[names[0]])
        buf = np.empty((len(names), *first.shape), dtype=np.uint8)  # filled in place: np.stack was 5x slower
        buf[0] = first
        for t, n in enumerate(names[1:], 1):
            buf[t] = decode_jpeg(sample[n])
        # [T, 3, S, S] uint8, a view of channels-last memory: batching copies it once, no need to here
        decoded = torch.from_numpy(buf).permute(0, 3, 1, 2)
    out = {"key": sample["__key__"], "url": sample.get("__url__"), "frames": decoded, "text": sample.get("txt", ""),
           "words": meta.get("words", []), "meta": meta}
    for name, value in sample.items():  # extra arrays, e.g. scores written by the scoring stage
        if isinstance(value, np.ndarray):
            out[name[:-4].replace(".", "_")] = value
    return out


def dataset(path, split: str | None = None, *, resampled: bool = False, shuffle: int = 0, seed: int = 0,
            handler: ErrorCounter | None = None, split_by_node: bool = True, frames: bool = True,
            shuffle_initial: int = 0) -> wds.DataPipeline:
    """The sample pipeline over ``path`` (see ``shard_urls``).

    ``resampled=True`` draws shards with replacement forever (multi-node training: every rank
    gets data, no epoch boundary); otherwise each shard is read once, split by node and worker.
    """
    handler = handler or ErrorCounter()
    urls = shard_urls(path, split)
    stages = [wds.ResampledShards(urls, seed=seed, deterministic=True) if resampled else wds.SimpleShardList(urls)]
    if not resampled:
        if split_by_node:
            stages.append(wds.split_by_node)
        stages.append(wds.split_by_worker)
    stages.append(wds.tarfile_to_samples(handler=handler))
    if shuffle:
        # seeded: the same order on a rerun; ``shuffle_initial``: samples buffered before the first is drawn
        stages.append(wds.shuffle(shuffle, initial=shuffle_initial or 100, seed=seed))
    stages += [wds.map(safe_decode, handler=handler), wds.map(partial(to_sample, frames=frames), handler=handler)]
    pipe = wds.DataPipeline(*stages)
    pipe.errors = handler
    return pipe


class Cached(torch.utils.data.IterableDataset):
    """Replays ``source`` from memory after one complete pass (a small dataset read every epoch: the tar
    reading and JPEG decoding happen once). An interrupted first pass is not kept; samples are shared
    between epochs, so consumers must not modify them in place (the collator copies what it changes)."""

    def __init__(self, source):
        super().__init__()
        self.source, self.samples = source, None

    def __iter__(self):
        if self.samples is not None:
            yield from self.samples
            return
        seen = []
        for s in self.source:
            seen.append(s)
            yield s
        self.samples = seen


class Windows:
    """A pipeline stage: a text-only sample longer than ``max_tokens`` (special tokens included) becomes
    windows of at most that many tokens, ``stride`` tokens overlapping, cut at word boundaries, instead of
    being truncated by the tokenizer. Each window keeps its words (offsets rebased) and their stored scores,
    and gets the key ``KEY#wJ`` (its own masks). Video samples pass unchanged (their frames tie the
    transcript). ``counts``: documents seen, documents windowed, windows made."""

    def __init__(self, tokenizer, max_tokens: int, stride: int = 32):
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        self.tokenizer, self.room = tokenizer, max_tokens - specials
        if self.room < 8:
            raise DataError(f"max_tokens {max_tokens} leaves {self.room} tokens per window: too few")
        self.stride = min(stride, self.room // 2)
        self.counts = Counter()

    def __call__(self, samples):
        for s in samples:
            self.counts["documents"] += 1
            if s.get("frames") is not None or not s.get("text"):
                yield s
                continue
            enc = self.tokenizer(s["text"], add_special_tokens=False, return_offsets_mapping=True)
            spans = enc["offset_mapping"]
            if len(spans) <= self.room:
                yield s
                continue
            self.counts["windowed"] += 1
            for j, (a, b) in enumerate(self._windows(s, spans)):
                self.counts["windows"] += 1
                yield self._cut(s, a, b, j)

    def _windows(self, s, spans):
        """Character spans [a, b) of the windows, each at most ``room`` tokens. A window starts at its first token,
        moved forward to the next word start if that token is inside a word, and ends before the word that does
        not fit whole: no word is split, and every word is in a window whole (the overlap holds the moved parts)."""
        starts = np.array([w["s"] for w in s["words"]] or [0])
        ends = np.array([w["e"] for w in s["words"]] or [0])

        def start_at(c):
            k = int(np.searchsorted(starts, c, side="right")) - 1
            if k >= 0 and starts[k] < c < ends[k]:  # inside word k: start with the next word
                return int(starts[k + 1]) if k + 1 < len(starts) else c
            return c

        def end_at(c):
            k = int(np.searchsorted(starts, c, side="right")) - 1
            return int(starts[k]) if k >= 0 and starts[k] < c < ends[k] else c

        out, i, n = [], 0, len(spans)
        while True:
            end = min(i + self.room, n)
            a = start_at(spans[i][0]) if i else 0
            if end == n:
                out.append((a, len(s["text"])))
                return out
            b = end_at(spans[end][0])
            if b <= a:  # one word longer than a window: cut inside it
                b = spans[end][0]
            out.append((a, b))
            i = max(end - self.stride, i + 1)

    @staticmethod
    def _cut(s, a, b, j):
        words, scores = [], []
        stored = s["meta"].get("word_scores")
        truth = s["meta"].get("word_truth")
        keep = [k for k, w in enumerate(s["words"]) if w["s"] >= a and w["e"] <= b]
        for k in keep:
            w = s["words"][k]
            words.append({**w, "s": w["s"] - a, "e": w["e"] - a})
        meta = {**s["meta"], "words": words}
        if stored is not None:
            meta["word_scores"] = [stored[k] for k in keep]
        if truth is not None:
            meta["word_truth"] = [truth[k] for k in keep]
        meta["window"] = {"of": s["key"], "index": j, "chars": [a, b]}
        return {**s, "key": f"{s['key']}#w{j}", "text": s["text"][a:b], "words": words, "meta": meta}
