"""The n-gram vocabulary of PMI-masking (Levine et al., ICLR 2021), computed from the target corpus.

    python -m videomask.scoring.pmi TARGET [TARGET ...] --out ngrams.json [--max-n 3 --min-count 5 --top 1000]

An n-gram's score is its PMI against its best split ("segmentation-aware" PMI of
the paper): ``log p(w1..wn) - max over splits (log p(left) + log p(right))``, with
p the relative frequency among n-grams of that length. N-grams seen fewer than
``--min-count`` times are skipped; the ``--top`` highest form the vocabulary that
``masking.pmi`` masks as single units. Tokens are ``anchors.tokens`` (lowercased
words); n-grams never cross a document boundary.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

from ..anchors import read_texts, tokens
from ..errors import VideomaskError


def ngram_counts(docs, max_n: int) -> list[Counter]:
    counts = [Counter() for _ in range(max_n + 1)]
    for d in docs:
        t = tokens(d)
        for n in range(1, max_n + 1):
            counts[n].update(tuple(t[i:i + n]) for i in range(len(t) - n + 1))
    return counts


def pmi_vocabulary(docs, max_n: int = 3, min_count: int = 5, top: int = 1000) -> list[dict]:
    counts = ngram_counts(docs, max_n)
    totals = [sum(c.values()) or 1 for c in counts]
    logp = lambda g: math.log(counts[len(g)][g] / totals[len(g)])  # noqa: E731
    rows = []
    for n in range(2, max_n + 1):
        for g, c in counts[n].items():
            if c >= min_count:
                best_split = max(logp(g[:k]) + logp(g[k:]) for k in range(1, n))
                rows.append({"ngram": list(g), "count": c, "pmi": logp(g) - best_split})
    rows.sort(key=lambda r: (-r["pmi"], -r["count"], r["ngram"]))
    return rows[:top]


def load(path) -> set[tuple[str, ...]]:
    return {tuple(r["ngram"]) for r in json.loads(Path(path).read_text())["ngrams"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.scoring.pmi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("ngrams.json"))
    p.add_argument("--max-n", type=int, default=3)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--top", type=int, default=1000)
    a = p.parse_args(argv)
    try:
        docs = [d for t in a.targets for d in read_texts(t)]
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = pmi_vocabulary(docs, a.max_n, a.min_count, a.top)
    a.out.write_text(json.dumps({"ngrams": rows, "options": {k: str(v) for k, v in vars(a).items()}}, indent=1))
    print(f"{len(rows)} n-grams -> {a.out}" + (f"; top: {' '.join(rows[0]['ngram'])}" if rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
