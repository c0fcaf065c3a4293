"""Read videomask shards: composable webdataset stages, safe decoding only, every sample validated.

    pipe = videomask.data.dataset("out/shards", split="train")      # a wds.DataPipeline
    for s in pipe:
        s["frames"]   # uint8 [T, 3, S, S] (None for text-only samples)
        s["text"], s["words"], s["meta"], s["key"]

The stages (each a plain generator function or webdataset filter, usable alone):
shard list (``SimpleShardList``, or ``ResampledShards`` for multi-node training)
-> ``split_by_node`` -> ``split_by_worker`` -> ``tar_samples`` ->
``safe_decode`` -> ``Validate`` -> ``to_sample``.

Safety: only JPEG, JSON, UTF-8 text and ``.npy`` (``allow_pickle=False``) are
decoded. A member with any other extension (``.pyd``, ``.pickle``, ``.pth``...)
makes the sample fail: a shard from the internet can never run code here. Shard
names from a manifest and member names in a tar stay inside their folder.

``Validate`` checks each sample before anything is decoded or batched (see
``sample_geometry``): members regular files with safe names, frame count and size
against the metadata and the shard's stated size (read from the JPEG header, so a
"decompression bomb" is refused before it is decoded), words well-formed, score
lengths, shapes and values finite. The collator only sees valid samples.

Errors are a parameter (``ErrorCounter``): in training mode a bad sample or a
truncated tar is skipped and counted by reason; in strict mode it raises, naming
the shard and the key.
"""
from __future__ import annotations

import http.client
import io
import json
import math
import re
import tarfile
import unicodedata
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import webdataset as wds

from . import tarstream
from . import urls as urls_mod
from .errors import DataError, MissingError
from .jpeg import EncodedFrames, decode_frames, decode_jpeg, jpeg_size  # noqa: F401  (decode_jpeg: part of data's API)

FRAME_RE = re.compile(r"^f(\d{3,})\.jpe?g$")
SAFE_EXTS = {"jpg", "jpeg", "json", "txt", "npy"}
PIPELINE_KEYS = {"__key__", "__url__", "__local_path__", "__problems__"}  # what the stages themselves add
MAX_FRAME_SIDE = 4096  # a frame side above this is refused from its header when no size is stated


class SampleError(DataError):
    """One sample (or shard) that cannot be used; ``reason`` is the short name it is counted under."""

    def __init__(self, reason: str, message: str, count: int = 1):
        super().__init__(message)
        self.reason, self.count = reason, count  # count: the samples it stands for (a shard that broke off: those lost)


class UnsafeMemberError(SampleError):
    def __init__(self, message: str):
        super().__init__("unsafe_member", message)


class ErrorCounter:
    """A webdataset ``handler``: counts and skips (``strict=False``) or raises (``strict=True``).
    Counts are by reason (``SampleError.reason``, else the exception's type); ``seen``: samples read (and
    shards that broke off), the denominator of the skip fraction; ``examples``: each reason's first message."""

    def __init__(self, strict: bool = False, verbose: bool = True, max_messages: int = 10):
        self.strict, self.verbose, self.max_messages = strict, verbose, max_messages
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.seen = 0

    def __call__(self, exn: Exception) -> bool:
        if self.strict:
            raise exn
        reason = getattr(exn, "reason", type(exn).__name__)
        self.counts[reason] += getattr(exn, "count", 1)
        self.examples.setdefault(reason, str(exn)[:300])
        if self.verbose and sum(self.counts.values()) <= self.max_messages:
            print(f"videomask.data: skipped ({reason}: {str(exn)[:300]})")
            if sum(self.counts.values()) == self.max_messages:
                print("videomask.data: further skips are counted, not printed (totals at the end)")
        return True  # continue with the next sample / shard

    def reset(self):
        self.counts, self.examples, self.seen = Counter(), {}, 0

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{r} {n}" for r, n in self.counts.most_common())


