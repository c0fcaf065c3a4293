"""A real, offline, labelled technical corpus: Debian manual pages, a paragraph labelled by its section.

    python -m videomask.prep.manpages OUT [--man-root /usr/share/man] [--sections 1 5 8]
    bash data_prep/manpages.sh OUT

Writes, from the manual pages installed on a Debian machine (rendered with ``groff``):

- ``OUT/task/{train,dev,test}.jsonl``: ``{"text", "label", "page", "package"}`` in the
  "Don't Stop Pretraining" layout; the label is the page's section (1 user commands,
  5 file formats, 8 administration): which kind of page does this paragraph come from?
- ``OUT/corpus/corpus.jsonl``: unlabelled paragraphs of *other* pages (continued pretraining's data);
- ``OUT/manifest.json``: the packages and versions read, the rules, the counts; ``OUT/errors.jsonl``:
  every page that could not be read or rendered, with the reason.

Pages are assigned to corpus / train / dev / test whole, by a stable hash of the page's name, so no
page's paragraphs are on both sides of a split, and the corpus never holds a task paragraph. A
paragraph is a blank-line-separated block of the rendered page outside NAME and SYNOPSIS with at
least ``--min-words`` words, mostly letters.

Excluded by default (``--exclude``): the Linux man-pages project (``manpages``, ``manpages-dev``) and
``linux-*`` (the kernel's own interfaces), ``python3*`` (Python's own documentation): both kept for
later, independent checks; and ``google-cloud-cli`` (not from Debian; 16k generated pages would be
most of the corpus). Without dpkg's records (not a Debian system) every page under the root is read
and the manifest says so.
"""
from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from ..errors import DataError, MissingError, VideomaskError

DPKG_INFO = Path("/var/lib/dpkg/info")
EXCLUDE = ("manpages", "manpages-dev", "linux-*", "python3*", "google-cloud-cli")
SPLITS = {"corpus": 0.5, "train": 0.3, "dev": 0.05, "test": 0.15}  # shares of the pages
SKIP_SECTIONS = {"NAME", "SYNOPSIS"}
MAX_ROWS = {"train": 2000, "dev": 500, "test": 1500}  # a sample of each task split, so that a 2-core CPU can
# run the ablation; 0 keeps them all


def owners(root: Path, info: Path = DPKG_INFO) -> dict[str, str] | None:
    """Installed file path -> its Debian package (dpkg's records), or None off Debian."""
    if not info.is_dir():
        return None
    out = {}
    for lst in sorted(info.glob("*.list")):
        pkg = lst.stem.split(":")[0]
        for line in lst.read_text(errors="replace").splitlines():
            if line.startswith(str(root)):
                out[line] = pkg
    return out


def versions(packages) -> dict[str, str]:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *sorted(packages)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        return {}
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)


