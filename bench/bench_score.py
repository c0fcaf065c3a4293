"""Scoring throughput.

    python bench/bench_score.py [--clips 8 --model ViT-B-32]

1. frames/s of the scoring stage (read shards, decode JPEG, dense CLIP features,
   patch and word scores, write shards) / a plain open_clip ``encode_image`` loop
   over the same frames, already decoded, with the same model and batch size;
   with ``--workers 0`` (decoding in the main process) and 2 DataLoader workers,
   and the share of the stage's time spent waiting for data. Goal: ratio >= 0.9.
   The scorer is loaded once and reused (as when scoring several folders), so the
   vocabulary's word embeddings are computed in the first round only; their cost in
   a fresh run is printed apart (it depends on the words per frame of the input).
   The model has the real architecture with random weights (throughput does not
   depend on the weights; nothing is downloaded).
2. words/s of word scoring on the world's transcripts: the vocabulary table the
   stage builds (each distinct word embedded once), and the cached per-word path.
"""
import argparse
import json
import logging
import shutil
import time

import torch
from common import best_of, make_world, report

from videomask import anchors, data
from videomask.prep import build
from videomask.scoring import score
from videomask.scoring.clip_scorer import ClipScorer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # "no pretrained weights": on purpose here
    w = make_world(a.clips)
    build.build(w / "target.jsonl", w / "shards", build.BuildOptions(frames=8, size=224, clip_seconds=6, max_samples=2),
                progress=False)
    (w / "anchors.json").write_text(json.dumps(anchors.build_anchors([w / "shards"], "wordfreq:en", min_count=1)))
    frames = torch.cat([s["frames"] for s in data.dataset(w / "shards")])
    clip = ClipScorer(a.model)

    waits = {}

    def ours(workers):
        def run():
            r = score.score_shards(w / "shards", w / "scored", w / "anchors.json", clip, batch_size=a.batch_size,
                                   overwrite=True, progress=False, workers=workers)
            waits[workers] = r["timing"]["data_wait_seconds"] / r["timing"]["seconds"]
        return run

    @torch.inference_mode()
    def baseline():
        for i in range(0, len(frames), a.batch_size):
            clip.model.encode_image(clip.preprocess(frames[i:i + a.batch_size]))

    t_0, t_2, t_base = best_of(ours(0), ours(2), baseline, repeats=3)
    n = len(frames)
    report(f"scoring frames/s ({a.model}, {n} frames), --workers 0", n / t_0, n / t_base, "frames/s", "goal >= 0.9")
    report(f"scoring frames/s ({a.model}, {n} frames), --workers 2", n / t_2, n / t_base, "frames/s", "goal >= 0.9")
    print(f"data wait (share of the stage's time): --workers 0 {waits[0]:.1%}, --workers 2 {waits[2]:.1%}; "
          f"2 workers / 0: {t_0 / t_2:.2f}x")

    big = make_world(96)  # the demo's transcripts: a realistic vocabulary of a few dozen words
    build.build(big / "target.jsonl", big / "shards", build.BuildOptions(frames=1, size=32, clip_seconds=6),
                progress=False)
    words = [x["w"] for s in data.dataset(big / "shards", frames=False) for x in s["words"]]
    vocab = sorted({x.lower() for x in words})
    scorer = score.Scorer(ClipScorer(a.model), ["anchor"], "bench")  # a fresh model: nothing memoised
    t = time.perf_counter()
    scorer.word_table(vocab)
    t_table = time.perf_counter() - t
    t = time.perf_counter()
    [scorer.word_scores([{"w": x}]) for x in words]
    t_look = time.perf_counter() - t
    print(f"word table (the stage's word scores, cold): {len(vocab)} distinct words in {t_table:.2f} s "
          f"({len(vocab) / t_table:.0f} words/s), then {len(words) / t_look:.0f} word lookups/s")
    cold = ClipScorer(a.model)
    t = time.perf_counter()
    cold.encode_words(words)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    cold.encode_words(words)
    t_warm = time.perf_counter() - t
    print(f"word scoring: {len(words)} words ({len({x.lower() for x in words})} distinct): cold cache "
          f"{len(words) / t_cold:.0f} words/s, warm cache {len(words) / t_warm:.0f} words/s")
    shutil.rmtree(w)
    shutil.rmtree(big)


if __name__ == "__main__":
    main()
