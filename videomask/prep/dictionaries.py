"""General English and a computing domain with a labelled task, from dictionaries Debian ships (offline).

    python -m videomask.prep.dictionaries wordnet OUT [--wordnet /usr/share/wordnet]
    python -m videomask.prep.dictionaries foldoc OUT [--dictd /usr/share/dictd] [--per-class 50]
    bash data_prep/dictionaries.sh OUT          # both, from the Debian packages (fetched if not installed)

``wordnet`` (package ``wordnet-base``, WordNet 3.0 licence: use, copy and distribute with its notice):
``OUT/{train,test}/wordnet.txt``, the glosses of WordNet's 117,659 synsets (definitions and example
sentences), one synset a line; 2% held out by a stable hash of the synset. General English: the base
stage of the text ablation restores the masked-LM head of a sentence-embedding model on it.

``foldoc`` (``dict-foldoc``, the Free On-line Dictionary of Computing, GNU FDL; ``dict-jargon``, the
Jargon File, if present): every entry's definition, without its subject tag, cross-reference braces,
URLs and date. Entries whose tags (every sense's) are exactly one of ``--classes`` make the task (``OUT/task/{train,dev,
test}.jsonl``, "Don't Stop Pretraining" layout: which subject is this computing term filed under?):
``--per-class`` each in train and in dev, the rest test. Every other entry (other tags, several tags,
none) and the Jargon File's are the unlabelled corpus (``OUT/corpus/corpus.jsonl``, at most
``--corpus-max``): a domain corpus that holds no task document (an entry under a task entry's headword, or
sharing half its word 8-grams with one, goes to ``errors.jsonl`` as ``overlaps_task``). Assignments follow a stable hash of the
headword, so a rerun writes the same files. ``OUT/manifest.json``: sources, package versions, counts;
``OUT/errors.jsonl``: entries that could not be read or are too short, with the reason.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ..errors import DataError, MissingError, VideomaskError

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: FOLDOC subjects with a few hundred single-tag entries each (counts in dict-foldoc 20230119-1)
CLASSES = ("language", "networking", "programming", "operating system", "hardware")


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def stable_unit(text: str) -> float:
    """A number in [0, 1) from ``text`` alone (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


def dictd_entries(base: Path):
    """(headword, entry text) of a dictd dictionary ``base`` (``base.index`` + ``base.dict.dz`` or ``base.dict``),
    each entry once (several headwords may point at one entry: the first names it); the ``00-database-*``
    metadata entries are left out."""
    index = base.with_name(base.name + ".index")
    body = next((p for p in (base.with_name(base.name + ".dict.dz"), base.with_name(base.name + ".dict")) if p.exists()),
                None)
    if not index.exists() or body is None:
        raise MissingError(f"{base}: no dictd dictionary there (want {index.name} and {base.name}.dict[.dz])")
    raw = gzip.open(body).read() if body.suffix == ".dz" else body.read_bytes()  # dictzip is gzip-compatible
    seen = set()
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{index}:{n}: not 'headword<TAB>offset<TAB>length'")
        word, offset, length = parts[0], _b64(parts[1]), _b64(parts[2])
        if word.startswith("00-database-") or word.startswith("00database") or offset in seen:
            continue
        seen.add(offset)
        yield word, raw[offset:offset + length].decode("utf-8", "replace")


# -- WordNet ---------------------------------------------------------------------------------------------------
def wordnet_glosses(root: Path):
    """(synset id, gloss) of every synset in WordNet's ``data.{noun,verb,adj,adv}`` under ``root``."""
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise MissingError(f"{root}: WordNet's data files are missing ({', '.join(missing)}); install wordnet-base")
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  "):  # the licence header
                continue
            head, sep, gloss = line.partition(" | ")
            if sep:
                yield f"{f.suffix[1:]}:{head.split(' ', 1)[0]}", " ".join(gloss.split())


def prepare_wordnet(root: Path, out: Path, test_share: float = 0.02) -> dict:
    out = Path(out)
    lines = {"train": [], "test": []}
    for sid, gloss in wordnet_glosses(Path(root)):
        lines["test" if stable_unit(sid) < test_share else "train"].append(gloss)
    for split, rows in lines.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "wordnet.txt").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    manifest = {"source": str(root), "package": package_version("wordnet-base"), "licence": "WordNet 3.0 licence",
                "counts": {k: len(v) for k, v in lines.items()}, "test_share": test_share}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# -- FOLDOC ------------------------------------------------------------------------------------------------------
#: a subject-tag group: "<language>", "<networking, standard>", "<language, LISP, programming>" (one per sense)
TAG = re.compile(r"<([a-z][a-z ]{0,40}(?:,\s*[A-Za-z][A-Za-z0-9 .+/-]{0,40}){0,6})>")
DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)\s*$")
URL = re.compile(r"\(?\b(?:https?|ftp)://\S+")


def clean(text: str) -> str:
    """Cross-reference braces kept as their words (``{Unix} {shells}`` -> ``Unix shells``), a link's text without
    its URL, the closing date dropped, white space collapsed."""
    text = DATE.sub("", text.strip())
    text = URL.sub("", text)
    text = text.replace("{", "").replace("}", "")
    return " ".join(text.split())


def foldoc_entry(entry: str) -> tuple[list[str], str]:
    """(subject tags, definition) of a FOLDOC entry: its headword lines (before the first blank line) dropped;
    the distinct tags of every sense's ``<tag, tag>`` group (lower case, in order), every group removed from the
    text (a multi-sense entry carries one per sense: none may stay in a task text)."""
    head, _, body = entry.partition("\n\n")
    body = body or head
    tags = []
    for m in TAG.finditer(body):
        for t in m.group(1).split(","):
            t = " ".join(t.split()).lower()
            if t and t not in tags:
                tags.append(t)
    return tags, clean(TAG.sub(" ", body))


