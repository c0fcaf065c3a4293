"""video2dataset shards as build input (WebVid, HowTo100M, Panda-70M ... are distributed this way).

video2dataset (tested against its release 1.3.0) writes WebDataset shards ``NNNNN.tar`` of samples
``KEY.mp4`` (the video: the member's extension is its ``encode_formats`` name, not necessarily the
container), ``KEY.txt`` (the caption) and ``KEY.json`` (the input row's columns, ``key``, ``status``,
``error_message``, ``yt_meta_dict`` with ``subtitles`` {language: [{start, end, lines}]} when it asked
for them), with ``NNNNN.parquet`` and ``NNNNN_stats.json`` beside. A failed download is written too: its
``status`` is ``failed_to_download`` (or ``failed_to_subsample``) and it has no video member.

``detect(src)`` recognises such input from its members (the first ``.json`` member holds ``status`` and
``key``), locally or at a ``videomask.urls`` URL. ``discover`` lists one ``Input`` per successful sample
(each shard is read once for its metadata: seeking past the videos for a local tar, streamed otherwise)
and one error per other sample, so every sample is accounted for; ``with_videos`` then streams each
shard once more and hands each input its video bytes just before it is decoded. A video's transcript is
its timed subtitles when there are some, else its caption, which describes the whole video and is
therefore the text of each of its clips (``timing: "caption"`` in the sample's metadata).
"""
from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import tarstream, urls
from ..errors import DataError
from ..files import loads_json
from .inputs import Input
from .transcripts import Cue, _clean

#: the members video2dataset writes as the video (its ``encode_formats["video"]``)
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "mov", "avi", "m4v", "flv", "ts", "mpg", "mpeg", "gif")
#: metadata fields not copied into each clip's metadata: the status is known (success), the YouTube dump is large
DROPPED_FIELDS = ("status", "error_message", "yt_meta_dict", "key", "caption")


def shards_of(src) -> list[str]:
    """The tar shards of ``src``: a local folder (its ``*.tar``), a local ``.tar``, or a URL (a folder, a brace
    pattern, a single ``.tar`` or ``pipe:``)."""
    from ..data import shard_urls

    if not urls.is_url(src):
        p = urls.local(src)
        if p.is_dir():
            return sorted(str(x) for x in p.glob("*.tar"))
        return [str(p)] if p.suffix == ".tar" else []
    return shard_urls(src)


def detect(src) -> bool:
    """Whether ``src`` holds video2dataset shards: its first shard's first ``.json`` member is an object with
    ``status`` and ``key``. A folder without tars, or tars of another layout, is not."""
    shards = shards_of(src)
    if not shards:
        return False
    try:
        for name, problem, data in tarstream.members(shards[0]):
            if problem is None and name.endswith(".json"):
                meta = loads_json(data)
                return isinstance(meta, dict) and "status" in meta and "key" in meta
    except (tarfile.TarError, ValueError):  # not a tar, or not JSON: another kind of input
        return False
    except OSError as e:  # unreachable, refused, expired credentials: said as such, not as "not video2dataset"
        raise DataError(f"{urls.redact(shards[0])}: cannot be read ({urls.scrub(str(e), shards[0])})") from None
    return False


