"""Batches for training: the sample pipeline of ``videomask.data``, long texts cut into windows, batched by the
masking collator, read through a ``DataLoader``; and what its stages counted, added up over the workers.

    loader = make_loader(cfg, cfg.data.train, "train", collate, rank, world, train=True)
    for batch in loader:          # one epoch; every item a batch, nothing else
        ...
    loader.skips.line()            # samples read and skipped (by reason), over every worker
    loader.counts                  # documents / windowed / windows, short_texts: this epoch, over every worker

A DataLoader worker can tell the main process something only through what it yields, so each batch
leaves its worker with the worker's running counts beside it, and each worker's stream ends with one
item of counts alone; ``Loader`` takes them off before a batch is handed on.
"""
from __future__ import annotations

import signal
from collections import Counter

import numpy as np
import torch
import webdataset as wds

from . import data
from .errors import DataError
from .jpeg import EncodedBatch

_REPORT = "_loader_report"  # the key a worker's counts travel under (never seen outside this module)


class SkipReport:
    """Samples read and skipped, by reason, added up over the DataLoader's workers (each reports its own
    cumulative counts; the latest report of each worker counts). ``epoch`` for the running epoch, ``total``
    over the run's epochs so far."""

    def __init__(self, max_fraction: float, min_samples: int = 200):
        self.max_fraction, self.min_samples = max_fraction, min_samples
        self.latest, self.total_seen, self.total = {}, 0, Counter()
        self.examples: dict[str, str] = {}
        self.failed: str | None = None  # the verdict of the last finished epoch (too_many's message), if any

    def update(self, worker: int, seen: int, counts: dict, examples: dict):
        self.latest[worker] = (seen, counts)
        for k, v in examples.items():
            self.examples.setdefault(k, v)

    def epoch(self) -> tuple[int, Counter]:
        seen, counts = 0, Counter()
        for n, c in self.latest.values():
            seen += n
            counts.update(c)
        return seen, counts

    def end_epoch(self) -> tuple[int, Counter]:
        """The finished epoch's (samples read, skips), judged (``failed``); the running counts start again."""
        seen, counts = self.epoch()
        self.total_seen += seen
        self.total.update(counts)
        self.latest = {}
        self.failed = self.too_many(seen, counts, finished=True)
        return seen, counts

    def read(self) -> tuple[int, Counter]:
        """Samples read and skips over the run so far (finished epochs and the running one)."""
        seen, counts = self.epoch()
        return seen + self.total_seen, counts + self.total

    def reasons(self, counts: Counter | None = None) -> str:
        """The three commonest skip reasons, with an example each."""
        counts = self.read()[1] if counts is None else counts
        return "commonest reasons: " + "; ".join(f"{r}: {n} (e.g. {self.examples.get(r, '?')})"
                                                 for r, n in counts.most_common(3))

    def too_many(self, seen: int, counts: Counter, finished: bool = False) -> str | None:
        """The message to stop with, or None: more than ``max_fraction`` of ``seen`` skipped (judged once
        ``min_samples`` were read, or at the end of an epoch)."""
        skipped = sum(counts.values())
        if not seen or (seen < self.min_samples and not finished) or skipped <= self.max_fraction * seen:
            return None
        return (f"{skipped} of {seen} samples read were skipped as unusable ({100 * skipped / seen:.1f}% > "
                f"data.max_skip_fraction={self.max_fraction}); {self.reasons(counts)}. Fix or rebuild the shards "
                "(`videomask check SHARDS` lists every bad sample), or raise data.max_skip_fraction")

    def line(self) -> str:
        seen, counts = self.read()
        n = sum(counts.values())
        return (f"{n} of {seen} samples read were skipped" + (f": {', '.join(f'{r} {k}' for r, k in counts.most_common())}"
                                                              if n else ""))


class Cached(torch.utils.data.IterableDataset):
    """Replays ``source`` from memory after one complete pass (a small dataset read every epoch: the tar
    reading and JPEG decoding happen once). An interrupted first pass is not kept; samples are shared
    between epochs, so consumers must not modify them in place (the collator copies what it changes)."""

    def __init__(self, source):
        super().__init__()
        self.source, self.samples = source, None
        self.dropped: set = set()  # keys found unusable after they were read (data.decode=device): not replayed

    def __iter__(self):
        if self.samples is not None:
            yield from self.samples
            return
        seen = []
        for s in self.source:
            seen.append(s)
            yield s
        self.samples = [s for s in seen if s["key"] not in self.dropped]

    def drop(self, keys):
        """Samples that turned out unusable downstream (frames no decoder reads): skipped and counted once, in the
        epoch that read them, like those the pipeline skips before the cache."""
        self.dropped.update(keys)
        if self.samples is not None:
            self.samples = [s for s in self.samples if s["key"] not in self.dropped]


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
        words = []
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


def report_stage(handler: data.ErrorCounter, windows: "Windows"):
    """A stage after batching: every batch carries its worker's running counts (samples read, skips by reason,
    an example per reason, windows), and the stream ends with one item of counts alone."""
    def stage(batches):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0

        def report():
            return {"worker": worker, "seen": handler.seen, "counts": dict(handler.counts),
                    "examples": dict(handler.examples), "windows": dict(windows.counts)}
        for b in batches:
            b[_REPORT] = report()
            yield b
        yield {_REPORT: report()}
    return stage


