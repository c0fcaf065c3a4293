"""Build WebDataset shards from videos + transcripts, or from plain text corpora.

    python -m videomask.prep.build INPUT OUTPUT [--frames 8 --size 224 --workers 4 ...]
    python -m videomask.prep.build merge OUTPUT        # after a partitioned job array

INPUT is a folder (videos with sidecar transcripts matched by stem, or text
corpora), a manifest (.csv / .jsonl with ``video``, ``transcript``, ``split``
and optional ``label``, ``question``, ``answers``, ``answer_idx`` columns), or a
single text corpus (.txt: one document per line; .jsonl: one ``text`` field per
line).

OUTPUT gets ``{split}-{%06d}.tar`` shards, ``manifest.json`` (counts, shards with
sample counts and sha256, the options used) and ``errors.jsonl`` (one line per
rejected input or clip, with the reason). Every input ends up in a shard or in
``errors.jsonl``.

Determinism: inputs are processed in sorted order and written in that order,
whatever ``--workers`` is, so the shards are byte-identical for any worker count.

Resume: a shard is written as ``.tmp`` and renamed when complete, and a journal
(``OUTPUT/.build/``) records each completed shard with the position it reached.
Rerunning the same command after a crash or ``kill -9`` continues from there;
rerunning it after success does nothing.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path

from tqdm import tqdm

from .. import urls
from ..errors import ConfigError, VideomaskError
from ..files import FolderLock, die_with_parent, sha256_of, write_manifest
from .cutting import BuildOptions, encode_frames, process
from .inputs import discover, partition_of
from .v2d_shards import with_videos

JOURNAL_DIR = ".build"


class SplitWriter:
    """Writes one split's samples into bounded shards: ``.tmp`` first, renamed when complete."""

    def __init__(self, out: Path, split: str, opts: BuildOptions, first_shard: int, journal):
        self.out, self.split, self.opts, self.journal = out, split, opts, journal
        self.shard, self.tar, self.count, self.bytes = first_shard, None, 0, 0

    def write(self, sample: dict, cursor: tuple[int, int]):
        size = sum(len(v) for k, v in sample.items() if not k.startswith("__"))
        if self.tar is not None and self.bytes + size > self.opts.max_bytes:
            self.close()
        if self.tar is None:
            import webdataset as wds  # here, not at the top: it imports torch, which spawned workers don't need

            self.tmp = self.out / f"{self.split}-{self.shard:06d}.tar.tmp"
            self.stream = open(self.tmp, "wb")
            self.tar = wds.TarWriter(self.stream, encoder=False, mtime=0)  # mtime=0: byte-identical reruns
            self.count = self.bytes = 0
        self.tar.write(sample)
        self.count, self.bytes, self.cursor = self.count + 1, self.bytes + size, cursor
        if self.count >= self.opts.max_samples:
            self.close()

    def close(self):
        if self.tar is None:
            return
        self.tar.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        final = self.out / f"{self.split}-{self.shard:06d}.tar"
        os.replace(self.tmp, final)
        self.journal({"split": self.split, "name": final.name, "samples": self.count,
                      "bytes": final.stat().st_size, "sha256": sha256_of(final), "cursor": list(self.cursor)})
        self.shard, self.tar = self.shard + 1, None


def known_options(options: dict) -> dict:
    """A build's recorded options, with the default of each option added since it was made (a build by an earlier
    version is the same build, resumable and complete)."""
    return {**asdict(BuildOptions()), **options}