def _key_ext(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key is everything before the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _listing(url: str) -> Iterator[tuple[str, dict]]:
    """``(key, {"json": bytes, "txt": bytes, "video": member name, "problems": [...]})`` per sample of a shard,
    in tar order; video bytes are not kept (a local tar seeks past them)."""
    current, sample = None, {}
    if urls.is_url(url):
        it = ((n, p, d if _key_ext(n)[1] in ("json", "txt") else None) for n, p, d in tarstream.members(url))
    else:
        it = _local_members(url)
    for name, problem, data in it:
        key, ext = _key_ext(name)
        if key != current:
            if current is not None:
                yield current, sample
            current, sample = key, {"problems": []}
        if problem is not None:
            sample["problems"].append(f"member {name!r} is {problem}")
        elif ext in ("json", "txt"):
            sample[ext] = data
        elif ext in VIDEO_MEMBERS:
            sample["video"] = name
    if current is not None:
        yield current, sample


def _local_members(path: str):
    with tarfile.open(path, mode="r:") as tar:  # random access: the videos' data is skipped, not read
        for m in tar:
            if not m.isfile():
                yield m.name, "not a regular file", None
            elif m.size > tarstream.MAX_MEMBER:
                yield m.name, f"a member of {m.size:,} bytes, more than the limit of {tarstream.MAX_MEMBER:,}", None
            elif _key_ext(m.name)[1] in ("json", "txt"):
                yield m.name, None, tar.extractfile(m).read()
            else:
                yield m.name, None, b""


def subtitle_cues(meta: dict, where: str) -> list[Cue] | None:
    """The cues of the first language in ``yt_meta_dict.subtitles`` (video2dataset's ``sub_to_dict``: ``start``
    and ``end`` as WebVTT times, ``lines``), or None when there are none."""
    yt = meta.get("yt_meta_dict")
    subs = yt.get("subtitles") if isinstance(yt, dict) else None
    if not isinstance(subs, dict) or not subs:
        return None
    lang, entries = next(iter(subs.items()))
    if not isinstance(entries, list):
        raise DataError(f"{where}: yt_meta_dict.subtitles[{lang!r}] is not a list of cues")
    cues = []
    for k, e in enumerate(entries):
        try:
            start, end = _vtt_seconds(e["start"]), _vtt_seconds(e["end"])
            lines = e["lines"] if "lines" in e else [e["line"]]  # sub_to_dict(single=True) joins them as "line"
            text = _clean(" ".join(str(x) for x in lines))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: subtitle cue {k} of {lang!r} needs 'start', 'end' (HH:MM:SS.mmm) and "
                            f"'lines', got {e!r:.200}") from None
        if end < start:
            raise DataError(f"{where}: subtitle cue {k} of {lang!r} ends ({end:.3f}s) before it starts ({start:.3f}s)")
        if text:
            cues.append(Cue(start, end, text))
    return cues or None


def _vtt_seconds(t) -> float:
    parts = str(t).strip().replace(",", ".").split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(t)
    seconds = float(parts[-1]) + 60 * int(parts[-2] if len(parts) > 1 else 0) + 3600 * int(
        parts[-3] if len(parts) > 2 else 0)
    if seconds < 0:
        raise ValueError(t)
    return seconds


def _error(source: str, reason: str, **fields) -> dict:
    shard = source.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return {"source": source, "stage": "discover", "reason": reason, "partition_key": shard, **fields}


def _sample_id(shard: str, key: str) -> str:
    return f"{Path(shard).stem}/{key}"