def ignore_stop_signals(worker_id: int):
    """DataLoader workers leave SIGTERM and SIGINT to the main process, which stops at a step's end and shuts them
    down: torchrun, Slurm and a terminal's Ctrl-C signal the whole process group, and a worker killed by it (torch's
    own SIGTERM handler in workers exits) would end the run with "DataLoader worker ... killed" instead."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Loader:
    """One epoch of batches per iteration (see the module docstring). ``skips``: a ``SkipReport`` over every
    worker and epoch; ``counts``: this epoch's documents, windows and too-short transcripts, over every
    worker; ``totals()``: the same over the run."""

    def __init__(self, pipe, workers: int, seed: int, handler: data.ErrorCounter, windows: "Windows",
                 max_skip_fraction: float, decode_device=None, cached: Cached | None = None):
        self.handler, self.windows, self.decode_device, self.cached = handler, windows, decode_device, cached
        self.skips = SkipReport(max_skip_fraction)
        self._decode_skips: Counter = Counter()  # this epoch's rows whose JPEGs the device could not decode
        self._windows: dict[int, dict] = {}  # each worker's latest window counts, this epoch
        self._short_texts = 0  # rows of this epoch too short to mask (the collator's count)
        self._past: Counter = Counter()
        pipe.append(report_stage(handler, windows))
        # its own generator: making an iterator draws a base seed from it, and from the global RNG without one, which
        # would shift dropout after a resume (the checkpoint restores the global RNG before the loop makes one)
        self.dataloader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=workers,
                                                      generator=torch.Generator().manual_seed(seed),
                                                      worker_init_fn=ignore_stop_signals)

    def __iter__(self):
        self._past += self.counts
        self._windows, self._short_texts, self._decode_skips = {}, 0, Counter()
        self.handler.reset()  # counts per epoch (DataLoader workers start from these copies)
        self.windows.counts = Counter()
        for item in self.dataloader:
            r = item.pop(_REPORT)
            self.skips.update(r["worker"], r["seen"], r["counts"], r["examples"])
            self._windows[r["worker"]] = r["windows"]
            if "input_ids" in item:  # else a worker's closing report
                self._short_texts += int(item.pop("short_texts", 0))
                if isinstance(item.get("frames"), EncodedBatch):
                    item = self.decode(item)
                    if item is None:
                        continue
                yield item

    def decode(self, batch: dict) -> dict | None:
        """``data.decode=device``: the batch's JPEGs decoded on ``decode_device``. A sample whose frames no decoder
        reads is dropped from the batch and counted as ``corrupt_frame`` with the loader's other skips (what the
        workers do when they decode); None when no row is left."""
        frames, bad = batch["frames"].decode(self.decode_device)
        batch["frames"] = frames
        if not bad:
            return batch
        for b, why in bad.items():
            msg = f"sample {batch['keys'][b]} has a frame that cannot be decoded on {self.decode_device} ({why})"
            self._decode_skips["corrupt_frame"] += 1
            h = self.handler
            if h.verbose and h.skipped + self._decode_skips["corrupt_frame"] <= h.max_messages:
                print(f"videomask.data: skipped (corrupt_frame: {msg})")
            self.skips.update("device", 0, dict(self._decode_skips), {"corrupt_frame": msg})
        if self.cached is not None:
            self.cached.drop(batch["keys"][b] for b in bad)
        keep = [b for b in range(len(batch["keys"])) if b not in bad]
        return take_rows(batch, keep) if keep else None

    @property
    def counts(self) -> Counter:
        c = Counter(short_texts=self._short_texts)
        for w in self._windows.values():
            c.update(w)
        return c

    def totals(self) -> Counter:
        return self._past + self.counts


def take_rows(batch: dict, rows: list[int]) -> dict:
    """The batch's rows ``rows``: every tensor and list with one entry per row (``keys``) indexed."""
    n = len(batch["keys"])
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() and v.shape[0] == n:
            v = v[torch.tensor(rows, device=v.device)]
        elif isinstance(v, list) and len(v) == n:
            v = [v[i] for i in rows]
        out[k] = v
    return out


def make_loader(cfg, folder: str, split: str, collate, rank: int, world: int, train: bool, device=None) -> Loader:
    """The ``Loader`` of ``split`` of ``folder`` for a ``TrainConfig``: shuffled and (optionally) resampled for
    training, split across processes by shard (or by sample, ``data.split_by``), unusable samples skipped and
    counted, long text-only documents as windows, the decoded samples cached when ``data.cache``. With
    ``data.decode=device`` the workers pass the JPEGs on undecoded and the loader decodes each batch on ``device``
    (the training process's)."""
    by_samples = cfg.data.split_by == "samples" and world > 1
    on_device = cfg.data.decode == "device"
    handler = data.ErrorCounter()  # unusable samples are skipped and counted by reason (videomask.data.Validate)
    pipe = data.dataset(folder, split or None, resampled=train and cfg.data.resampled, seed=cfg.run.seed,
                        shuffle=cfg.data.shuffle if train else 0, split_by_node=not by_samples, handler=handler,
                        frames="encoded" if on_device else True)
    if by_samples:
        pipe.append(data.split_samples(rank, world))
    # text-only documents longer than the context become overlapping windows (never silently truncated)
    windows = Windows(collate.tokenizer, cfg.data.max_text_len, cfg.data.window_stride)
    pipe.append(windows)
    cached = None
    if cfg.data.cache:  # decoded samples kept after the first pass; masks are still drawn per epoch in collate
        cached = Cached(pipe)
        pipe = wds.DataPipeline(cached)
    pipe.append(wds.batched(cfg.data.batch_size, collation_fn=collate, partial=not train))
    return Loader(pipe, cfg.data.workers, cfg.run.seed, handler, windows, cfg.data.max_skip_fraction,
                  decode_device=(device or "cpu") if on_device else None, cached=cached)

