"""Turn one ``Input`` into shard samples: cut clips, sample frames, attach transcript words.

``process(inp, opts)`` is a pure function of its arguments (it runs in worker
processes) and returns ``(samples, errors)``. A sample is a dict of bytes ready
for ``webdataset.TarWriter``:

- ``__key__``: ``{input id}_{clip:04d}`` (sanitised), or ``{id}`` for text;
- ``f000.jpg`` ... ``f{T-1:03d}.jpg``: frames, short side resized to S and centre-cropped;
- ``txt``: the clip's transcript (UTF-8);
- ``json``: metadata: source, video id, clip index, start/end, fps, original size,
  split, frame indices and times, the transcript's words as ``{"w", "s", "e",
  "t0", "t1"}`` (character offsets into ``txt``, times in seconds), and any
  labels / QA fields of the input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .inputs import Input, sanitize
from .transcripts import (
    TranscriptError,
    clip_text,
    load_transcript,
    text_words,
    timed_words,
)
from .video import (
    VideoError,
    encode_jpeg,
    encode_jpegs,
    open_video,
    resize_crop,
    sample_indices,
)


@dataclass
class BuildOptions:
    frames: int = 8  # T frames sampled per clip
    size: int = 224  # S: frames are S x S
    clip_seconds: float = 8.0
    clip_mode: str = "fixed"  # "fixed" windows, or "segments": whole transcript cues grouped to >= clip_seconds
    min_clip_fraction: float = 0.5  # a video shorter than this fraction of a clip is rejected
    jpeg_quality: int = 90
    max_samples: int = 1000  # per shard
    max_bytes: int = 1 << 30  # per shard (a shard holding one bigger sample is allowed)
    split: str = "train"  # default split where the input doesn't say
    missing_transcript: str = "reject"  # or "keep" (the clips get empty text)
    time_tolerance: float = 1.0  # seconds a transcript may run past the video's end
    kind: str = "auto"  # "video", "text", or "auto" (video if the folder holds any video)
    text_field: str = "text"
    backend: str = "auto"  # decord (auto when installed) or pyav
    transcript_encoding: str = ""  # force the transcripts' text encoding ("": UTF-8, else detected)
    markup: str = "auto"  # text corpora: auto (detected), plain (kept as is), rst, markdown or html (removed)

    def __post_init__(self):
        checks = {"frames": self.frames >= 1, "size": self.size >= 8, "clip_seconds": self.clip_seconds > 0,
                  "min_clip_fraction": 0 < self.min_clip_fraction <= 1, "jpeg_quality": 1 <= self.jpeg_quality <= 100,
                  "max_samples": self.max_samples >= 1, "max_bytes": self.max_bytes >= 1,
                  "clip_mode": self.clip_mode in ("fixed", "segments"),
                  "missing_transcript": self.missing_transcript in ("reject", "keep"),
                  "kind": self.kind in ("auto", "video", "text"), "backend": self.backend in ("auto", "decord", "pyav"),
                  "markup": self.markup in ("auto", "plain", "rst", "markdown", "html"),
                  "time_tolerance": self.time_tolerance >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid build option {bad[0]}={getattr(self, bad[0])!r}")


def _err(inp: Input, reason: str, clip: int | None = None, stage="decode") -> dict:
    e = {"source": inp.source, "id": inp.id, "stage": stage, "reason": reason}
    if clip is not None:
        e["clip"] = clip
    return e


def plan_clips(cues, duration: float, opts: BuildOptions, timed: bool) -> list[tuple[float, float]]:
    """Clip windows covering the video. Fixed mode: windows of ``clip_seconds``; a remainder shorter
    than ``min_clip_fraction`` of a clip is absorbed by the last window, so no footage is lost.
    Segment mode: consecutive cues grouped until they span ``clip_seconds``."""
    min_len = opts.clip_seconds * opts.min_clip_fraction
    if opts.clip_mode == "segments" and timed and cues:
        groups, cur = [], None
        for c in cues:
            cur = [c.start, c.end] if cur is None else [cur[0], max(cur[1], c.end)]
            if cur[1] - cur[0] >= opts.clip_seconds:
                groups.append(cur)
                cur = None
        if cur is not None:
            if groups and cur[1] - cur[0] < min_len:
                groups[-1][1] = cur[1]
            else:
                groups.append(cur)
        return [(max(0.0, s), min(e, duration)) for s, e in groups]
    n = max(1, int(duration // opts.clip_seconds))
    if duration - n * opts.clip_seconds >= min_len:
        n += 1
    bounds = [(k * opts.clip_seconds, min((k + 1) * opts.clip_seconds, duration)) for k in range(n)]
    bounds[-1] = (bounds[-1][0], duration)
    return bounds


def process(inp: Input, opts: BuildOptions, encode: bool = True):
    """All samples of one input, and the errors (whole input or per clip). ``encode=False``: the frames stay
    resized uint8 arrays (``encode_frames`` turns them into JPEG bytes), so that another thread can encode them
    while this one decodes the next input."""
    if inp.kind == "text":
        meta = {"key": sanitize(inp.id), "source": inp.source, "split": inp.split, "words": text_words(inp.text),
                **inp.extra}
        return [{"__key__": meta["key"], "txt": inp.text.encode(), "json": json.dumps(meta).encode()}], []
    if inp.member is not None:  # a video inside a shard (video2dataset): decoded from a temporary file
        return _from_member(inp, opts, encode)
    cues, timed, encoding, problems = [], False, "utf-8", []
    if inp.cues is not None or inp.caption is not None:  # given with the input (subtitles, a caption)
        cues, timed = inp.cues or [], inp.cues is not None
    elif inp.transcript is None:
        if opts.missing_transcript == "reject":
            problems.append("no transcript with the same stem (.srt/.vtt/.json/.txt); use --missing-transcript "
                            "keep to keep it with empty text")
    else:
        try:
            cues, timed, encoding = load_transcript(inp.transcript, opts.transcript_encoding)
        except (TranscriptError, OSError) as e:
            problems.append(str(e))
    try:
        reader = open_video(inp.video, opts.backend, fps=inp.fps)
    except (VideoError, OSError) as e:  # every reason an input fails is reported, not only the first
        return [], [_err(inp, "; ".join([*problems, str(e)]), stage="transcript+decode" if problems else "decode")]
    if problems:
        return [], [_err(inp, "; ".join(problems), stage="transcript")]
    info = reader.info
    min_len = opts.clip_seconds * opts.min_clip_fraction
    if info.duration < min_len:
        return [], [_err(inp, f"video is {info.duration:.2f}s long, shorter than one clip (needs >= {min_len:.2f}s "
                              f"= --clip-seconds {opts.clip_seconds} x --min-clip-fraction {opts.min_clip_fraction})")]
    late = [c for c in cues if c.end is not None and c.end > info.duration + opts.time_tolerance]
    if late:
        return [], [_err(inp, f"transcript {inp.transcript} has {len(late)} cue(s) past the end of the video "
                              f"({info.duration:.2f}s), the first ending at {late[0].end:.2f}s: wrong transcript?",
                         stage="transcript")]
    words = timed_words(cues, info.duration)
    timed_cues = sorted((c for c in cues if c.start is not None), key=lambda c: c.start)
    overlaps = sum(b.start < a.end for a, b in zip(timed_cues, timed_cues[1:]))  # rolling captions, two speakers
    samples, errors = [], []
    if inp.window is not None:  # one clip of the given span (a QA's timestamps), clamped to the video
        t0, t1 = inp.window[0], min(inp.window[1], info.duration)
        if t1 - t0 <= 0:
            return [], [_err(inp, f"window {inp.window[0]}..{inp.window[1]}s starts after the video's end "
                                  f"({info.duration:.2f}s)")]
        windows = [(t0, t1)]
    else:
        windows = plan_clips(cues, info.duration, opts, timed)
    for c, (t0, t1) in enumerate(windows):
        indices = sample_indices(t0, t1, opts.frames, info)
        try:
            frames = reader.frames(indices)
        except VideoError as e:
            errors.append(_err(inp, str(e), clip=c))
            continue
        if inp.caption is not None:  # a caption describes the whole video: every clip carries all of it
            text, clip_words = inp.caption, text_words(inp.caption)
        else:
            text, clip_words = clip_text(cues, words, t0, t1)
        key = f"{sanitize(inp.id)}_{c:04d}"
        meta = {"key": key, "source": inp.source, "video_id": inp.id, "clip": c, "start": round(t0, 3),
                "end": round(t1, 3), "fps": info.fps, "width": info.width, "height": info.height, "split": inp.split,
                "frame_indices": indices, "frame_times": [round(i / info.fps, 3) for i in indices],
                "timing": "caption" if inp.caption is not None else ("words" if any(cu.words for cu in cues)
                                                                      else "cues") if timed else (
                    "untimed" if cues else "none"),
                "words": clip_words, **({"transcript_encoding": encoding} if encoding != "utf-8" else {}),
                **({"transcript_overlapping_cues": overlaps} if overlaps else {}), **inp.extra}
        sample = {"__key__": key, "txt": text.encode(), "json": json.dumps(meta).encode()}
        for t, frame in enumerate(frames):
            sample[f"f{t:03d}.jpg"] = resize_crop(frame, opts.size)
        samples.append(sample)
    if not samples:
        errors.append(_err(inp, "no clip of this video could be decoded (see the clip errors)"))
    return encode_frames((samples, errors), opts) if encode else (samples, errors)


def _from_member(inp: Input, opts: BuildOptions, encode: bool):
    """``process`` for a video given as bytes (``inp.data``): the container is sniffed (a member's name need not
    match it), written to a temporary file for the decoders, and removed afterwards."""
    import dataclasses
    import os
    import tempfile

    from .v2d_shards import sniff

    if inp.data is None:
        return [], [_err(inp, inp.problem or "its video member could not be read")]
    ext = sniff(inp.data)
    if ext is None:
        head = inp.data[:16]
        return [], [_err(inp, f"video member {inp.member[1]!r} ({len(inp.data):,} bytes) is not a video container "
                              f"(starts with {head!r}): an error page saved as a video?")]
    fd, path = tempfile.mkstemp(suffix=ext, prefix="videomask-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(inp.data)
        extra = {**inp.extra, "video2dataset": {**inp.extra.get("video2dataset", {}), "container": ext[1:]}}
        samples, errors = process(dataclasses.replace(inp, member=None, data=None, video=path, extra=extra), opts,
                                  encode)
    finally:
        os.unlink(path)
    for e in errors:  # name the member, not the temporary file
        e["reason"] = e["reason"].replace(path, f"{inp.member[1]} ({ext[1:]})")
    return samples, errors


def encode_frames(result, opts: BuildOptions, batched: bool = False):
    """``process(..., encode=False)``'s result with every frame JPEG-encoded: frame by frame with Pillow, or
    ``batched``, a clip's frames in one call that releases the GIL (``encode_jpegs``: same bytes)."""
    samples, errors = result
    for sample in samples:
        names = [k for k, v in sample.items() if isinstance(v, np.ndarray)]
        frames = [sample[k] for k in names]
        encoded = encode_jpegs(frames, opts.jpeg_quality) if batched else [encode_jpeg(f, opts.jpeg_quality)
                                                                           for f in frames]
        sample.update(zip(names, encoded))
    return samples, errors