def discover(src, default_split: str, shard_filter=None) -> tuple[list[Input], list[dict]]:
    """One ``Input`` per successful sample, one error per other sample (or unreadable shard), in shard order.
    ``shard_filter(name)``: only those shards (a job array's task takes whole shards: each shard is read by one
    task only); inputs and errors carry their shard as ``partition_key``."""
    inputs, errors = [], []
    for url in shards_of(src):
        shown = urls.redact(url)
        shard = shown.rstrip("/").rsplit("/", 1)[-1]
        if shard_filter is not None and not shard_filter(shard):
            continue
        try:
            for key, s in _listing(url):
                source, sample_id = f"{shown}#{key}", _sample_id(shard, key)
                try:
                    meta = loads_json(s["json"]) if "json" in s else None
                except ValueError as e:
                    meta, s["problems"] = None, s["problems"] + [f"its .json is not JSON ({e})"]
                if not isinstance(meta, dict):
                    errors.append(_error(source, "; ".join(s["problems"] or ["no .json metadata member"]), id=sample_id))
                    continue
                status = meta.get("status")
                if status != "success":
                    errors.append(_error(source, f"video2dataset status {status!r}: {meta.get('error_message')}",
                                         id=sample_id, status=status, error_message=meta.get("error_message")))
                    continue
                if "video" not in s:
                    errors.append(_error(source, "; ".join(s["problems"]) or "status 'success' but no video member "
                                         f"({', '.join('.' + e for e in VIDEO_MEMBERS[:4])} ...)", id=sample_id, status=status))
                    continue
                caption = s["txt"].decode("utf-8", "replace") if "txt" in s else meta.get("caption")
                try:
                    cues = subtitle_cues(meta, source)
                except DataError as e:
                    errors.append(_error(source, str(e), id=sample_id, status=status))
                    continue
                extra = {k: v for k, v in meta.items() if k not in DROPPED_FIELDS and (
                    v is None or isinstance(v, (str, int, float, bool)))}
                extra["video2dataset"] = {"shard": shard, "key": key, "caption": caption,
                                          "transcript": "subtitles" if cues else "caption"}
                inputs.append(Input(id=sample_id, kind="video", partition_key=shard, split=meta.get("split") if
                                    isinstance(meta.get("split"), str) else default_split, source=source,
                                    member=(url, s["video"]), cues=cues, caption=None if cues else (caption or ""),
                                    extra=extra))
        except (tarfile.TarError, OSError) as e:  # the samples listed before the break are kept
            errors.append(_error(shown, f"not a readable tar, or it breaks off ({type(e).__name__}: "
                                        f"{urls.scrub(str(e), url)}); the samples listed before the break are kept"))
    return inputs, errors


def with_videos(inputs: Iterable[Input]) -> Iterator[Input]:
    """``inputs`` in their order, each video2dataset input with ``data`` (its video's bytes) read from its shard,
    which is streamed once for all its consecutive inputs. An input whose member cannot be read comes with
    ``data`` None and ``problem`` set (``process`` rejects it, naming the reason)."""
    stream, stream_url = None, None
    try:
        for inp in inputs:
            if inp.member is None:
                yield inp
                continue
            url, name = inp.member
            if url != stream_url:
                if stream is not None and hasattr(stream, "close"):
                    stream.close()
                stream, stream_url = tarstream.members(url), url
            video, why = None, f"video member {name!r} was not found in its shard on the second read"
            try:
                for member, problem, data in stream:
                    if member == name:
                        video, why = (data, None) if problem is None else (None, f"{name} is {problem}")
                        break
            except (tarfile.TarError, OSError) as e:
                why = f"its shard broke off on the second read ({type(e).__name__}: {urls.scrub(str(e), url)})"
                stream.close()
                stream = iter(())
            # a copy: the caller's list of inputs must not keep every video's bytes alive
            yield dataclasses.replace(inp, data=video, problem=why)
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()


#: leading bytes of the containers a video member may hold, whatever its name says
SIGNATURES = ((4, b"ftyp", ".mp4"), (4, b"moov", ".mov"), (4, b"mdat", ".mov"), (4, b"free", ".mov"),
              (4, b"wide", ".mov"), (0, b"\x1a\x45\xdf\xa3", ".mkv"), (0, b"FLV", ".flv"),
              (0, b"\x00\x00\x01\xba", ".mpg"), (0, b"GIF8", ".gif"))


def sniff(data: bytes) -> str | None:
    """The file extension of the container ``data`` holds (``.mp4``, ``.mkv`` for Matroska and WebM, ``.avi``,
    ``.mpg`` ...), or None when it is not one we know (an HTML error page saved as ``.mp4``, say)."""
    for offset, magic, ext in SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    if len(data) > 188 * 2 and data[0] == 0x47 and data[188] == 0x47 and data[376] == 0x47:  # MPEG-TS sync bytes
        return ".ts"
    return None