def ngrams(text: str, n: int = 8) -> set:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jargon_entry(entry: str) -> str:
    head, _, body = entry.partition("\n")
    return clean(body)


def prepare_foldoc(dictd: Path, out: Path, classes=CLASSES, per_class: int = 50, corpus_max: int = 0,
                   min_words: int = 8) -> dict:
    dictd, out = Path(dictd), Path(out)
    task = {c: [] for c in classes}
    corpus, errors = [], []
    for word, entry in dictd_entries(dictd / "foldoc"):
        tags, text = foldoc_entry(entry)
        if len(text.split()) < min_words:
            errors.append({"source": f"foldoc:{word}", "reason": "too_short", "words": len(text.split())})
            continue
        row = {"text": text, "term": word, "source": "foldoc"}
        if len(tags) == 1 and tags[0] in task:
            task[tags[0]].append({**row, "label": tags[0]})
        else:
            corpus.append({**row, "tags": tags})
    jargon = dictd / "jargon"
    if jargon.with_name("jargon.index").exists():
        for word, entry in dictd_entries(jargon):
            text = jargon_entry(entry)
            if len(text.split()) < min_words:
                errors.append({"source": f"jargon:{word}", "reason": "too_short", "words": len(text.split())})
                continue
            corpus.append({"text": text, "term": word, "source": "jargon", "tags": []})
    # the corpus holds no task document: not under the same headword (the Jargon File and FOLDOC share terms), and
    # not as a near-copy (half its word 8-grams in a task entry)
    terms = {r["term"].lower() for rows in task.values() for r in rows}
    grams = set().union(*(ngrams(r["text"]) for rows in task.values() for r in rows))
    kept = []
    for r in corpus:
        g = ngrams(r["text"])
        share = len(g & grams) / len(g) if g else 0.0
        if r["term"].lower() in terms or share >= 0.5:
            errors.append({"source": f"{r['source']}:{r['term']}", "reason": "overlaps_task",
                           "same_term": r["term"].lower() in terms, "shared_8grams": round(share, 3)})
        else:
            kept.append(r)
    corpus = kept
    short = {c: len(r) for c, r in task.items() if len(r) < 3 * per_class}
    if short:
        raise DataError(f"{dictd}/foldoc: too few single-tag entries for {short} (need {3 * per_class} a class: "
                        f"--per-class {per_class} for train and for dev, the rest test)")
    splits = {"train": [], "dev": [], "test": []}
    for c, rows in task.items():
        rows.sort(key=lambda r: stable_unit(f"{r['source']}:{r['term']}"))
        splits["train"] += rows[:per_class]
        splits["dev"] += rows[per_class:2 * per_class]
        splits["test"] += rows[2 * per_class:]
    corpus.sort(key=lambda r: stable_unit(f"{r['source']}:{r['term']}"))
    dropped = corpus[corpus_max:] if corpus_max else []
    corpus = corpus[:corpus_max] if corpus_max else corpus
    (out / "task").mkdir(parents=True, exist_ok=True)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rows.sort(key=lambda r: stable_unit(f"{split}:{r['term']}"))  # classes interleaved
        (out / "task" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "corpus" / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    with open(out / "errors.jsonl", "w", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    manifest = {
        "source": str(dictd), "packages": {p: package_version(p) for p in ("dict-foldoc", "dict-jargon")},
        "licence": "FOLDOC: GNU Free Documentation License; Jargon File: public domain",
        "classes": list(classes), "per_class": per_class, "min_words": min_words,
        "counts": {**{s: dict(Counter(r["label"] for r in rows)) for s, rows in splits.items()},
                   "corpus": dict(Counter(r["source"] for r in corpus)), "corpus_left_out": len(dropped),
                   **{k: v for k, v in Counter(e["reason"] for e in errors).items()}}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


#: a folder of the .deb files the data came from (data_prep/dictionaries.sh sets it when it fetched them)
DEBS = None


def package_version(name: str) -> str | None:
    """The version of the Debian package the files came from: its .deb in ``DEBS`` (fetched by
    ``apt-get download``), else the installed package's; None without either."""
    debs = sorted(Path(DEBS).glob(f"{name}_*.deb")) if DEBS else []
    cmd = ["dpkg-deb", "-f", str(debs[0]), "Version"] if debs else ["dpkg-query", "-W", "-f", "${Version}", name]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.prep.dictionaries", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wordnet", help="general English: WordNet's glosses")
    w.add_argument("out", type=Path)
    w.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"), help="WordNet's data.* files")
    w.add_argument("--test-share", type=float, default=0.02)
    f = sub.add_parser("foldoc", help="the computing domain: FOLDOC's task and corpus (and the Jargon File's)")
    f.add_argument("out", type=Path)
    f.add_argument("--dictd", type=Path, default=Path("/usr/share/dictd"), help="folder of foldoc.index, ...")
    f.add_argument("--classes", nargs="+", default=list(CLASSES))
    f.add_argument("--per-class", type=int, default=50, help="labelled entries per class in train (and in dev)")
    f.add_argument("--corpus-max", type=int, default=0, help="at most this many corpus entries (0: all)")
    p.add_argument("--debs", type=Path, default=None, help="the .deb files the data came from (their versions "
                   "go to the manifest)")
    a = p.parse_args(argv)
    global DEBS
    DEBS = a.debs
    try:
        if a.what == "wordnet":
            m = prepare_wordnet(a.wordnet, a.out, a.test_share)
        else:
            m = prepare_foldoc(a.dictd, a.out, a.classes, a.per_class, a.corpus_max)
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(m["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
