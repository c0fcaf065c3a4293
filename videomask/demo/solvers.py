"""Reference solvers of the world's colour questions: what the inputs alone give away.

    python -m videomask.demo.solvers SHARDS [--split test]

- ``answers only``: the candidate that was most often right in the train split (no clip at all);
  the world draws the answer so that this is chance (1/4).
- ``transcript``: the candidate the clip's transcript names (first named one; none named: the
  answers-only pick). High: the transcripts name the key colour in most clips, which is why the
  demo's downstream question is read without them (``finetune context=none``).
- ``frames (pixel colour)``: the candidate whose RGB colour covers the most pixels of the frames:
  a hand-made solver that knows the colour palette, an upper reference for what the frames hold.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

import numpy as np

from .. import data
from .world import COLOURS


def solve(shards, split: str = "test") -> dict:
    prior = Counter()
    for s in data.dataset(shards, "train", frames=False):
        m = s["meta"]
        prior[m["answers"][m["answer_idx"]]] += 1
    right = Counter()
    n = 0
    for s in data.dataset(shards, split):
        m, gold = s["meta"], s["meta"]["answer_idx"]
        answers = m["answers"]
        by_prior = max(range(len(answers)), key=lambda i: (prior[answers[i]], -i))
        said = [i for i in range(len(answers)) if re.search(rf"\b{re.escape(answers[i])}\b", s["text"].lower())]
        by_text = min(said, key=lambda i: s["text"].lower().index(answers[i])) if said else by_prior
        frames = s["frames"].permute(0, 2, 3, 1).numpy().astype(int)
        cover = [(np.abs(frames - np.array(COLOURS[a])).sum(-1) < 90).sum() for a in answers]
        right["answers only"] += by_prior == gold
        right["transcript"] += by_text == gold
        right["frames (pixel colour)"] += int(np.argmax(cover)) == gold
        n += 1
    return {"split": split, "n": n, **{k: v / n for k, v in right.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.demo.solvers", description=__doc__.split("\n\n")[0])
    p.add_argument("shards")
    p.add_argument("--split", default="test")
    a = p.parse_args(argv)
    r = solve(a.shards, a.split)
    print(f"{r['n']} {a.split} questions: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k not in ("n", "split")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