class Journal:
    """Append-only record of completed shards and errors; what makes a build resumable."""

    def __init__(self, out: Path, opts_id: dict, overwrite: bool):
        self.dir = out / JOURNAL_DIR
        self.shards_path, self.errors_path = self.dir / "shards.jsonl", self.dir / "errors.jsonl"
        self.options_path = self.dir / "options.json"
        if overwrite and out.exists():
            for p in list(out.glob("*.tar")) + list(out.glob("*.tar.tmp")) + [out / "manifest.json",
                                                                               out / "errors.jsonl"]:
                p.unlink(missing_ok=True)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.options_path.exists():
            old = known_options(json.loads(self.options_path.read_text()))
            if old != opts_id:
                diff = sorted(k for k in set(old) | set(opts_id) if old.get(k) != opts_id.get(k))
                raise SystemExit(f"error: {out} holds a build made with other options ({', '.join(diff)} differ); "
                                 "rerun with the same options to resume, or pass --overwrite")
        else:
            leftovers = list(out.glob("*.tar"))
            if leftovers:
                raise SystemExit(f"error: {out} already holds shards ({leftovers[0].name}, ...) that this tool did "
                                 "not record; choose another folder or pass --overwrite")
            self.options_path.write_text(json.dumps(opts_id, indent=1))
        for tmp in out.glob("*.tar.tmp"):  # an interrupted shard: its samples are rewritten
            tmp.unlink()
        self.shards = self._read(self.shards_path)
        for s in self.shards:
            path = out / s["name"]
            if not path.exists() or path.stat().st_size != s["bytes"]:
                raise SystemExit(f"error: {path} is recorded as complete but is missing or changed; "
                                 "pass --overwrite to rebuild")
        self.errors = {self._uid(e): e for e in self._read(self.errors_path)}
        self._shards_f = open(self.shards_path, "a")
        self._errors_f = open(self.errors_path, "a")

    @staticmethod
    def _read(path: Path) -> list[dict]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: the work it described is redone
                break
        return out

    @staticmethod
    def _uid(e: dict) -> str:
        return json.dumps([e["source"], e.get("clip"), e["stage"]])

    def add_shard(self, rec: dict):
        self.shards.append(rec)
        self._shards_f.write(json.dumps(rec) + "\n")
        self._shards_f.flush()
        os.fsync(self._shards_f.fileno())

    def add_error(self, e: dict):
        if self._uid(e) not in self.errors:
            self.errors[self._uid(e)] = e
            self._errors_f.write(json.dumps(e) + "\n")
            self._errors_f.flush()

    def cursors(self) -> dict:
        """Per split: (shards done, (input index, clip) of the last sample in a completed shard)."""
        out = {}
        for s in self.shards:
            n, _ = out.get(s["split"], (0, None))
            out[s["split"]] = (n + 1, tuple(s["cursor"]))
        return out


def _results(inputs, opts: BuildOptions, workers: int):
    """``process`` over the inputs, yielded in input order; a bounded window of work in flight."""
    if workers <= 1:
        # one process, two threads: the frames of one input are JPEG-encoded while the next is decoded (and the
        # caller writes the one before). Both decord and the batched encoder release the GIL; Pillow's encoder
        # does not, and beside it decoding ran 1.7x slower.
        with ThreadPoolExecutor(1) as decoder, ThreadPoolExecutor(1) as encoder:
            window = deque()
            for inp in inputs:
                decoded = decoder.submit(process, inp, opts, False)
                window.append(encoder.submit(lambda d: encode_frames(d.result(), opts, batched=True), decoded))
                if len(window) > 4:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        return
    # spawn, not fork: decord and torch threads in a forked child can deadlock
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        window = deque()
        it = iter(inputs)
        for inp in it:
            window.append(pool.submit(process, inp, opts))
            if len(window) >= 4 * workers:
                break
        while window:
            yield window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(process, nxt, opts))


