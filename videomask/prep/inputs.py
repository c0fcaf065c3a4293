"""Find the build's inputs: a folder of videos + sidecar transcripts, a manifest, or text corpora.

The result is a sorted, deterministic list of ``Input`` work units plus the
problems found on the way (unreadable folders, duplicate stems, orphan
transcripts, manifest rows with missing fields): each of those becomes one line
of ``errors.jsonl``, so that every file the user gave ends up somewhere.

Splits: a manifest column ``split``; in a folder, a top-level sub-folder named
``train``, ``val``/``valid``/``validation`` or ``test``; otherwise ``--split``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .. import urls
from ..errors import DataError, MissingError
from ..files import loads_json
from .markup import detect, to_text
from .transcripts import MAX_CORPUS_BYTES, TRANSCRIPT_EXTS, read_bytes, read_text
from .video import VIDEO_EXTS

MANIFEST_EXTS = (".csv", ".jsonl")
#: documents in markup: one document per file, the markup removed (a .txt holding markup is found by its content)
MARKUP_EXTS = {".rst": "rst", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# every other manifest field is kept as metadata. start/end: one clip of that window (seconds); fps: the
# frame rate of a video given as a folder of frames (TVQA's release)
RESERVED_FIELDS = ("id", "video", "transcript", "split", "start", "end", "fps")


@dataclass
class Input:
    """One unit of work: a video (with its transcript) or one text document."""

    id: str  # unique, used to name the samples
    kind: str  # "video" or "text"
    split: str
    source: str  # what the user gave: a path, or "path:line"
    video: str | None = None
    transcript: str | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict)  # labels / QA fields carried into the metadata
    window: tuple[float, float] | None = None  # one clip of exactly this span instead of cutting the video
    fps: float | None = None  # of a video given as a folder of frames
    # a video inside a shard (video2dataset's output: prep.v2d_shards): (shard URL, member name); its bytes are
    # attached as ``data`` just before decoding (or ``problem`` says why they could not be read)
    member: tuple[str, str] | None = None
    data: bytes | None = None
    problem: str | None = None
    cues: list | None = None  # a transcript given as cues (timed subtitles from the metadata)
    partition_key: str | None = None  # what a job array partitions by (default: the id; a video2dataset shard)
    caption: str | None = None  # a caption of the whole video: the text of every clip


def sanitize(name: str) -> str:
    """A webdataset-safe key: no dots (the key/extension separator), no slashes. Letters and digits of any
    script are kept (NFC-normalised): ``视频.mp4`` and ``音频.mp4`` keep two keys, where ASCII-only keys
    made both ``__``; ASCII names get the same keys as before."""
    return re.sub(r"[^\w\-]", "_", unicodedata.normalize("NFC", name))


def partition_of(input_id: str, num_partitions: int) -> int:
    """Stable assignment of an input to a partition (independent of the rest of the input set)."""
    return int(hashlib.sha1(input_id.encode()).hexdigest(), 16) % num_partitions


def _error(source, reason, stage="discover"):
    return {"source": str(source), "stage": stage, "reason": reason}


def _split_of(rel: Path, default: str) -> str:
    return SPLIT_DIRS.get(rel.parts[0].lower(), default) if len(rel.parts) > 1 else default


def scan_folder(root: Path, default_split: str, kind: str, text_field: str, markup: str = "auto"):
    """Inputs and errors for a folder (walked recursively, in sorted order)."""
    errors, files = [], []

    def onerror(e: OSError):
        errors.append(_error(e.filename, f"cannot read directory: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        files += [Path(dirpath, f) for f in sorted(filenames)]
    videos, transcripts, other, documents = {}, {}, [], []
    for f in files:
        rel = f.relative_to(root)
        stem, ext = rel.with_suffix("").as_posix(), f.suffix.lower()
        if ext in VIDEO_EXTS:
            videos.setdefault(stem, []).append(f)
        elif ext in TRANSCRIPT_EXTS or ext == ".jsonl":
            transcripts.setdefault(stem, []).append(f)
        elif ext in MARKUP_EXTS:
            documents.append(f)
        else:
            other.append(f)
    if kind == "auto":
        kind = "video" if videos else "text"
    if kind == "text":
        for p in documents:
            transcripts.setdefault(p.relative_to(root).with_suffix("").as_posix() + p.suffix, []).append(p)
    else:
        other += documents
    errors += [_error(f, f"unsupported file type {f.suffix!r} (videos: {', '.join(VIDEO_EXTS)}; "
                         f"transcripts: {', '.join(TRANSCRIPT_EXTS)}; corpora: .txt, .jsonl, and in a folder without "
                         f"videos {', '.join(MARKUP_EXTS)})") for f in other]
    inputs = []
    if kind == "text":
        for stem, paths in sorted(transcripts.items()):
            for p in paths:
                if p.suffix.lower() in (".txt", ".jsonl", *MARKUP_EXTS):
                    docs, errs = read_corpus(p, root, _split_of(p.relative_to(root), default_split), text_field,
                                             markup)
                    inputs += docs
                    errors += errs
                else:
                    errors.append(_error(p, "a transcript without a video (this input has no videos)"))
        return inputs, errors
    for stem, paths in sorted(videos.items()):
        if len(paths) > 1:
            reason = (f"duplicate stem {stem!r}: {', '.join(q.name for q in paths)} would share one transcript "
                      "and one sample key; rename one")
            errors += [_error(p, reason) for p in paths + transcripts.get(stem, [])]
            continue
        ts = transcripts.get(stem, [])
        if len(ts) > 1:
            reason = f"several transcripts match {stem!r} ({', '.join(t.name for t in ts)}); keep one"
            errors += [_error(p, reason) for p in paths + ts]
            continue
        rel = paths[0].relative_to(root)
        inputs.append(Input(id=stem, kind="video", split=_split_of(rel, default_split), source=str(paths[0]),
                            video=str(paths[0]), transcript=str(ts[0]) if ts else None))
    for stem, ts in sorted(transcripts.items()):
        if stem not in videos:
            errors += [_error(t, "transcript without a video of the same stem") for t in ts]
    return inputs, errors


def corpus_lines(path: Path) -> tuple[list[str | None], list[tuple[int, str]]]:
    """The lines of a corpus file, and the lines that could not be read. A UTF-8 file with a few lines in
    another encoding (a copy-paste from a legacy file) keeps its UTF-8 lines and reports the others
    (None in their place: line numbers stay true); a file where no line is UTF-8 beyond ASCII is in a
    legacy encoding and is decoded whole with the detected one (``read_text``)."""
    raw = read_bytes(path, MAX_CORPUS_BYTES)
    try:
        return raw.decode("utf-8").splitlines(), []
    except UnicodeDecodeError:
        pass
    lines, bad, utf8_beyond_ascii = [], [], False
    for n, chunk in enumerate(raw.splitlines(), 1):
        try:
            lines.append(chunk.decode("utf-8"))
            utf8_beyond_ascii |= not chunk.isascii()
        except UnicodeDecodeError as e:
            lines.append(None)
            bad.append((n, f"not UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1}); line skipped, "
                           "the rest of the file kept"))
    if not utf8_beyond_ascii:  # no line shows UTF-8 beyond ASCII: the whole file is in a legacy encoding
        return read_text(path, limit=MAX_CORPUS_BYTES).splitlines(), []
    return lines, bad


def _unmarked(text: str, markup: str) -> tuple[str, str]:
    """(the text without its markup, the markup it had: ``plain`` when none). ``markup``: auto (detected from the
    content), plain (left as it is), rst, markdown or html. A document its parser cannot read raises
    ``MarkupError`` (a ValueError) naming the problem."""
    kind = detect(text) if markup == "auto" else markup
    return (text, "plain") if kind == "plain" else (to_text(text, kind), kind)


def read_corpus(path: Path, root: Path, split: str, text_field: str, markup: str = "auto"):
    """A text corpus: one document per non-empty line (.txt), or per JSON line with ``text_field``; or one document
    per file for a reStructuredText, Markdown or HTML file (by its extension, or a ``.txt`` whose content is one),
    its markup removed (``videomask.prep.markup``; ``markup`` as in ``_unmarked``)."""
    inputs, errors = [], []
    rel = path.relative_to(root).with_suffix("").as_posix() if root in path.parents else path.stem
    try:
        lines, bad = corpus_lines(path)
    except (ValueError, OSError) as e:
        return [], [_error(path, str(e))]
    errors += [_error(f"{path}:{n}", reason) for n, reason in bad]
    ext = path.suffix.lower()
    kind = MARKUP_EXTS.get(ext, "plain") if markup == "auto" else markup
    if ext == ".txt" and markup == "auto":  # a document a line, unless the file reads as one page of markup
        head, size = [], 0
        for line in lines:
            if line is not None and size < 200_000:
                head.append(line)
                size += len(line) + 1
        kind = detect("\n".join(head), lines_are_documents=True)
    if ext in MARKUP_EXTS or (ext == ".txt" and kind != "plain"):  # the file is one document
        try:
            text, kind = _unmarked("\n".join(line for line in lines if line is not None), kind)
        except ValueError as e:
            return [], errors + [_error(path, f"cannot be read as {kind}: {e}")]
        if not text.strip():
            return [], errors + [_error(path, f"no text left once its {kind} markup is removed")]
        # the file name with its extension: guide.rst, guide.md and guide.html are three documents
        doc_id = rel + ext if ext in MARKUP_EXTS else rel
        return [Input(id=doc_id, kind="text", split=split, source=str(path), text=text,
                      extra={"markup": kind})], errors
    for n, line in enumerate(lines, 1):
        if line is None or not line.strip():
            continue
        extra = {}
        if path.suffix.lower() == ".jsonl":
            try:
                row = loads_json(line)
                text = row[text_field]
                if not isinstance(text, str):
                    raise TypeError
            except json.JSONDecodeError as e:
                errors.append(_error(f"{path}:{n}", f"malformed JSON: {e.msg}"))
                continue
            except (KeyError, TypeError):
                errors.append(_error(f"{path}:{n}", f"missing string field {text_field!r}"))
                continue
            extra = {k: v for k, v in row.items() if k not in RESERVED_FIELDS and k != text_field}
            split = row.get("split", split)
            if markup != "plain":  # a document of a JSON corpus may be a page of markup
                try:
                    text, kind = _unmarked(text, markup)
                except ValueError as e:
                    errors.append(_error(f"{path}:{n}", f"cannot be read as markup: {e}"))
                    continue
                if kind != "plain":
                    extra["markup"] = kind
        else:
            text = line
        if not text.strip():
            errors.append(_error(f"{path}:{n}", "empty text"))
            continue
        inputs.append(Input(id=f"{rel}:{n}", kind="text", split=split, source=f"{path}:{n}", text=text, extra=extra))
    return inputs, errors


def read_manifest(path: Path, default_split: str, text_field: str):
    """A CSV or JSONL manifest: ``video`` [+ ``transcript``] rows, or ``text`` rows; relative paths are
    resolved against the manifest's folder. ``answers`` in a CSV is a JSON list or ``|``-separated."""
    base = path.parent
    try:
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(read_text(path, limit=MAX_CORPUS_BYTES).splitlines()))
            line_of = [k + 2 for k in range(len(rows))]  # +1 header, +1 one-based
        else:
            rows, line_of = [], []
            for n, line in enumerate(read_text(path, limit=MAX_CORPUS_BYTES).splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(loads_json(line))
                    except json.JSONDecodeError as e:
                        rows.append({"__error__": f"malformed JSON: {e.msg}"})
                    line_of.append(n)
    except (ValueError, OSError) as e:
        return [], [_error(path, str(e))]
    inputs, errors = [], []
    for row, n in zip(rows, line_of):
        where = f"{path}:{n}"
        if "__error__" in row:
            errors.append(_error(where, row["__error__"]))
            continue
        extra = {k: v for k, v in row.items() if k not in RESERVED_FIELDS and k != text_field and v not in (None, "")}
        if isinstance(extra.get("answers"), str):
            a = extra["answers"]
            try:
                extra["answers"] = loads_json(a) if a.startswith("[") else a.split("|")
            except json.JSONDecodeError as e:
                errors.append(_error(where, f"answers is neither a JSON list nor '|'-separated: {e.msg}"))
                continue
        if "answer_idx" in extra:
            try:
                extra["answer_idx"] = int(extra["answer_idx"])
            except ValueError:
                errors.append(_error(where, f"answer_idx {extra['answer_idx']!r} is not an integer"))
                continue
        split = row.get("split") or default_split
        try:
            window = _window(row)
            fps = float(row["fps"]) if row.get("fps") not in (None, "") else None
        except ValueError as e:
            errors.append(_error(where, str(e)))
            continue
        if row.get("video"):
            video = Path(row["video"]) if Path(row["video"]).is_absolute() else base / row["video"]
            transcript = row.get("transcript") or None
            if transcript and not Path(transcript).is_absolute():
                transcript = str(base / transcript)
            vid = row.get("id") or Path(row["video"]).with_suffix("").as_posix()
            inputs.append(Input(id=str(vid), kind="video", split=split, source=str(video), video=str(video),
                                transcript=transcript, extra=extra, window=window, fps=fps))
        elif isinstance(row.get(text_field), str) and row[text_field].strip():
            inputs.append(Input(id=str(row.get("id") or f"{path.stem}:{n}"), kind="text", split=split,
                                source=where, text=row[text_field], extra=extra))
        else:
            errors.append(_error(where, f"row has neither a 'video' path nor a non-empty {text_field!r} field"))
    return inputs, errors


def _window(row: dict) -> tuple[float, float] | None:
    start, end = row.get("start"), row.get("end")
    if start in (None, "") and end in (None, ""):
        return None
    try:  # a start without an end: until the video's end
        start, end = float(start), float("inf") if end in (None, "") else float(end)
    except (TypeError, ValueError):
        raise DataError(f"start {start!r} / end {end!r}: both must be numbers (seconds)") from None
    if not 0 <= start < end:
        raise DataError(f"window start {start} .. end {end} is empty or negative")
    return start, end


def discover(src, default_split="train", kind="auto", text_field="text", markup="auto", shard_filter=None):
    """All inputs under ``src`` (folder, manifest, single corpus file, or video2dataset shards: a local folder or
    ``.tar``, or a ``videomask.urls`` URL), sorted, with unique keys."""
    from . import v2d_shards

    if urls.is_url(src):
        if not v2d_shards.detect(src):
            raise DataError(f"{urls.redact(src)}: a URL input must hold video2dataset shards (KEY.mp4 + KEY.json with "
                            "'status' and 'key'); other inputs are read from local files")
        inputs, errors = v2d_shards.discover(src, default_split, shard_filter)
        return _unique(inputs, errors)
    src = Path(src)
    if not src.exists():
        raise MissingError(f"{src}: no such file or folder")
    if (src.is_dir() or src.suffix == ".tar") and kind != "text" and v2d_shards.detect(src):
        inputs, errors = v2d_shards.discover(src, default_split, shard_filter)
    elif src.is_dir():
        inputs, errors = scan_folder(src, default_split, kind, text_field, markup)
    elif src.suffix.lower() == ".csv" or (src.suffix.lower() == ".jsonl" and kind != "text" and _is_video_manifest(src)):
        inputs, errors = read_manifest(src, default_split, text_field)
    elif src.suffix.lower() in (".txt", ".jsonl", *MARKUP_EXTS):
        inputs, errors = read_corpus(src, src.parent, default_split, text_field, markup)
    else:
        raise DataError(f"{src}: expected a folder, a manifest (.csv/.jsonl), a text corpus (.txt/.jsonl) or "
                        "video2dataset shards")
    return _unique(inputs, errors)


def _unique(inputs, errors):
    # one key per input: clashes after sanitising are rejected, never overwritten
    seen, unique = {}, []
    for inp in inputs:
        key = sanitize(inp.id)
        if key in seen:
            errors.append(_error(inp.source, f"duplicate id {inp.id!r} (sample key {key!r} already used by "
                                             f"{seen[key]})"))
            continue
        seen[key] = inp.source
        unique.append(inp)
    return unique, errors


def _is_video_manifest(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    return "video" in loads_json(line)
                except json.JSONDecodeError:
                    return False
    return False
