"""The scorer's input pipeline: shards streamed in chunks, frames decoded in DataLoader workers.

``ShardChunks`` is an ``IterableDataset`` over one job's shards. Each worker takes whole shards (shard ``i`` goes to
worker ``i % workers``) and streams each one in *chunks*: consecutive samples, checked by
``videomask.data.sample_geometry`` and with their JPEG frames decoded into one uint8 tensor, until the chunk holds at
least ``frames_per_chunk`` frames. A shard is never held whole in memory, and the model (in the main process) never
waits on JPEG decoding when ``workers >= 1``.

Chunk boundaries depend only on the shard's content, so the frames a CLIP forward pass sees together are the same
whatever the number of workers, ranks or partitions: the scored output is byte-identical for any of them.

``vocabulary`` reads only the ``.json`` members of every shard (the tar is seeked past the frames): the sorted
words that ``Scorer.word_table`` embeds in fixed chunks, for the same reason (see ``score.py``).
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import torch

from ..data import (
    ErrorCounter,
    SampleError,
    frame_names,
    safe_decode,
    sample_geometry,
    tar_samples,
)
from .. import tarstream, urls
from ..files import loads_json
from ..jpeg import decode_frames


class FatalInput(Exception):
    """A sample that stops the whole scoring (already scored without --rescore; frames without a CLIP model)."""


def vocabulary(paths: list[Path], shards: list[dict] | None = None, cache: Path | None = None) -> set[str]:
    """Lowercased words of every sample's ``.json`` in ``paths`` (unreadable shards and members are skipped
    here: the scoring pass reports them). With ``shards`` (their input-manifest entries: ``sha256``,
    ``samples``) and a ``cache`` folder, each shard's words are kept in ``cache/SHA256.json`` and read from
    there next time: a rerun after a crash, or a partition of a job array starting after another, does not
    read the shards' JSON again. Only a shard read whole is cached: to its end, with as many ``.json``
    members as the manifest's count (a cut shard may be mended later and keep its sha256)."""
    words = set()
    for k, path in enumerate(paths):
        kept = cache / f"{shards[k]['sha256']}.json" if cache is not None and shards else None
        if kept is not None and kept.exists():
            try:
                entry = json.loads(kept.read_text())
                if isinstance(entry, list) and all(isinstance(w, str) for w in entry):
                    words.update(entry)
                    continue
            except (OSError, ValueError):  # a damaged cache entry: read the shard again (and rewrite it)
                pass
        mine, complete, n_json = _shard_words(path)
        words |= mine
        if kept is not None and complete and n_json == shards[k]["samples"]:
            try:  # best effort, and safe beside another partition writing the same entry
                kept.parent.mkdir(parents=True, exist_ok=True)
                tmp = kept.with_name(f"{kept.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(sorted(mine)))
                os.replace(tmp, kept)
            except OSError:
                pass
    return words


def _shard_words(path: Path) -> tuple[set[str], bool, int]:
    """(words, whether the shard was read to its end, its ``.json`` members)."""
    words, n_json = set(), 0
    if urls.is_url(str(path)):  # a stream cannot seek: every member is read
        return _streamed_words(str(path))
    try:
        with tarfile.open(path, mode="r:") as tar:  # random access: seeks past the frames' data
            for m in tar:
                if m.isreg() and m.name.endswith(".json"):
                    n_json += 1
                    try:
                        meta = json.loads(tar.extractfile(m).read())
                        words.update(w["w"].lower() for w in meta.get("words", []) if isinstance(w.get("w"), str))
                    except (ValueError, AttributeError, TypeError, RecursionError):  # the scoring pass reports it
                        continue
    except (tarfile.TarError, OSError, EOFError):
        return words, False, n_json
    return words, True, n_json


def _streamed_words(url: str) -> tuple[set[str], bool, int]:
    words, n_json = set(), 0
    try:
        for name, problem, data in tarstream.members(url):
            if problem is None and name.endswith(".json"):
                n_json += 1
                try:
                    meta = loads_json(data)
                    words.update(w["w"].lower() for w in meta.get("words", []) if isinstance(w.get("w"), str))
                except (ValueError, AttributeError, TypeError):  # the scoring pass reports it
                    continue
    except (tarfile.TarError, OSError, EOFError):
        return words, False, n_json
    return words, True, n_json


class ShardChunks(torch.utils.data.IterableDataset):
    """Chunks of ``shards`` (``[(name, path), ...]``): dicts with ``shard`` (name), ``samples``
    (``[(key, members, meta)]``), ``frames`` (uint8 ``[N, 3, S, S]`` or None), ``spans`` (each sample's frame range),
    ``errors`` (samples refused, as ``errors.jsonl`` lines), ``last`` (the shard's final chunk: every shard ends
    with one, even an empty or unreadable shard) and ``fatal`` (a message that must stop the job, or None)."""

    def __init__(self, shards: list[tuple[str, Path]], size: int | None, frames_per_chunk: int, rescore: bool,
                 have_clip: bool):
        self.shards, self.size, self.frames_per_chunk = shards, size, max(1, frames_per_chunk)
        self.rescore, self.have_clip = rescore, have_clip
        self.samples_per_chunk = 256  # text-only shards: a chunk is bounded in samples too

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for i, (name, path) in enumerate(self.shards):
            if i % workers == worker:
                yield from self.chunks(name, path)

    def chunks(self, name: str, path: Path):
        handler = ErrorCounter(strict=False, verbose=False)
        chunk, grid, size = self._empty(name), None, self.size
        for raw in tar_samples([{"url": str(path)}], handler):
            key = raw["__key__"]
            try:
                s = safe_decode(raw)
                size, grid = sample_geometry(s, size, grid)
                meta = s["json"]
                if "scores" in meta and not self.rescore:
                    raise FatalInput(f"{urls.redact(path)}: sample {key} is already scored (anchors "
                                     f"{meta['scores'].get('anchors_hash')}); pass --rescore to replace its scores")
                names = frame_names(s)
                if names and not self.have_clip:
                    raise FatalInput(f"{urls.redact(path)}: sample {key} has frames, and patch scores need a CLIP model: give "
                                     "--clip as well as --text-encoder")
                frames = decode_frames([s[n] for n in names]) if names else None
            except FatalInput as e:
                yield {**self._empty(name), "fatal": str(e), "last": True}
                return
            except SampleError as e:
                chunk["errors"].append(_error(path, key, f"{e.reason}: {e}"))
                continue
            except Exception as e:  # JPEG data that breaks after a good header: reported, never silently dropped
                chunk["errors"].append(_error(path, key, f"{type(e).__name__}: {e}"))
                continue
            members = [(k, v) for k, v in raw.items() if not k.startswith("__")]
            chunk["samples"].append((key, members, meta))
            start = chunk["spans"][-1][1] if chunk["spans"] else 0  # the frames in the chunk so far
            end = start + (len(frames) if frames is not None else 0)
            chunk["spans"].append((start, end))
            if frames is not None:
                chunk["frames"].append(frames)
            if end >= self.frames_per_chunk or len(chunk["samples"]) >= self.samples_per_chunk:
                yield self._finish(chunk)
                chunk = self._empty(name)
        for reason, message in handler.examples.items():  # the shard itself: missing, not a tar, or cut short
            chunk["errors"].append(_error(path, None, f"{reason}: {message}"))
        yield {**self._finish(chunk), "last": True}

    @staticmethod
    def _empty(name):
        return {"shard": name, "samples": [], "frames": [], "spans": [], "errors": [], "last": False, "fatal": None}

    @staticmethod
    def _finish(chunk):
        # [N, 3, S, S], contiguous: the layout the CLIP forward has always had (its rounding depends on it)
        chunk["frames"] = torch.cat(chunk["frames"]).contiguous() if chunk["frames"] else None
        return chunk


def _error(path, key, reason):
    return {"source": urls.redact(path), "key": key, "stage": "score", "reason": reason}


def as_is(item):
    """The DataLoader's collate_fn: chunks are batches already."""
    return item
