"""Difference anchors: the words that make the target domain different (TF-ICF).

    python -m videomask.anchors TARGET [TARGET ...] [--reference wordfreq:en | PATH ...] [--k 20] --out anchors.json
    python -m videomask.anchors --show anchors.json

TARGET: shard folders (their transcripts) or text files / folders (.txt, .jsonl
``text`` field, .srt/.vtt). REFERENCE: text files / folders, or ``wordfreq:LANG``
(the default, ``wordfreq:en``): general-language frequencies from the
``wordfreq`` package (web, books, Wikipedia, subtitles).

Definition (docs/method.md §2)::

    score(w) = tf_T(w) * log(1 / p_R(w))

- tokens: ``videomask.transcripts.WORD_RE`` matches, lowercased. ``tf_T(w)`` is
  ``count_T(w) / N_T`` with ``N_T`` the number of *all* target tokens.
- candidates: alphabetic tokens (inner ' and - allowed) of at least ``--min-length``
  letters (3), not in the stop-word list of the ``stop-words`` package, seen at
  least ``--min-count`` times (3) in the target.
- ``p_R(w)``: add-alpha smoothed reference frequency
  ``(count_R(w) + alpha) / (N_R + alpha * V)`` with ``V`` the size of the union of
  the target and reference vocabularies and ``alpha`` = ``--smoothing`` (1.0). For
  ``wordfreq:`` the reference is taken as a corpus of ``N_R = 1e9`` tokens with
  ``count_R(w) = 1e9 * word_frequency(w)``, so a word wordfreq has never seen gets
  a small, finite ``p_R`` instead of a division by zero.
- ranking: by score, descending; ties by target count, descending, then by the
  word, alphabetically. The top ``--k`` are the anchors.
- controls (``--method``): ``freq`` ranks by ``tf_T`` alone ("anchors without
  ICF"); ``random`` draws K candidates uniformly with ``--seed``.
- ``--method logodds`` (beyond the paper; docs/method.md §2): the z-score of the
  log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and Quinn
  2008, "Fightin' Words"), target against reference::

      delta(w) = log((y_T + a_w) / (n_T + a_0 - y_T - a_w)) - log((y_R + a_w) / (n_R + a_0 - y_R - a_w))
      z(w)     = delta(w) / sqrt(1 / (y_T + a_w) + 1 / (y_R + a_w))

  with ``a_w = a_0 * p_R(w)`` (the prior: the reference's smoothed frequencies),
  ``a_0`` = ``--prior-size``, by default the reference's size ``n_R`` (the prior *is* the
  reference's counts: a general word's log-odds are shrunk to 0 unless the target
  uses it far more often; with ``a_0`` = 1000 the man-page corpus's top 20 held 12 common
  English words, with ``n_R`` 3, see the README), and ``y_R`` the reference count plus the
  smoothing alpha (the add-alpha of ``p_R``): with the raw count a word the reference
  never saw would get the variance ``1 / a_w``, enormous for a 10^9-token reference,
  and the domain's own words would score near zero. Unlike TF-ICF it weighs how *surely* a word
  is over-represented, so a frequent general word that the target uses only a little
  more often than general English (set, data, used) scores low.

The output ``anchors.json`` lists each anchor with its score, target count,
target frequency and reference frequency, the options used, and ``hash``: the
identity of the anchor set that scored shards carry. ``--anchors-file FILE`` (one
word per line) replaces (``--anchors-mode replace``) or extends the computed list.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import logging
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

from . import urls
from .errors import DataError, MissingError, VideomaskError
from .prep.inputs import read_corpus
from .prep.transcripts import (
    WORD_RE,
    read_text,
    read_transcript,
)

logger = logging.getLogger(__name__)
WORDFREQ_CORPUS_SIZE = 1e9
TEXT_EXTS = (".txt", ".jsonl", ".srt", ".vtt", ".rst", ".md", ".markdown", ".html", ".htm")


@lru_cache(maxsize=None)
def stopwords(lang: str = "en") -> frozenset:
    from stop_words import get_stop_words

    return frozenset(get_stop_words(lang))


def tokens(text: str) -> list[str]:
    return [m.group(0).lower() for m in WORD_RE.finditer(text)]


def is_candidate(word: str, min_length: int, stop: frozenset) -> bool:
    letters = word.replace("'", "").replace("’", "").replace("-", "")
    return letters.isalpha() and len(letters) >= min_length and word not in stop


def _text_files(path: Path):
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_EXTS and p.is_file())
    return [path]


def read_texts(path, split: str | None = None, markup: str = "auto") -> list[str]:
    """The documents of a shard folder (``split``: only that split's samples), a text file, or a folder
    of text files: as the build reads them (a document a line of ``.txt``, a JSON line's ``text``, a
    reStructuredText, Markdown or HTML file a document without its markup: ``markup`` as the build's)."""
    if urls.is_url(path):  # shards in a bucket, on a server or from a command
        from .data import dataset

        return [s["text"] for s in dataset(path, split, frames=False)]
    path = Path(path)
    if not path.exists():
        raise MissingError(f"{path}: no such file or folder")
    if path.is_dir() and ((path / "manifest.json").exists() or any(path.glob("*.tar"))):
        from .data import dataset

        return [s["text"] for s in dataset(path, split, frames=False)]
    docs = []
    for f in _text_files(path):
        if f.suffix.lower() in (".srt", ".vtt"):
            docs += [c.text for c in read_transcript(f)[0]]
            continue
        found, errors = read_corpus(f, f.parent, "train", "text", markup)
        if errors:  # what the build would reject too (a file too large or unparsable, a malformed JSON line ...):
            # named, not counted
            logger.warning(f"{f}: {len(errors)} left out ({errors[0]['source']}: {errors[0]['reason']}"
                           f"{', ...' if len(errors) > 1 else ''})")
        docs += [i.text for i in found]
    return docs


def count(docs) -> Counter:
    c = Counter()
    for d in docs:
        c.update(tokens(d))
    return c


class Reference:
    """``p_R(w)`` with add-alpha smoothing, from counts or from wordfreq."""

    def __init__(self, source: str | list, alpha: float = 1.0, markup: str = "auto"):
        self.alpha = alpha
        if isinstance(source, str) and source.startswith("wordfreq:"):
            import wordfreq

            self.lang = source.split(":", 1)[1] or "en"
            self.counts, self.total = None, WORDFREQ_CORPUS_SIZE
            self._freq = lambda w: wordfreq.word_frequency(w, self.lang)
            self.vocab = set()
        else:
            paths = [source] if isinstance(source, (str, Path)) else source
            self.counts = Counter()
            for p in paths:
                self.counts += count(read_texts(p, markup=markup))
            self.total = sum(self.counts.values())
            if not self.total:
                raise DataError(f"reference corpus {source} holds no words")
            self.vocab = set(self.counts)

    def count(self, word: str) -> float:
        return self.counts[word] if self.counts is not None else self._freq(word) * self.total

    def prob(self, word: str, vocab_size: int) -> float:
        return (self.count(word) + self.alpha) / (self.total + self.alpha * vocab_size)


METHODS = ("tficf", "logodds", "freq", "random")


def log_odds_z(y_t: float, n_t: float, y_r: float, n_r: float, prior: float, prior_size: float) -> float:
    """Monroe et al. (2008) eq. 22 and 24: the log-odds ratio of a word between two corpora with an
    informative Dirichlet prior (``prior`` = a_w, ``prior_size`` = a_0), divided by its standard deviation."""
    delta = (math.log((y_t + prior) / (n_t + prior_size - y_t - prior))
             - math.log((y_r + prior) / (n_r + prior_size - y_r - prior)))
    return delta / math.sqrt(1 / (y_t + prior) + 1 / (y_r + prior))


def compute(target: Counter, reference: Reference, k: int = 20, method: str = "tficf", min_count: int = 3,
            min_length: int = 3, seed: int = 0, lang: str = "en", prior_size: float | None = None
            ) -> tuple[list[dict], dict]:
    """Ranked anchors and a summary. See the module docstring for every rule."""
    n_target = sum(target.values())
    if n_target == 0:
        raise DataError("the target corpus holds no words")
    if method not in METHODS:
        raise DataError(f"unknown anchor method {method!r}: choose one of {', '.join(METHODS)}")
    stop = stopwords(lang)
    candidates = sorted(w for w, c in target.items() if c >= min_count and is_candidate(w, min_length, stop))
    if not candidates:
        raise DataError(f"no candidate words in the target corpus ({len(target)} distinct words; none is alphabetic, "
                         f">= {min_length} letters, not a stop word and seen >= {min_count} times): "
                         "lower --min-count?")
    vocab_size = len(set(target) | reference.vocab)
    prior_size = reference.total if prior_size is None else prior_size
    rows = []
    for w in candidates:
        p_r = reference.prob(w, vocab_size)
        tf = target[w] / n_target
        if method == "tficf":
            score = tf * math.log(1 / p_r)
        elif method == "logodds":
            score = log_odds_z(target[w], n_target, reference.count(w) + reference.alpha, reference.total,
                               prior_size * p_r, prior_size)
        else:
            score = tf
        rows.append({"word": w, "score": score, "target_count": target[w], "target_freq": tf, "reference_freq": p_r})
    if method == "random":
        rows = random.Random(seed).sample(rows, min(k, len(rows)))
    else:
        rows.sort(key=lambda r: (-r["score"], -r["target_count"], r["word"]))
    summary = {"target_tokens": n_target, "target_vocab": len(target), "candidates": len(candidates),
               "vocab_size": vocab_size}
    if k > len(rows):
        summary["warning"] = f"asked for {k} anchors but only {len(rows)} candidate words exist; kept them all"
    return rows[:k], summary


def anchor_hash(words) -> str:
    """Identity of an anchor set (order-free): scored shards carry it, training checks it."""
    return hashlib.sha256("\n".join(sorted(set(words))).encode()).hexdigest()[:16]


def read_word_list(path: Path) -> list[str]:
    words = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        w = line.split("#", 1)[0].strip().lower()
        if not w:
            continue
        if not WORD_RE.fullmatch(w):
            raise DataError(f"{path}:{n}: {line.strip()!r} is not one word")
        words.append(w)
    if not words:
        raise DataError(f"{path}: no words in the anchor list")
    return words


def load(path) -> dict:
    """Read an ``anchors.json`` and check it."""
    path = Path(path)
    try:
        a = json.loads(read_text(path))
        words = [r["word"] for r in a["anchors"]]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: not an anchors file (expected JSON with an 'anchors' list of {{'word': ...}})") \
            from None
    if not words:
        raise DataError(f"{path}: the anchor list is empty")
    if a.get("hash") != anchor_hash(words):
        raise DataError(f"{path}: its hash does not match its words (edited by hand?); rerun "
                         "`python -m videomask.anchors` or use --anchors-file for a hand-written list")
    return a


def show(a: dict) -> str:
    lines = [f"{'#':>3}  {'word':<20} {'score':>9} {'count':>7} {'target':>10} {'reference':>10}"]
    for i, r in enumerate(a["anchors"], 1):
        f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        lines.append(f"{i:>3}  {r['word']:<20} {f(r.get('score'), '9.5f')} {f(r.get('target_count'), '7d')} "
                     f"{f(r.get('target_freq'), '10.2e')} {f(r.get('reference_freq'), '10.2e')}")
    lines.append(f"method {a['options']['method']}, hash {a['hash']}")
    return "\n".join(lines)


def build_anchors(targets, reference="wordfreq:en", k=20, method="tficf", min_count=3, min_length=3, smoothing=1.0,
                  seed=0, anchors_file=None, anchors_mode="extend", split: str | None = None,
                  prior_size: float | None = None, markup: str = "auto") -> dict:
    """``split``: read only that split of target shard folders (anchors from held-out text would leak it);
    ``markup``: how text files' markup is read (``videomask.prep.markup``)."""
    docs = [d for t in targets for d in read_texts(t, split, markup)]
    target = count(docs)
    if not target:
        raise DataError(f"the target corpus ({', '.join(map(str, targets))}) holds no words")
    ref = Reference(reference if isinstance(reference, str) else list(reference), smoothing, markup)
    if anchors_file and anchors_mode == "replace":
        rows, summary = [], {"target_tokens": sum(target.values()), "target_vocab": len(target)}
    else:
        rows, summary = compute(target, ref, k, method, min_count, min_length, seed, prior_size=prior_size)
    if anchors_file:
        n, vocab = sum(target.values()), len(set(target) | ref.vocab)
        have = {r["word"] for r in rows}
        for w in read_word_list(Path(anchors_file)):
            if w not in have:
                have.add(w)
                rows.append({"word": w, "score": None, "target_count": target[w], "target_freq": target[w] / n,
                             "reference_freq": ref.prob(w, vocab), "user": True})
    options = {"targets": [str(t) for t in targets], "reference": reference if isinstance(reference, str) else
               [str(r) for r in reference], "k": k, "method": method, "min_count": min_count,
               "min_length": min_length, "smoothing": smoothing, "seed": seed, "prior_size": prior_size, "stopwords": "stop-words:en",
               "anchors_file": str(anchors_file) if anchors_file else None, "anchors_mode": anchors_mode,
               "split": split, **({"markup": markup} if markup != "auto" else {})}
    return {"format": "videomask-anchors/1", "anchors": rows, "hash": anchor_hash(r["word"] for r in rows),
            "options": options, **summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.anchors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", type=urls.location, help="target shards (a folder or a URL: videomask.urls) or text files/folders")
    p.add_argument("--reference", nargs="+", default=["wordfreq:en"],
                   help="reference text files/folders, or wordfreq:LANG (default: wordfreq:en)")
    p.add_argument("--split", default=None, help="only this split of target shard folders (e.g. train: anchors "
                   "must not read held-out text)")
    p.add_argument("--k", type=int, default=20, help="number of anchors (default: 20)")
    p.add_argument("--method", choices=list(METHODS), default="tficf",
                   help="tficf (the paper's, default); logodds: log-odds z-score with an informative Dirichlet "
                   "prior (recommended on real text, see the README); freq: target frequency only (no ICF); "
                   "random: K random candidates")
    p.add_argument("--prior-size", type=float, default=None,
                   help="a_0 of --method logodds (default: the reference's size in tokens)")
    p.add_argument("--min-count", type=int, default=3, help="least target occurrences of a candidate (default: 3)")
    p.add_argument("--min-length", type=int, default=3, help="least letters in a candidate (default: 3)")
    p.add_argument("--smoothing", type=float, default=1.0, help="add-alpha smoothing of p_R (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of --method random")
    p.add_argument("--markup", choices=["auto", "plain", "rst", "markdown", "html"], default="auto",
                   help="text files in reStructuredText, Markdown or HTML lose their markup (auto: detected, as the "
                   "build does; plain: kept as is)")
    p.add_argument("--anchors-file", type=Path, help="hand-written anchors, one word per line")
    p.add_argument("--anchors-mode", choices=["extend", "replace"], default="extend",
                   help="the hand-written list extends (default) or replaces the computed one")
    p.add_argument("--out", type=Path, default=Path("anchors.json"), help="output file (default: anchors.json)")
    p.add_argument("--show", nargs="?", const=True, default=False, metavar="ANCHORS_JSON",
                   help="print the anchors as a table (of ANCHORS_JSON, or of the file just written)")
    a = p.parse_args(argv)
    if isinstance(a.show, str) and not a.targets:
        print(show(load(a.show)))
        return 0
    if not a.targets:
        p.error("give at least one TARGET (or --show ANCHORS_JSON)")
    if a.k < 1:
        p.error("--k must be >= 1")
    reference = a.reference[0] if len(a.reference) == 1 and a.reference[0].startswith("wordfreq:") else a.reference
    try:
        result = build_anchors(a.targets, reference, a.k, a.method, a.min_count, a.min_length, a.smoothing, a.seed,
                               a.anchors_file, a.anchors_mode, a.split, a.prior_size, a.markup)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    if a.show:
        print(show(result))
    print(f"{len(result['anchors'])} anchors -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