def build(src: Path, out: Path, opts: BuildOptions = BuildOptions(), workers: int = 1, num_partitions: int = 1,
          partition: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the shards; returns the manifest (also written to ``out/manifest.json``). The output folder (a
    partition's own, in a job array) is locked while this runs: a second build on it is refused.
    ``workers > 1`` runs ``process`` in spawned processes: a script calling this must do so under
    ``if __name__ == "__main__":`` (Python's rule for spawn), or its workers re-run the script."""
    if not 0 <= partition < num_partitions:
        raise ConfigError(f"--partition {partition} must be in [0, --num-partitions {num_partitions})")
    src = urls.location(str(src))  # a local path, or a URL of video2dataset shards
    out, publish_to = urls.remote_out(out)  # OUTPUT in a bucket: built in a local staging folder, then published
    if publish_to and num_partitions > 1:
        raise ConfigError(f"OUTPUT {urls.redact(publish_to)}: a job array builds into a folder its tasks share "
                          "(then merge); publish that folder afterwards")
    for folder in (out, *out.parents):  # the first that exists must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"OUTPUT {out}: {folder} is a file, not a folder; choose another output folder")
            break
    if num_partitions > 1:
        out = out / f"part-{partition:05d}"
    with FolderLock(out, "videomask build"):
        manifest = _build(src, out, opts, workers, num_partitions, partition, overwrite, progress)
        if publish_to:
            print(f"publishing {out} -> {urls.redact(publish_to)}", file=sys.stderr)
            urls.publish(out, publish_to, manifest)
        return manifest


def _build(src: Path, out: Path, opts: BuildOptions, workers: int, num_partitions: int, partition: int,
           overwrite: bool, progress: bool) -> dict:
    opts_id = {"input": urls.redact(src) if urls.is_url(src) else str(src.resolve()), "num_partitions": num_partitions,
               "partition": partition, **asdict(opts)}
    if (out / "manifest.json").exists() and not overwrite:
        manifest = json.loads((out / "manifest.json").read_text())
        if known_options(manifest["options"]) == opts_id:
            print(f"{out}: already complete ({manifest['inputs']['total']} inputs); nothing to do")
            return manifest
    journal = Journal(out, opts_id, overwrite)

    mine = None if num_partitions == 1 else (lambda key: partition_of(key, num_partitions) == partition)
    inputs, discover_errors = discover(src, opts.split, opts.kind, opts.text_field, opts.markup, shard_filter=mine)
    if mine is not None:  # an error of one input goes with that input's partition; one of the whole input to 0
        inputs = [i for i in inputs if mine(i.partition_key or i.id)]
        discover_errors = [e for e in discover_errors if (mine(e.get("partition_key") or e["id"]) if (
            "partition_key" in e or "id" in e) else partition == 0)]
    for e in discover_errors:
        journal.add_error(e)
    cursors = journal.cursors()
    writers = {}
    for split, (done, _) in cursors.items():
        writers[split] = SplitWriter(out, split, opts, done, journal.add_shard)

    def todo(index, inp):  # False when the input's samples are all in completed shards already
        cur = cursors.get(inp.split, (0, None))[1]
        return cur is None or index >= cur[0]

    pending = [(k, inp) for k, inp in enumerate(inputs) if todo(k, inp)]
    # inputs inside shards (video2dataset) get their video's bytes here, each shard streamed once, in order
    work = with_videos(p[1] for p in pending)
    for (k, inp), (samples, errors) in tqdm(zip(pending, _results(work, opts, workers)),
                                            total=len(pending), disable=not progress, desc="build", unit="input"):
        for e in errors:
            journal.add_error(e)
        cur = cursors.get(inp.split, (0, None))[1]
        writer = writers.setdefault(inp.split, SplitWriter(out, inp.split, opts, 0, journal.add_shard))
        for c, sample in enumerate(samples):
            if cur is not None and (k, c) <= cur:
                continue  # already in a completed shard
            writer.write(sample, (k, c))
    for w in writers.values():
        w.close()
    return finish(out, inputs, journal, opts_id)


def finish(out: Path, inputs, journal: Journal, opts_id: dict) -> dict:
    """Write ``errors.jsonl`` and ``manifest.json``; count inputs as written + rejected."""
    errors = list(journal.errors.values())
    rejected_sources = {e["source"] for e in errors if "clip" not in e}
    partial = {e["source"] for e in errors if "clip" in e} - rejected_sources
    n_rejected_inputs = sum(1 for i in inputs if i.source in rejected_sources)
    discover_rejected = sum(1 for e in errors if e["stage"] == "discover")
    counts = {"total": len(inputs) + discover_rejected, "written": len(inputs) - n_rejected_inputs,
              "rejected": n_rejected_inputs + discover_rejected, "partial": len(partial),
              "clips_rejected": sum(1 for e in errors if "clip" in e)}
    manifest = {"format": "videomask-shards/1", "options": opts_id, "inputs": counts, "splits": {},
                "shards": [{k: s[k] for k in ("name", "split", "samples", "bytes", "sha256")} for s in journal.shards],
                "errors": len(errors)}
    return write_manifest(out, manifest, errors)


def merge(out: Path) -> dict:
    """Gather ``out/part-*/`` (one per ``--partition``) into ``out``: shards renumbered per split in
    partition order (hard links where possible), manifests and error reports merged."""
    out = Path(out)
    first = next(iter(sorted(out.glob("part-*/manifest.json"))), None)
    if first is not None and "score_partition" in json.loads(first.read_text()):  # a scoring job array's parts
        from ..scoring.score import merge as merge_scores

        return merge_scores(out)
    with FolderLock(out, "videomask build merge"):
        return _merge(out)


def _merge(out: Path) -> dict:
    parts = sorted(out.glob("part-*"))
    if not parts:
        raise SystemExit(f"error: {out} has no part-* folders to merge")
    manifests = []
    for p in parts:
        if not (p / "manifest.json").exists():
            raise SystemExit(f"error: {p} has no manifest.json: that partition has not finished")
        manifests.append(json.loads((p / "manifest.json").read_text()))
    n = manifests[0]["options"]["num_partitions"]
    if len(parts) != n:
        raise SystemExit(f"error: {out} has {len(parts)} partitions of {n}; run the missing ones first")
    shards, errors, next_idx = [], [], {}
    for p, m in zip(parts, manifests):
        for s in m["shards"]:
            k = next_idx.get(s["split"], 0)
            next_idx[s["split"]] = k + 1
            name = f"{s['split']}-{k:06d}.tar"
            dst = out / name
            dst.unlink(missing_ok=True)
            try:
                os.link(p / s["name"], dst)
            except OSError:
                shutil.copyfile(p / s["name"], dst)
            shards.append({**s, "name": name})
        errors += [json.loads(line) for line in (p / "errors.jsonl").read_text().splitlines() if line]
    counts = {k: sum(m["inputs"][k] for m in manifests) for k in manifests[0]["inputs"]}
    options = {k: v for k, v in manifests[0]["options"].items() if k != "partition"}
    manifest = {"format": "videomask-shards/1", "options": options, "inputs": counts, "splits": {},
                "shards": shards, "errors": len(errors), "merged_from": [p.name for p in parts]}
    return write_manifest(out, manifest, errors)


def summary(manifest: dict, out: Path) -> str:
    c = manifest["inputs"]
    per_split = ", ".join(f"{k}: {v['samples']} samples in {v['shards']} shards" for k, v in manifest["splits"].items())
    return (f"{c['total']} inputs = {c['written']} written + {c['rejected']} rejected"
            f" ({c['partial']} written in part, {c['clips_rejected']} clips rejected)\n"
            f"{per_split or 'no samples'}\nshards, manifest.json and errors.jsonl in {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m videomask.prep.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=urls.location, help="folder, manifest (.csv/.jsonl), text corpus (.txt/.jsonl), or "
                   "video2dataset shards (a folder, a .tar or a URL: s3://bucket/v2d, 'https://host/{00000..00009}.tar')")
    p.add_argument("output", type=urls.location, help="folder for shards, manifest.json and errors.jsonl, or an "
                   "fsspec URL (s3://bucket/shards): built in a local staging folder, then uploaded, manifest last")
    helps = {"frames": "frames sampled uniformly per clip (T)", "size": "frame side after resize + centre crop (S)",
             "clip_seconds": "clip length in seconds", "clip_mode": "fixed windows, or whole transcript segments",
             "min_clip_fraction": "shortest accepted video, as a fraction of --clip-seconds",
             "max_samples": "samples per shard at most", "max_bytes": "bytes per shard at most",
             "split": "split of inputs that don't name one", "missing_transcript": "a video without a transcript: "
             "reject it, or keep it with empty text", "time_tolerance": "seconds a transcript may run past the "
             "video's end", "kind": "video or text input (auto: video if any video is found)",
             "text_field": "JSONL field holding the text", "backend": "video decoder",
             "transcript_encoding": "the transcripts' text encoding, e.g. cp1252 (default: UTF-8, else detected)",
             "markup": "text corpora in reStructuredText, Markdown or HTML lose their markup: auto (detected from "
             "the content; .rst/.md/.html by their extension), plain (kept as is), or name one"}
    choices = {"clip_mode": ["fixed", "segments"], "missing_transcript": ["reject", "keep"],
               "markup": ["auto", "plain", "rst", "markdown", "html"],
               "kind": ["auto", "video", "text"], "backend": ["auto", "decord", "pyav"]}
    for f in fields(BuildOptions):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       choices=choices.get(f.name), help=f"{helps.get(f.name, f.name)} (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes; the output is the same for any N")
    p.add_argument("--num-partitions", type=int, default=1, help="split the inputs over a job array of this size")
    p.add_argument("--partition", type=int, default=0, help="this job's partition; output in OUTPUT/part-NNNNN")
    p.add_argument("--overwrite", action="store_true", help="delete what OUTPUT holds and start again")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any input or clip was rejected")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "merge":
        mp_ = argparse.ArgumentParser(prog="python -m videomask.prep.build merge",
                                      description="merge the part-* folders of a partitioned build")
        mp_.add_argument("output", type=Path)
        out = mp_.parse_args(argv[1:]).output
        try:
            manifest = merge(out)
        except VideomaskError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if "scores" not in manifest:
            print(summary(manifest, out))
        else:
            print(f"{sum(s['samples'] for s in manifest['shards'])} samples in {len(manifest['shards'])} shards -> {out}")
        return 0 if sum(s["samples"] for s in manifest["shards"]) else 1
    p = parser()
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    opt_names = {f.name for f in fields(BuildOptions)}
    try:
        opts = BuildOptions(**{k: v for k, v in vars(a).items() if k in opt_names})
        manifest = build(a.input, a.output, opts, a.workers, a.num_partitions, a.partition, a.overwrite,
                         progress=not a.quiet)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.output) / f"part-{a.partition:05d}" if a.num_partitions > 1 else urls.redact(a.output)
    print(summary(manifest, out))
    if not manifest["shards"]:
        print("error: nothing was written; see errors.jsonl", file=sys.stderr)
        return 1
    if a.strict and manifest["errors"]:
        print(f"error: --strict and {manifest['errors']} inputs or clips were rejected; see errors.jsonl",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