def shard_urls(path, split: str | None = None) -> list[str]:
    """Shard paths or URLs (``videomask.urls``) from a shard folder's ``manifest.json`` (optionally one split), a
    single .tar, a brace pattern, or a list. A folder without a manifest: its ``*.tar`` (``{split}-*.tar``). An
    empty result is an error naming the place looked at."""
    if isinstance(path, (list, tuple)):
        urls = [str(p) for p in path]
    elif urls_mod.is_url(path) and urls_mod.names_shards(path):
        urls = list(wds.shardlists.expand_urls(path))
    elif urls_mod.is_url(path):  # a folder in a bucket or on a server
        manifest = manifest_at(path)
        if manifest is not None:
            urls = [urls_mod.join(path, s["name"]) for s in manifest["shards"] if split is None or s["split"] == split]
        else:
            urls = urls_mod.list_tars(path, f"{split}-*.tar" if split else "*.tar")
    else:
        p = urls_mod.local(path)
        if p.is_dir():
            mf = p / "manifest.json"
            if mf.exists():
                listed = [s["name"] for s in read_manifest(p)["shards"] if split is None or s["split"] == split]
                urls = [str(p / name) for name in listed]
            else:
                urls = sorted(str(x) for x in p.glob(f"{split}-*.tar" if split else "*.tar"))
        else:
            urls = list(wds.shardlists.expand_urls(str(path)))
    if not urls:
        raise MissingError(f"no shards found at {urls_mod.redact(path)}" + (f" for split {split!r}" if split else ""))
    return urls


def manifest_at(path) -> dict | None:
    """The checked manifest of the shard folder ``path`` (local or a URL folder), or None when it has none (a list
    of shards, a brace pattern, a single tar, a folder of bare tars)."""
    if isinstance(path, (list, tuple)):
        return None
    if urls_mod.is_url(path):
        if urls_mod.names_shards(path):
            return None
        text = urls_mod.read_text(urls_mod.join(path, "manifest.json"), missing_ok=True)
        return None if text is None else _checked_manifest(text, path, urls_mod.redact(urls_mod.join(path, "manifest.json")))
    return read_manifest(path) if (urls_mod.local(path) / "manifest.json").is_file() else None


def read_manifest(folder) -> dict:
    """A shard folder's ``manifest.json`` (a local folder or a URL one), checked: every shard listed once, by a
    name relative to the folder that stays inside it, with its split and sample count. A manifest is trusted no
    further than that."""
    if urls_mod.is_url(folder):
        where = urls_mod.join(folder, "manifest.json")
        return _checked_manifest(urls_mod.read_text(where), folder, urls_mod.redact(where))
    mf = urls_mod.local(folder) / "manifest.json"
    return _checked_manifest(mf.read_text(), urls_mod.local(folder), mf)


