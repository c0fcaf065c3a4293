"""Published dataset releases -> videomask manifests -> shards, for the paper's downstream tasks.

    python -m videomask.prep.adapters tvqa --qa tvqa_qa_release/tvqa_train.jsonl tvqa_qa_release/tvqa_val.jsonl \\
        --subtitles tvqa_subtitles --frames frames_hq --out data/tvqa [--frames-per-clip 8 --size 224]
    python -m videomask.prep.adapters siq2 --root siq2 --out data/siq2
    python -m videomask.prep.adapters dsp --root chemprot --out data/chemprot

- ``tvqa``: TVQA's QA JSONL (``qid, q, a0..a4, answer_idx, ts, vid_name, show_name``;
  ``answer_idx`` absent in ``tvqa_test_public.jsonl``), one ``<vid_name>.srt`` per clip, and
  the clips as frame folders (``frames_hq/<show>_frames/<vid_name>/00001.jpg``, 3 fps) or as
  videos (``<vid_name>.mp4`` anywhere under ``--videos``). One sample per question: the
  frames of its ``ts`` span (the whole clip when ``ts`` is ``NaN-NaN``).
- ``siq2``: Social-IQ 2.0 (``siq2/qa/qa_{train,val,test}.json``, JSON lines with ``qid, q,
  vid_name, ts, a0..a3, answer_idx``; ``siq2/video/<vid_name>.mp4``;
  ``siq2/transcript/<vid_name>.vtt``).
- ``dsp``: the text classification JSONL of "Don't Stop Pretraining" (ChemProt, ACL-ARC:
  ``train.jsonl, dev.jsonl, test.jsonl``, one ``{"text", "label", ...}`` per line).

The QA fields become the metadata ``videomask.finetune`` reads (``question``, ``answers``,
``answer_idx``; the release's ids are kept). A line with a missing or malformed field, or
whose clip, frames or subtitles cannot be found, is reported in ``OUT/adapter_errors.jsonl``
with its file, line number and field; every other line is converted. ``OUT/manifest.jsonl``
is then built into ``OUT/shards`` (``videomask.prep.build``; its own ``errors.jsonl`` there).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError, DataError, MissingError, VideomaskError
from ..files import loads_json
from .inputs import SPLIT_DIRS
from .transcripts import MAX_CORPUS_BYTES, read_text

TVQA_FPS = 3.0  # the frame rate of TVQA's released frames


def split_of(path: Path) -> str:
    """tvqa_train.jsonl -> train, qa_val.json -> val, dev.jsonl -> val, tvqa_test_public.jsonl -> test."""
    for part in path.stem.lower().replace("-", "_").split("_"):
        if part in SPLIT_DIRS:
            return SPLIT_DIRS[part]
        if part == "dev":
            return "val"
    raise DataError(f"{path}: cannot tell the split from the file name (expected train / val / dev / test in it)")


def read_jsonl(path: Path):
    """(line number, row or None, error or None) for every non-empty line."""
    for n, line in enumerate(read_text(path, limit=MAX_CORPUS_BYTES).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = loads_json(line)
        except json.JSONDecodeError as e:
            yield n, None, f"malformed JSON: {e.msg}"
            continue
        yield n, row, None if isinstance(row, dict) else "not a JSON object"


def _error(path, n, reason, field=None) -> dict:
    e = {"source": f"{path}:{n}", "stage": "adapter", "reason": reason}
    if field:
        e["field"] = field
    return e


def parse_ts(ts) -> tuple[float, float] | None:
    """'76.01-84.2' -> (76.01, 84.2); 'NaN-NaN' (TVQA's unlocalised questions) -> None (the whole clip)."""
    a, sep, b = str(ts).partition("-")
    if not sep:
        raise DataError(f"ts {ts!r} is not 'START-END'")
    start, end = float(a), float(b)
    if math.isnan(start) or math.isnan(end):
        return None
    if not 0 <= start < end:
        raise DataError(f"ts {ts!r} is an empty, reversed or negative span")
    return start, end


def qa_rows(path: Path, n_answers: int, locate) -> tuple[list[dict], list[dict]]:
    """Manifest rows and errors of one QA JSONL file (TVQA / Social-IQ 2.0 layout).

    ``locate(row) -> (video, transcript, extra manifest fields)`` finds the clip's files and
    raises ``LookupError`` naming what is missing."""
    split = split_of(path)
    lines = list(read_jsonl(path))
    # a file where no line has answer_idx is an unlabelled test release; elsewhere a missing one is an error
    labelled = any(row is not None and "answer_idx" in row for _, row, _ in lines)
    required = ["qid", "q", "vid_name", "ts"] + [f"a{i}" for i in range(n_answers)] + (["answer_idx"] if labelled
                                                                                         else [])
    rows, errors = [], []
    for n, row, err in tqdm(lines, desc=path.name, unit="question", disable=len(lines) < 1000):
        if err:
            errors.append(_error(path, n, err))
            continue
        missing = [f for f in required if row.get(f) in (None, "")]
        if missing:
            errors.append(_error(path, n, f"missing field{'s' if len(missing) > 1 else ''} "
                                          f"{', '.join(missing)}", missing[0]))
            continue
        try:
            window = parse_ts(row["ts"])
        except ValueError as e:
            errors.append(_error(path, n, str(e), "ts"))
            continue
        out = {"id": f"{row['vid_name']}_q{row['qid']}", "split": split, "qid": row["qid"],
               "vid_name": row["vid_name"], "ts": row["ts"], "question": row["q"],
               "answers": [str(row[f"a{i}"]) for i in range(n_answers)]}
        if labelled:
            try:
                idx = int(row["answer_idx"])
            except (TypeError, ValueError):
                errors.append(_error(path, n, f"answer_idx {row['answer_idx']!r} is not an integer", "answer_idx"))
                continue
            if not 0 <= idx < n_answers:
                errors.append(_error(path, n, f"answer_idx {idx} is out of range for {n_answers} answers",
                                     "answer_idx"))
                continue
            out["answer_idx"] = idx
        # one sample per question, always: an unlocalised one (TVQA's NaN-NaN) spans the whole clip
        out["start"], out["end"] = window or (0.0, None)
        for keep in ("show_name", "ans_corr"):
            if keep in row:
                out[keep] = row[keep]
        try:
            video, transcript, extra = locate(row)
        except LookupError as e:
            errors.append(_error(path, n, str(e.args[0]), "vid_name"))
            continue
        rows.append({**out, "video": str(video), "transcript": str(transcript), **extra})
    return rows, errors


def _index(root: Path | None, depth: int, want_dirs: bool, suffix: str = "") -> dict[str, Path]:
    """name (or stem) -> path of every folder / file up to ``depth`` levels under ``root``."""
    found = {}
    if root is None:
        return found
    level = [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            for p in sorted(d.iterdir()) if d.is_dir() else []:
                if p.is_dir():
                    nxt.append(p)
                    if want_dirs:
                        found.setdefault(p.name, p)
                elif not want_dirs and p.suffix.lower() == suffix:
                    found.setdefault(p.stem, p)
        level = nxt
    return found


def tvqa(qa_files, subtitles: Path, frames: Path | None = None, videos: Path | None = None,
         fps: float = TVQA_FPS):
    if (frames is None) == (videos is None):
        raise ConfigError("give the clips as --frames (frames_hq) or as --videos, one of the two")
    clips = _index(frames, 2, want_dirs=True) if frames else _index(videos, 3, want_dirs=False, suffix=".mp4")

    def locate(row):
        name = row["vid_name"]
        sub = Path(subtitles) / f"{name}.srt"
        if name not in clips:
            raise LookupError(f"clip {name!r} not found under {frames or videos}")
        if not sub.exists():
            raise LookupError(f"subtitles {sub} not found")
        return clips[name], sub, ({"fps": fps} if frames else {})

    rows, errors = [], []
    for f in qa_files:
        r, e = qa_rows(Path(f), 5, locate)
        rows, errors = rows + r, errors + e
    return rows, errors


def siq2(root: Path):
    root = Path(root)

    def locate(row):
        name = row["vid_name"]
        video, transcript = root / "video" / f"{name}.mp4", root / "transcript" / f"{name}.vtt"
        for p in (video, transcript):
            if not p.exists():
                raise LookupError(f"{p} not found (not downloaded, or no longer on YouTube?)")
        return video, transcript, {}

    files = sorted((root / "qa").glob("qa_*.json"))
    if not files:
        raise MissingError(f"{root / 'qa'}: no qa_*.json files (the Social-IQ 2.0 layout)")
    rows, errors = [], []
    for f in files:
        r, e = qa_rows(f, 4, locate)
        rows, errors = rows + r, errors + e
    return rows, errors


def dsp(root: Path, dev_from_train: float = 0.0):
    """Don't Stop Pretraining's text classification files: train / dev / test .jsonl. A folder without
    ``dev.jsonl`` is refused, unless ``dev_from_train`` > 0: then that share of ``train.jsonl``'s lines (chosen
    by a stable hash of their text) becomes the dev split."""
    root = Path(root)
    files = [root / f"{s}.jsonl" for s in ("train", "dev", "test") if (root / f"{s}.jsonl").exists()]
    if not files:
        raise MissingError(f"{root}: no train.jsonl / dev.jsonl / test.jsonl")
    missing = [f"{s}.jsonl" for s in ("train", "test") if not (root / f"{s}.jsonl").exists()]
    if not (root / "dev.jsonl").exists() and not dev_from_train:
        missing.append("dev.jsonl (or split one from train: dev_from_train=0.1)")
    if missing:
        raise MissingError(f"{root}: no {', '.join(missing)}; a task folder holds train.jsonl, dev.jsonl and "
                           "test.jsonl, each line a JSON object with 'text' and 'label'")
    rows, errors = [], []
    for f in files:
        split = split_of(f)
        for n, row, err in read_jsonl(f):
            if err:
                errors.append(_error(f, n, err))
                continue
            missing = [k for k in ("text", "label") if row.get(k) in (None, "")]
            if missing:
                errors.append(_error(f, n, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                                     missing[0]))
                continue
            if not isinstance(row["text"], str):
                errors.append(_error(f, n, "text is not a string", "text"))
                continue
            row_split = split
            if split == "train" and dev_from_train and not (root / "dev.jsonl").exists():
                u = int(hashlib.sha256(row["text"].encode()).hexdigest()[:8], 16) / 2 ** 32
                row_split = "val" if u < dev_from_train else "train"
            rows.append({"id": f"{split}_{n}", "split": row_split, "text": row["text"], "label": str(row["label"]),
                         **({"metadata": row["metadata"]} if "metadata" in row else {})})
    return rows, errors


def write(rows: list[dict], errors: list[dict], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main(argv=None) -> int:
    from . import build

    p = argparse.ArgumentParser(prog="python -m videomask.prep.adapters", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    t = sub.add_parser("tvqa", help="TVQA: QA JSONL + subtitles + frame folders or videos")
    t.add_argument("--qa", type=Path, nargs="+", required=True, help="tvqa_train.jsonl tvqa_val.jsonl ...")
    t.add_argument("--subtitles", type=Path, required=True, help="the folder of <vid_name>.srt")
    t.add_argument("--frames", type=Path, help="frames_hq: <show>_frames/<vid_name>/00001.jpg ...")
    t.add_argument("--videos", type=Path, help="or a folder of <vid_name>.mp4")
    t.add_argument("--fps", type=float, default=TVQA_FPS, help="of the frame folders")
    s = sub.add_parser("siq2", help="Social-IQ 2.0: qa/qa_*.json + video/*.mp4 + transcript/*.vtt")
    s.add_argument("--root", type=Path, required=True, help="the siq2 folder")
    d = sub.add_parser("dsp", help="Don't Stop Pretraining text classification (ChemProt, ACL-ARC)")
    d.add_argument("--root", type=Path, required=True, help="the folder with train/dev/test.jsonl")
    for q in (t, s, d):
        q.add_argument("--out", type=Path, required=True, help="OUT/manifest.jsonl, OUT/shards, error reports")
        q.add_argument("--frames-per-clip", type=int, default=8)
        q.add_argument("--size", type=int, default=224)
        q.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    if getattr(a, "workers", 1) < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    try:
        rows, errors = (tvqa(a.qa, a.subtitles, a.frames, a.videos, a.fps) if a.dataset == "tvqa" else
                        siq2(a.root) if a.dataset == "siq2" else dsp(a.root))
        manifest = write(rows, errors, a.out)
        print(f"{len(rows)} lines converted, {len(errors)} rejected ({a.out / 'adapter_errors.jsonl'})")
        if not rows:
            print("error: nothing to build", file=sys.stderr)
            return 1
        opts = build.BuildOptions(frames=a.frames_per_clip, size=a.size,
                                  kind="text" if a.dataset == "dsp" else "video")
        m = build.build(manifest, a.out / "shards", opts, workers=a.workers, progress=True)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(build.summary(m, a.out / "shards"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
