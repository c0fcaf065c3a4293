"""The manual-page task: real roff pages rendered by groff, split by page, labelled by section."""
import gzip
import json
import shutil

import pytest

from videomask.prep import manpages

pytestmark = pytest.mark.skipif(shutil.which("groff") is None, reason="groff renders the pages")

PAGE = """.TH {name} {sec} "2024" "pkg" "Manual"
.SH NAME
{name} \\- a tool of section {sec}
.SH SYNOPSIS
.B {name}
[\\fIOPTIONS\\fR]
.SH DESCRIPTION
.B {name}
reads the \\fBconfiguration\\fR file and writes every entry of the daemon's table to standard output, one per line.
.PP
Short line.
.SH FILES
The file /etc/{name}.conf holds the defaults of section {sec}; each key is separated from its value by whitespace.
"""


def make_root(tmp_path, pages):
    root, info = tmp_path / "man", tmp_path / "dpkg"
    info.mkdir()
    lists = {}
    for name, sec, pkg in pages:
        d = root / f"man{sec}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{name}.{sec}.gz"
        f.write_bytes(gzip.compress(PAGE.format(name=name, sec=sec).encode()))
        lists.setdefault(pkg, []).append(str(f))
    for pkg, files in lists.items():
        (info / f"{pkg}.list").write_text("\n".join(files) + "\n")
    return root, info


def test_pages_become_a_task_and_a_corpus(tmp_path):
    pages = [(f"tool{i}", sec, "coreutils") for i in range(40) for sec in ("1", "5", "8") if (i + int(sec)) % 2]
    pages += [("syscall", "8", "manpages"), ("kernel-thing", "1", "linux-perf")]
    root, info = make_root(tmp_path, pages)
    (root / "man1" / "broken.1.gz").write_bytes(b"not gzip")
    lst = info / "coreutils.list"
    lst.write_text(lst.read_text() + str(root / "man1" / "broken.1.gz") + "\n")
    (root / "man1" / "alias.1.gz").symlink_to(root / "man1" / "tool1.1.gz")
    m = manpages.build(tmp_path / "out", root, info=info, max_rows={})
    rows = {s: [json.loads(x) for x in (tmp_path / "out" / "task" / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "dev", "test")}
    corpus = [json.loads(x) for x in (tmp_path / "out" / "corpus" / "corpus.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    # every page: two paragraphs (DESCRIPTION's first, FILES); NAME, SYNOPSIS and the short line left out
    assert m["pages"] == len(pages) - 2 + 1  # excluded packages gone, the broken page counted
    assert sum(len(r) for r in rows.values()) + len(corpus) == 2 * (len(pages) - 2)
    assert [e["source"].endswith("broken.1.gz") for e in errors] == [True]
    first = rows["train"][0]
    assert first["text"].startswith(first["page"].split(".")[0] + " reads the configuration file")
    assert first["label"] == first["page"].rsplit(".", 1)[1] and first["package"] == "coreutils"
    texts = " ".join(r["text"] for rs in rows.values() for r in rs) + " ".join(r["text"] for r in corpus)
    assert "syscall" not in texts and "kernel-thing" not in texts and "Short line" not in texts
    # a page is on one side only: no page in two splits
    sides = {}
    for s, rs in [*rows.items(), ("corpus", corpus)]:
        for r in rs:
            sides.setdefault(r["page"], set()).add(s)
    assert all(len(v) == 1 for v in sides.values()) and {"corpus", "train", "test"} <= set().union(*sides.values())
    again = manpages.build(tmp_path / "again", root, info=info, max_rows={"train": 5})
    assert again["paragraphs"]["train"] == 5 and again["paragraphs_available"]["train"] == len(rows["train"])
