"""Transcripts: parse .srt / .vtt / .json / .txt into timed words, cut them per clip.

Everything downstream (anchors, word scores, text masks) works on *words* given
as character offsets into a clip's text, so that any tokenizer can map them onto
its own sub-tokens. One regex, ``WORD_RE``, defines what a word is for the whole
library: a run of letters/digits, with inner apostrophes or hyphens
("don't", "x-ray"). Punctuation is never a word.

Timing: .srt/.vtt cues give a start and end per cue; a word inside a cue gets a
time interpolated by its character position in the cue (subtitles carry no word
timings). .json files with word timings (WhisperX / Whisper ``word_timestamps``
layout or a plain list of words) keep them exactly. A .txt transcript has no
times at all: its words are spread evenly over the video's duration, which is
only an approximation, and the metadata records ``timing: "untimed"``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import loads_json

WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
TAG_RE = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <i>, <c.colour>, {\an8}
SRT_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
VTT_TIME = re.compile(r"^\s*((?:\d+:)?\d{1,2}:\d{1,2}\.\d{1,3})\s*-->\s*((?:\d+:)?\d{1,2}:\d{1,2}\.\d{1,3})(?:\s+.*)?$")

TRANSCRIPT_EXTS = (".json", ".srt", ".vtt", ".txt")


class TranscriptError(DataError):
    """A transcript that cannot be used; the message names the file and the problem."""


@dataclass
class Cue:
    start: float | None  # seconds; None for untimed text
    end: float | None
    text: str
    words: list[tuple[int, int, float, float]] | None = None  # exact (char start, char end, t0, t1)


@dataclass
class TimedWord:
    cue: int  # index of the cue the word belongs to
    start: int  # character offsets into that cue's text
    end: int
    t0: float
    t1: float


def find_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the words in ``text``."""
    return [m.span() for m in WORD_RE.finditer(text)]


def decode(data: bytes, path, encoding: str = "") -> tuple[str, str]:
    """Bytes of a text file -> (text, the encoding used). UTF-8 (a BOM allowed) first; otherwise the
    encoding detected by charset-normalizer (subtitle files are often cp1252 or Latin-1); ``encoding``
    forces one. A clear error naming the file when nothing fits."""
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise TranscriptError(f"{path}: cannot be read as {encoding}: {e}") from None
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as e:
        first_bad = e.start
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is not None:
        # short texts leave the detector undecided between code pages that fit equally well: take cp1252
        # (Windows Western, the most common legacy encoding of subtitle files) when it is one of them
        tied = [m for m in matches if m.chaos == best.chaos and m.coherence == best.coherence]
        best = next((m for m in tied if m.encoding == "cp1252"), best)
    if best is None:
        raise TranscriptError(
            f"{path}: not valid UTF-8 (byte 0x{data[first_bad]:02x} at offset {first_bad}) and no other encoding "
            "fits; convert it (e.g. `iconv -f latin1 -t utf-8`) or name it with --transcript-encoding") from None
    return str(best), best.encoding


#: the largest transcript read (a day of speech is a few MB); larger files, and anything that is not a regular
#: file (a link to /dev/zero, a fifo), are rejected by name instead of being read whole
MAX_TRANSCRIPT_BYTES = 64 << 20
#: the same for a manifest or a text corpus file, which is read whole too
MAX_CORPUS_BYTES = 8 << 30