def render(path: Path) -> str:
    """The page as plain text, one paragraph per block (no line wrapping, no hyphenation)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    r = subprocess.run(["groff", "-k", "-man", "-Tutf8", "-rLL=3000n", "-rHY=0", "-P-cbou"], input=raw,
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise DataError(f"groff exited with {r.returncode}: {r.stderr.decode(errors='replace')[:200]}")
    return r.stdout.decode("utf-8", errors="replace")


def paragraphs(text: str, min_words: int = 12) -> list[str]:
    out, section = [], ""
    lines = text.splitlines()[1:-1]  # the running header and footer
    block: list[str] = []

    def flush():
        words = " ".join(block).split()
        letters = sum(c.isalpha() for c in "".join(words))
        if section not in SKIP_SECTIONS and len(words) >= min_words and letters >= 0.6 * len("".join(words)):
            out.append(" ".join(words))
        block.clear()

    for line in lines:
        if not line.strip():
            flush()
        elif not line.startswith(" "):  # a section heading
            flush()
            section = line.strip()
        else:
            block.append(line.strip())
    flush()
    return out


def split_of(page: str) -> str:
    """A stable assignment of a page to corpus / train / dev / test."""
    u = int(hashlib.sha256(page.encode()).hexdigest()[:8], 16) / 2 ** 32
    edge = 0.0
    for name, share in SPLITS.items():
        edge += share
        if u < edge:
            return name
    return "test"


def sample(rows: list[dict], n: int) -> list[dict]:
    """At most ``n`` rows (0: all), chosen and ordered by a stable hash of their text: the pages are read
    section by section, and a file sorted by label would reach a streaming trainer one class at a time."""
    order = sorted(rows, key=lambda r: hashlib.sha256(f"{r['page']}|{r['text']}".encode()).hexdigest())
    return order[:n] if n else order


def build(out: Path, root: Path = Path("/usr/share/man"), sections=("1", "5", "8"), exclude=EXCLUDE,
          min_words: int = 12, info: Path = DPKG_INFO, max_rows: dict | None = None) -> dict:
    root = Path(root)
    import shutil

    if shutil.which("groff") is None:
        raise MissingError("groff is not installed (Debian: apt-get install groff-base): it renders the pages")
    if not root.is_dir():
        raise MissingError(f"{root}: no such folder (the manual pages' root, with man1/, man5/ ...)")
    own = owners(root, info)
    pages, errors = [], []
    for sec in sections:
        for f in sorted((root / f"man{sec}").glob("*")):
            if f.is_symlink() or not f.is_file():
                continue  # aliases of pages read under their own name
            pkg = own.get(str(f)) if own is not None else None
            if own is not None and pkg is None:
                errors.append({"source": str(f), "reason": "owned by no installed package (dpkg); skipped"})
                continue
            if pkg and any(fnmatch.fnmatch(pkg, pat) for pat in exclude):
                continue
            pages.append((f, sec, pkg))
    if not pages:
        raise DataError(f"{root}: no manual pages of sections {', '.join(sections)} left after the exclusions")
    rows = {name: [] for name in SPLITS}
    for f, sec, pkg in pages:
        name = f.name.removesuffix(".gz")
        try:
            paras = paragraphs(render(f), min_words)
        except (DataError, OSError, subprocess.TimeoutExpired, gzip.BadGzipFile) as e:
            errors.append({"source": str(f), "reason": f"{type(e).__name__}: {e}"})
            continue
        if not paras:
            errors.append({"source": str(f), "reason": f"no paragraph of >= {min_words} words outside NAME/SYNOPSIS"})
            continue
        split = split_of(name)
        for p in paras:
            row = {"text": p, "page": name, "package": pkg}
            rows[split].append(row if split == "corpus" else {**row, "label": sec})
    available = {s: len(rs) for s, rs in rows.items()}
    max_rows = MAX_ROWS if max_rows is None else max_rows
    rows = {s: sample(rs, max_rows.get(s, 0)) for s, rs in rows.items()}
    (out / "task").mkdir(parents=True, exist_ok=True)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for name, rs in rows.items():
        path = out / "corpus" / "corpus.jsonl" if name == "corpus" else out / "task" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
    with open(out / "errors.jsonl", "w") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in errors)
    packages = sorted({p for _, _, p in pages if p})
    labels = {s: {sec: sum(r["label"] == sec for r in rs) for sec in sections} for s, rs in rows.items() if s != "corpus"}
    manifest = {"root": str(root), "sections": list(sections), "exclude": list(exclude), "min_words": min_words,
                "dpkg": own is not None, "packages": versions(packages) if packages else {},
                "pages": len(pages), "pages_with_errors": len(errors),
                "paragraphs": {s: len(rs) for s, rs in rows.items()},
                "paragraphs_available": available, "max_rows": max_rows, "labels": labels, "split_shares": SPLITS}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m videomask.prep.manpages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--man-root", type=Path, default=Path("/usr/share/man"))
    p.add_argument("--sections", nargs="+", default=["1", "5", "8"])
    p.add_argument("--exclude", nargs="*", default=list(EXCLUDE), help="Debian package name patterns to leave out")
    p.add_argument("--min-words", type=int, default=12)
    for split, n in MAX_ROWS.items():
        p.add_argument(f"--max-{split}", type=int, default=n, help=f"paragraphs kept in {split}.jsonl (default: {n}; "
                       "0: all)")
    a = p.parse_args(argv)
    try:
        m = build(a.out, a.man_root, a.sections, a.exclude, a.min_words,
                  max_rows={"train": a.max_train, "dev": a.max_dev, "test": a.max_test})
    except VideomaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{m['pages']} pages of {len(m['packages'])} packages ({m['pages_with_errors']} in errors.jsonl) -> "
          + ", ".join(f"{k} {v}" for k, v in m["paragraphs"].items()) + f" paragraphs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
