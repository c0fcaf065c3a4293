"""Multiple-choice QA encoding: the clip through the ViT once per question vs once per candidate.

    python bench/bench_finetune.py [--preset small --clips 8 --candidates 4 --frames 8 --size 128]

Times ``Finetuner.pooled`` (forward, no gradients) on one batch of clips with K candidates
each: ``joint(..., repeat=K)`` (what ``videomask.finetune`` does) against the same batch with
the frames repeated K times (every candidate re-encodes its clip), best of several rounds, and
prints the ratio. Both give the same features (checked).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import best_of  # noqa: E402

from videomask import finetune as ft  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--text", type=int, default=64)
    a = p.parse_args()
    cfg = ft.load_config([], [f"model.preset={a.preset}", "task=mcqa", "shards=unused"])
    model, _, tok = ft.build_finetuner(cfg, None)
    model.eval()
    g = torch.Generator().manual_seed(0)
    B, K = a.clips, a.candidates
    ids = torch.randint(1000, 2000, (B * K, a.text), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "repeat": K,
             "frames": torch.randint(0, 255, (B, a.frames, 3, a.size, a.size), dtype=torch.uint8, generator=g),
             "frame_valid": torch.ones(B, a.frames, dtype=torch.bool)}
    per_candidate = {**batch, "repeat": 1, "frames": batch["frames"].repeat_interleave(K, 0),
                     "frame_valid": batch["frame_valid"].repeat_interleave(K, 0)}
    with torch.no_grad():
        assert torch.allclose(model.pooled(batch), model.pooled(per_candidate), atol=1e-4)
        once, every = best_of(lambda: model.pooled(batch), lambda: model.pooled(per_candidate), repeats=3)
    print(f"{a.preset}: {B} clips x {K} candidates, {a.frames} frames of {a.size} px, {a.text} tokens")
    print(f"clip once per question: {once * 1000:.0f} ms; once per candidate: {every * 1000:.0f} ms; "
          f"speed-up {every / once:.2f}x")


if __name__ == "__main__":
    main()