def _checked_manifest(text: str, folder, mf) -> dict:
    try:
        manifest = json.loads(text)
        shards = manifest["shards"]
        for s in shards:
            inside(folder, s["name"], mf)
            if not isinstance(s.get("samples", 0), int) or s.get("samples", 0) < 0:
                raise DataError(f"{mf}: shard {s['name']!r} has a sample count of {s.get('samples')!r}")
            s["split"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{mf}: not a videomask manifest ({type(e).__name__}: {e})") from None
    names = [s["name"] for s in shards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{mf}: shards listed more than once: {', '.join(twice[:5])}; refused (their samples would "
                        "be read twice)")
    return manifest


def inside(folder, name, listed_in):
    """``folder / name``, refused unless it stays inside ``folder`` (a manifest from elsewhere may list
    ``../x.tar`` or an absolute path, even one that points inside; symbolic links are resolved before the check).
    For a URL folder, ``videomask.urls.inside`` (a string)."""
    if urls_mod.is_url(folder):
        return urls_mod.inside(folder, name, listed_in)
    if not isinstance(name, str) or not name:
        raise DataError(f"{listed_in}: shard name {name!r} is not a file name")
    if Path(name).is_absolute():
        raise DataError(f"{listed_in}: shard {name!r} is an absolute path; names are relative to {folder}")
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path.parent != root and root not in path.parents:
        raise DataError(f"{listed_in}: shard {name!r} lies outside {folder}; refused")
    return Path(folder) / name


def stated_frame_size(path) -> int | None:
    """The frame side the shards at ``path`` were built with (their manifest's ``options.size``), or None."""
    try:
        manifest = manifest_at(path)
    except (DataError, OSError):  # the readers report an unusable manifest; the size is only a check
        return None
    size = manifest.get("options", {}).get("size") if isinstance(manifest, dict) and isinstance(
        manifest.get("options"), dict) else None
    return size if isinstance(size, int) and size > 0 else None


def expected_samples(path, urls: list[str]) -> dict:
    """url -> the sample count its manifest states (a shard folder's manifest; {} otherwise)."""
    manifest = manifest_at(path)
    if manifest is None:
        return {}
    join = urls_mod.join if urls_mod.is_url(path) else (lambda base, name: str(urls_mod.local(base) / name))
    listed = {join(path, s["name"]): s.get("samples", 0) for s in manifest["shards"]}
    return {u: listed[u] for u in urls if u in listed}


def split_key(name: str) -> tuple[str, str]:
    """A member name -> (sample key, member suffix), webdataset's convention: the key ends at the first dot
    of the file name (``dir/abc.f000.jpg`` -> ``dir/abc``, ``f000.jpg``)."""
    head, _, base = name.rpartition("/")
    key, dot, suffix = base.partition(".")
    return (f"{head}/{key}" if head else key), suffix


def tar_samples(sources, handler=None, expected: dict | None = None):
    """A stage: shards (dicts with ``url``, as ``SimpleShardList`` yields them) -> raw samples, members grouped by
    key as webdataset groups them. Unlike webdataset's reader, nothing is dropped unseen: a member that is not a
    regular file (link, device, folder, one over the size limit) is listed in the sample's ``__problems__``
    (``Validate`` refuses it); a shard that is not a tar or breaks off is reported to ``handler`` (the samples
    before the break are kept) as as many samples as its manifest entry says were lost (``expected``: url ->
    samples; 1 without one)."""
    handler = handler or ErrorCounter(strict=True)
    expected = expected or {}
    for source in sources:
        url = source["url"] if isinstance(source, dict) else str(source)
        shown = urls_mod.redact(url)  # what messages and samples carry: no credentials or signatures
        current, read = None, 0
        try:
            for name, problem, data in tarstream.members(url):
                key, suffix = split_key(name)
                if current is None or key != current["__key__"]:
                    if current is not None:
                        handler.seen += 1
                        read += 1
                        yield current
                    current = {"__key__": key, "__url__": shown}
                if problem is not None:
                    what = problem if problem.startswith("a member of") else f"not a regular file ({problem})"
                    current.setdefault("__problems__", []).append(f"member {name!r} is {what}")
                elif suffix in current:
                    current.setdefault("__problems__", []).append(f"member {name!r} appears twice")
                else:
                    current[suffix] = data
            if current is not None:
                handler.seen += 1
                read += 1
                yield current
            if read < expected.get(url, 0):  # whole, yet short of what its manifest says it holds
                lost = expected[url] - read
                handler.seen += lost
                if not handler(SampleError("unreadable_shard", f"{shown} holds {read} samples, its manifest says "
                                                               f"{expected[url]}: {lost} lost", lost)):
                    return
        except (tarfile.TarError, OSError, EOFError, http.client.HTTPException) as e:
            message = urls_mod.scrub(f"{type(e).__name__}: {e}", url)
            if isinstance(e, urls_mod.CommandFailed) and current is not None:  # the tar ended whole, then its
                handler.seen += 1  # command failed: the last sample is complete; the failure is still reported
                read += 1
                yield current
                lost = max(0, expected.get(url, 0) - read)
                what = "was read to its end, but"
            else:  # the sample being read when the shard broke off is lost too
                lost = max(1, expected.get(url, 0) - read)
                what = "is not a readable tar" if current is None else f"breaks off after sample {current['__key__']}"
            handler.seen += lost
            if not handler(SampleError("unreadable_shard", f"{shown} {what} ({message}); the samples read before it "
                                                           f"are kept, {lost} lost", lost)):
                return


def frame_names(members) -> list[str]:
    """The frame members (``f000.jpg``, ``f001.jpg``, ...) of a sample, in frame order."""
    return sorted((n for n in members if FRAME_RE.match(n)), key=lambda n: int(FRAME_RE.match(n).group(1)))


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


def safe_decode(sample: dict) -> dict:
    """Decode the members of one raw webdataset sample; refuse anything that could execute code."""
    out = {}
    for name, value in sample.items():
        if name in PIPELINE_KEYS:
            out[name] = value
            continue
        ext = _ext(name)
        if ext not in SAFE_EXTS:
            raise UnsafeMemberError(
                f"{sample.get('__url__')}: sample {sample.get('__key__')} has member '.{name}', which videomask "
                f"refuses to decode (allowed: {', '.join(sorted(SAFE_EXTS))}); pickles can run code")
        try:
            if ext == "json":
                out[name] = json.loads(value)
            elif ext == "txt":
                out[name] = value.decode("utf-8")
            elif ext == "npy":
                out[name] = load_npy(value)
            else:
                out[name] = value  # JPEG bytes: checked by Validate, decoded together in to_sample
        except RecursionError:
            raise SampleError("undecodable_member", f"{sample.get('__url__')}: sample {sample.get('__key__')} member "
                              f"{name!r} is nested too deep to read") from None
        except (ValueError, UnicodeDecodeError, EOFError, OSError) as e:  # a pickled (object) array is a ValueError
            raise SampleError("undecodable_member", f"{sample.get('__url__')}: sample {sample.get('__key__')} member "
                              f"{name!r} cannot be read ({type(e).__name__}: {str(e)[:200]})") from None
    return out


def load_npy(value: bytes) -> np.ndarray:
    """A ``.npy`` member, without pickles, and only if its header's shape and dtype match the bytes there (a header
    that claims 10^12 elements is refused before anything is allocated)."""
    f = io.BytesIO(value)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("an object array (pickles) is refused")
    need = math.prod(shape) * dtype.itemsize
    if need != len(value) - f.tell():
        raise ValueError(f"its header claims {shape} of {dtype} ({need:,} bytes), the member holds "
                         f"{len(value) - f.tell():,}")
    return np.load(io.BytesIO(value), allow_pickle=False)


#: the largest magnitude a stored score may have: it must survive the cast to float32
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= FLOAT32_MAX


def sample_geometry(s: dict, size: int | None = None, grid: tuple | None = None) -> tuple[int | None, tuple | None]:
    """Raise ``SampleError`` (naming the shard, the key and the problem) unless the safely decoded sample ``s`` is
    usable; frames are checked from their JPEG headers, nothing is decoded. ``size``: the frame side the shard
    states (or the stream's first); ``grid``: the stream's patch-score grid. Returns this sample's (size, grid)."""
    where = f"{s.get('__url__')}: sample {s.get('__key__')}"

    def bad(reason, message):
        raise SampleError(reason, f"{where} {message}")

    key = s.get("__key__")
    if not isinstance(key, str) or not key or "/" in key or "\\" in key or key.startswith("."):
        bad("unsafe_name", "has a member name with a folder, '..' or a leading dot: refused (members stay inside "
                           "their shard)")
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in key):  # control characters, bidi overrides
        bad("unsafe_name", f"has a key with control or formatting characters ({key.encode('unicode_escape')[:80]!r}): "
                           "refused (a key shows in logs and file names)")
    if s.get("__problems__"):
        bad("bad_member", "; ".join(s["__problems__"]))
    meta = s.get("json")
    if not isinstance(meta, dict):
        bad("bad_metadata", f"has no .json metadata object (got {type(meta).__name__})")
    text = s.get("txt")
    words = meta.get("words", [])
    if not isinstance(words, list):
        bad("bad_words", f"has 'words' of type {type(words).__name__}, not a list")
    if words and text is None:
        bad("missing_text", f"lists {len(words)} words but has no .txt transcript")
    text, previous = text or "", 0
    for i, w in enumerate(words):
        if not (isinstance(w, dict) and isinstance(w.get("w"), str) and type(w.get("s")) is int
                and type(w.get("e")) is int and previous <= w["s"] < w["e"] <= len(text)):
            bad("bad_words", f"word {i} ({str(w)[:80]}) is not {{'w': str, 's': start, 'e': end}} with ascending "
                             f"offsets inside its {len(text)}-character transcript")
        previous = w["s"]
    for name in ("word_scores", "word_truth"):
        v = meta.get(name)
        if v is not None and not (isinstance(v, list) and len(v) == len(words) and all(_number(x) for x in v)):
            bad("bad_word_scores", f"has {name} that are not {len(words)} finite numbers (one per word): "
                                   f"{type(v).__name__} of {len(v) if hasattr(v, '__len__') else '?'}")
    names = frame_names(s)
    indices = meta.get("frame_indices", [])
    if not isinstance(indices, list) or len(names) != len(indices):
        bad("frame_count", f"has {len(names)} frames, its metadata lists "
                           f"{len(indices) if isinstance(indices, list) else indices!r} (truncated shard?)")
    for name, v in s.items():
        if not isinstance(v, np.ndarray):
            continue
        if v.dtype.kind not in "fiub":
            bad("bad_patch_scores", f"member {name!r} has dtype {v.dtype}, not numbers")
        if name in ("patch_scores.npy", "patch_truth.npy"):
            if v.ndim != 3 or v.shape[0] != len(names) or (grid is not None and tuple(v.shape[1:]) != tuple(grid)):
                bad("bad_patch_scores", f"member {name!r} has shape {tuple(v.shape)}, not [{len(names)} frames, "
                                        f"{'gh, gw' if grid is None else ', '.join(map(str, grid))}]")
            if not np.isfinite(v).all():
                bad("bad_patch_scores", f"member {name!r} holds NaN or infinite values")
            grid = tuple(v.shape[1:])
    # frames last: each frame's size from its JPEG header, before anything is decoded
    own = None
    for n in names:
        try:
            wh = jpeg_size(s[n])
        except ValueError as e:
            bad("corrupt_frame", f"frame {n} is not a readable JPEG ({e})")
        want = (size, size) if size else (own or wh)
        if wh != want or max(wh) > MAX_FRAME_SIDE:
            stated = f"the shard's stated {size}x{size}" if size else (
                f"the stream's {want[0]}x{want[1]}" if wh != want else f"the limit of {MAX_FRAME_SIDE} px")
            bad("frame_size", f"frame {n} is {wh[0]}x{wh[1]} (from its header), not {stated}: refused before "
                              "decoding")
        own = wh
    return (own[0] if own else size), grid


class Validate:
    """A stage: ``sample_geometry`` on every sample (failures go to the handler: skipped and counted, or raised).
    The frame size and the patch grid a stream must keep: the shards' stated size, else the first sample's.
    ``unique_keys``: a key met a second time in the stream (the same sample in two shards) is refused too; off
    for resampled streams, which meet every sample again by design."""

    def __init__(self, size: int | None = None, handler: ErrorCounter | None = None, unique_keys: bool = True):
        self.size, self.grid, self.handler = size, None, handler or ErrorCounter(strict=True)
        self.unique_keys = unique_keys

    def __call__(self, samples):
        seen: dict[str, str] = {}
        for s in samples:
            try:
                size, grid = sample_geometry(s, self.size, self.grid)
                key = s.get("__key__")
                if self.unique_keys and key in seen:
                    raise SampleError("duplicate_key", f"{s.get('__url__')}: sample {key} was already read from "
                                                       f"{seen[key]}; a key names one sample")
            except SampleError as e:
                if self.handler(e):
                    continue
                return
            if self.unique_keys:
                seen[key] = s.get("__url__")
            self.size, self.grid = self.size or size, self.grid or grid
            yield s


def to_sample(sample: dict, frames: bool | str = True) -> dict:
    """A sample that ``Validate`` passed -> ``{"key", "frames", "text", "words", "meta", ...arrays}``.
    ``frames=False`` leaves the JPEGs out (``frames`` is None): for text-only consumers; ``frames="encoded"``
    keeps them undecoded (``jpeg.EncodedFrames``), for decoding on the training device (``data.decode=device``)."""
    meta = sample["json"]
    names = frame_names(sample)
    decoded = None
    if frames == "encoded" and names:
        decoded = EncodedFrames([sample[n] for n in names])
    elif frames and names:
        try:
            decoded = decode_frames([sample[n] for n in names])
        except ValueError as e:  # a JPEG whose header was fine and whose data is not
            raise SampleError("corrupt_frame", f"{sample.get('__url__')}: sample {sample.get('__key__')} has a "
                              f"frame that cannot be decoded ({type(e).__name__}: {str(e)[:150]})") from None
    out = {"key": sample["__key__"], "url": sample.get("__url__"), "frames": decoded, "text": sample.get("txt", ""),
           "words": meta.get("words", []), "meta": meta}
    for name, value in sample.items():  # extra arrays, e.g. scores written by the scoring stage
        if isinstance(value, np.ndarray):
            out[name[:-4].replace(".", "_")] = value
    return out


def dataset(path, split: str | None = None, *, resampled: bool = False, shuffle: int = 0, seed: int = 0,
            handler: ErrorCounter | None = None, split_by_node: bool = True, frames: bool | str = True,
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
    stages.append(partial(tar_samples, handler=handler, expected=expected_samples(path, urls)))
    if shuffle:
        # seeded: the same order on a rerun; ``shuffle_initial``: samples buffered before the first is drawn
        stages.append(wds.shuffle(shuffle, initial=shuffle_initial or 100, seed=seed))
    stages += [wds.map(safe_decode, handler=handler), Validate(stated_frame_size(path), handler, not resampled),
               wds.map(partial(to_sample, frames=frames), handler=handler)]
    return wds.DataPipeline(*stages)


def split_samples(rank: int, world: int):
    """A pipeline stage: sample i goes to process i % world (exact batch equivalence across world sizes)."""
    def stage(src):
        for i, s in enumerate(src):
            if i % world == rank:
                yield s
    return stage


def main(argv=None) -> int:
    """``videomask check SHARDS [--split S]``: read every sample as training would (frames decoded too); print
    each unusable one (shard, key, reason) and the totals. Exit status 1 when any was found."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m videomask.data", description=main.__doc__)
    p.add_argument("shards", help="a folder of shards (with manifest.json), a .tar, or a brace pattern")
    p.add_argument("--split", default=None, help="only this split of the manifest")
    a = p.parse_args(argv)
    counter = ErrorCounter(verbose=True, max_messages=sys.maxsize)
    try:
        n = sum(1 for _ in dataset(a.shards, a.split, handler=counter, split_by_node=False))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{counter.seen} samples read: {n} usable, {counter.skipped} skipped"
          + (f" ({counter.summary()})" if counter.skipped else ""))
    return 1 if counter.skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