def read_bytes(path: Path, limit: int = MAX_TRANSCRIPT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a ``TranscriptError`` naming it otherwise. Never
    reads more than ``limit + 1`` bytes, whatever the file claims to be."""
    import os
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise TranscriptError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise TranscriptError(f"{path}: not a regular file (a device, fifo or folder, or a link to one); refused")
    if st.st_size > limit:
        raise TranscriptError(f"{path}: {st.st_size:,} bytes, more than the limit of {limit:,} for a transcript")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TranscriptError(f"{path}: more than the limit of {limit:,} bytes for a transcript")
    return data


def read_text(path: Path, encoding: str = "", limit: int = MAX_TRANSCRIPT_BYTES) -> str:
    """Read a text file: UTF-8, else the detected encoding (see ``decode``); a clear error otherwise."""
    return decode(read_bytes(path, limit), path, encoding)[0]


def _clean(text: str) -> str:
    return " ".join(TAG_RE.sub("", text).split())


def _hms(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _vtt_time(t: str) -> float:
    parts = t.split(":")
    sec = float(parts[-1])
    mins = int(parts[-2])
    hours = int(parts[-3]) if len(parts) == 3 else 0
    return hours * 3600 + mins * 60 + sec


def _check_cue(path, line_no, start, end):
    if end < start:
        raise TranscriptError(f"{path}:{line_no}: cue ends ({end:.3f}s) before it starts ({start:.3f}s)")


def _read_cue(path, lines, i, start, end, cues) -> int:
    """Append the cue whose timing line is ``lines[i]``; return the index after its text."""
    _check_cue(path, i + 1, start, end)
    i += 1
    body = []
    while i < len(lines) and lines[i].strip():
        body.append(lines[i])
        i += 1
    cues.append(Cue(start, end, _clean(" ".join(body))))
    return i


def parse_srt(path: Path, text: str) -> list[Cue]:
    cues = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block_start = i
        if lines[i].strip().isdigit():
            i += 1
        m = SRT_TIME.match(lines[i]) if i < len(lines) else None
        if not m:
            raise TranscriptError(
                f"{path}:{i + 1}: malformed SRT: expected a timing line like "
                f"'00:00:01,000 --> 00:00:02,500', got {lines[i] if i < len(lines) else 'end of file'!r}"
                f" (block starting at line {block_start + 1})")
        i = _read_cue(path, lines, i, _hms(*m.groups()[:4]), _hms(*m.groups()[4:]), cues)
    return cues


def parse_vtt(path: Path, text: str) -> list[Cue]:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("WEBVTT"):
        raise TranscriptError(f"{path}:1: malformed VTT: the file must start with 'WEBVTT'")
    cues = []
    i = 1
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith(("NOTE", "STYLE", "REGION")):
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        m = VTT_TIME.match(line)
        if not m and i + 1 < len(lines) and "-->" in lines[i + 1]:  # cue identifier line
            i += 1
            line = lines[i]
            m = VTT_TIME.match(line)
        if not m:
            raise TranscriptError(
                f"{path}:{i + 1}: malformed VTT: expected a timing line like "
                f"'00:01.000 --> 00:02.500', got {line!r}")
        i = _read_cue(path, lines, i, _vtt_time(m.group(1)), _vtt_time(m.group(2)), cues)
    return cues


def _words_to_cue(path, words, where) -> Cue:
    text, spans = "", []
    for k, w in enumerate(words):
        try:
            token, t0, t1 = str(w["word"]).strip(), float(w["start"]), float(w["end"])
        except (KeyError, TypeError, ValueError):
            raise TranscriptError(
                f"{path}: {where} word {k}: each word needs 'word', 'start' and 'end' fields, got {w!r}") from None
        if not token:
            continue
        if text:
            text += " "
        # the JSON token may carry punctuation ("world,"): keep it in the text, time its words
        spans += [(len(text) + s, len(text) + e, t0, t1) for s, e in find_words(token)]
        text += token
    if not spans:
        return Cue(None, None, "", [])
    return Cue(min(s[2] for s in spans), max(s[3] for s in spans), text, spans)


def parse_json(path: Path, text: str) -> list[Cue]:
    try:
        data = loads_json(text)
    except json.JSONDecodeError as e:
        raise TranscriptError(f"{path}:{e.lineno}: malformed JSON transcript: {e.msg}") from None
    if isinstance(data, list):
        data = {"words": data}
    if not isinstance(data, dict) or not ({"segments", "words"} & data.keys()):
        raise TranscriptError(f"{path}: JSON transcript needs a 'segments' list (Whisper layout) or a 'words' list")
    if "segments" in data:
        cues = []
        for k, seg in enumerate(data["segments"]):
            if seg.get("words"):
                cue = _words_to_cue(path, seg["words"], f"segment {k}")
            else:
                try:
                    cue = Cue(float(seg["start"]), float(seg["end"]), _clean(seg["text"]))
                except (KeyError, TypeError, ValueError):
                    raise TranscriptError(f"{path}: segment {k} needs 'start', 'end' and 'text' (or 'words')") from None
                _check_cue(path, f"segment {k}", cue.start, cue.end)
            cues.append(cue)
        return [c for c in cues if c.text]
    cue = _words_to_cue(path, data["words"], "top-level")
    return [cue] if cue.text else []


def load_transcript(path: Path, encoding: str = "") -> tuple[list[Cue], bool, str]:
    """Parse a transcript file. Returns ``(cues, timed, the text encoding it was read with)``."""
    path = Path(path)
    text, used = decode(read_bytes(path), path, encoding)
    ext = path.suffix.lower()
    if ext == ".srt":
        return parse_srt(path, text), True, used
    if ext == ".vtt":
        return parse_vtt(path, text), True, used
    if ext == ".json":
        return parse_json(path, text), True, used
    if ext == ".txt":
        body = _clean(text)
        return ([Cue(None, None, body)] if body else []), False, used
    raise TranscriptError(f"{path}: unknown transcript format {ext!r}; expected one of {TRANSCRIPT_EXTS}")


def read_transcript(path: Path, encoding: str = "") -> tuple[list[Cue], bool]:
    """Parse a transcript file. Returns ``(cues, timed)``."""
    return load_transcript(path, encoding)[:2]


def timed_words(cues: list[Cue], duration: float) -> list[TimedWord]:
    """Every word of every cue with a time. Untimed cues are spread over ``[0, duration]``."""
    out = []
    untimed = [c for c in cues if c.start is None]
    total_chars = sum(len(c.text) for c in untimed) or 1
    offset = 0  # characters of untimed text seen so far
    for k, cue in enumerate(cues):
        if cue.words is not None:
            out += [TimedWord(k, s, e, t0, t1) for s, e, t0, t1 in cue.words]
            continue
        if cue.start is None:
            start = duration * offset / total_chars
            end = duration * (offset + len(cue.text)) / total_chars
            offset += len(cue.text)
        else:
            start, end = cue.start, cue.end
        n = max(len(cue.text), 1)
        for s, e in find_words(cue.text):
            out.append(TimedWord(k, s, e, start + (end - start) * s / n, start + (end - start) * e / n))
    return out


def clip_text(cues: list[Cue], words: list[TimedWord], t_start: float, t_end: float):
    """The transcript of the clip ``[t_start, t_end)``.

    A word belongs to the clip that contains its midpoint. The clip text keeps the
    original cue text (punctuation included); a cue that the clip cuts is cut at
    the edges of its first and last word inside the clip. Returns ``(text, [{"w", "s", "e", "t0", "t1"}, ...])``
    with ``s``/``e`` character offsets into ``text``.
    """
    inside = [w for w in words if t_start <= (w.t0 + w.t1) / 2 < t_end]
    text, out = "", []
    by_cue: dict[int, list[TimedWord]] = {}
    for w in inside:
        by_cue.setdefault(w.cue, []).append(w)
    cue_span = {}  # cue -> (first word, last word) over the whole transcript
    for w in words:
        cue_span[w.cue] = (cue_span.get(w.cue, (w,))[0], w)
    for k, ws in by_cue.items():
        # a cue wholly inside the clip keeps its punctuation; a cue cut by the clip is cut at word edges
        first = 0 if ws[0] is cue_span[k][0] else ws[0].start
        last = len(cues[k].text) if ws[-1] is cue_span[k][1] else ws[-1].end
        if text:
            text += " "
        base = len(text) - first
        text += cues[k].text[first:last]
        for w in ws:
            out.append({"w": cues[k].text[w.start:w.end], "s": w.start + base, "e": w.end + base,
                        "t0": round(w.t0, 3), "t1": round(w.t1, 3)})
    return text, out


def text_words(text: str) -> list[dict]:
    """Word records for untimed text (text-only samples)."""
    return [{"w": text[s:e], "s": s, "e": e} for s, e in find_words(text)]
