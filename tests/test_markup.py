"""Markup-aware text corpora (issue 23, item 6), on real documentation files (tests/fixtures/markup/SOURCES):
roles, directives, tags, code and link targets never become words; the stored text is the cleaned text."""
import json
import shutil
from pathlib import Path

import pytest

from videomask import anchors, data
from videomask.anchors import tokens
from videomask.prep import build
from videomask.prep.markup import detect, to_text

FIX = Path(__file__).parent / "fixtures" / "markup"
FILES = {"boto3-s3-examples.rst": "rst", "awscli-config-vars.rst": "rst", "pyenv-python-build.README.md": "markdown",
         "libffi-introduction.html": "html"}


def words(text):
    return set(tokens(text))


@pytest.mark.parametrize("name", FILES)
def test_each_format_is_told_by_its_content_and_loses_its_markup(name):
    raw = (FIX / name).read_text()
    assert detect(raw) == FILES[name]
    text = to_text(raw, detect(raw))
    kept = words(text)
    assert "://" not in text and not kept & {"https", "www", "href", "div", "span"}  # no URL, no tag
    gone = {"boto3-s3-examples.rst": {"paginator", "import", "python", "delimiter"},  # code blocks, their language
            "awscli-config-vars.rst": {"warning", "doc"},  # a directive's name, a role's name
            "pyenv-python-build.README.md": {"sh", "curl", "clone", "brew"},  # code blocks and spans, link targets
            "libffi-introduction.html": {"rel", "stylesheet", "meta", "utf"}}[name]
    assert not kept & gone, kept & gone
    stays = {"boto3-s3-examples.rst": {"bucket", "restoration", "glacier"},
             "awscli-config-vars.rst": {"configuration", "details"},
             "pyenv-python-build.README.md": {"plugin", "releases", "homebrew"},  # a link's text stays
             "libffi-introduction.html": {"calling", "convention", "compilers"}}[name]
    assert stays <= kept, stays - kept


def test_sphinx_roles_and_directives_and_plain_text():
    rst = ("Loader\n======\n\nUse :func:`~videomask.data.dataset` and :ref:`the loader <loader-ref>` here.\n\n"
           ".. versionadded:: 3.2\n   Streams from buckets.\n\n.. code-block:: python\n\n   import secret_code\n\n"
           ".. autoclass:: videomask.Loader\n   :members:\n")
    assert detect(rst) == "rst"
    kept = words(to_text(rst, "rst"))
    assert {"func", "ref", "versionadded", "code", "block", "secret_code", "autoclass", "members", "loader-ref"} \
        .isdisjoint(kept)
    assert {"use", "the", "loader", "streams", "buckets", "dataset"} <= kept
    plain = "A plain line with a # hash and <b>one tag</b>.\nAnother: x = [1](2)."
    assert detect(plain) == "plain" and to_text(plain, "plain") == plain
    lines = "\n".join(f"post {k} with a [link](https://x.org/{k})" if k % 100 == 0 else f"post {k}" for k in range(1000))
    assert detect(lines, lines_are_documents=True) == "plain"  # a few links in a corpus of lines: still lines


def test_the_build_stores_the_cleaned_text_with_consistent_offsets(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for name in FILES:
        shutil.copy(FIX / name, src / name)
    (src / "disguised.txt").write_text((FIX / "boto3-s3-examples.rst").read_text())  # reST in a .txt: one document
    (src / "lines.txt").write_text("one plain document\nand another one\n")  # plain .txt: a document a line
    m = build.build(src, tmp_path / "shards", build.BuildOptions(kind="text"), progress=False)
    assert m["inputs"]["total"] == 7 and m["inputs"]["written"] == 7
    samples = {s["key"]: s for s in data.dataset(str(tmp_path / "shards"), frames=False, split_by_node=False)}
    assert samples["disguised"]["meta"]["markup"] == "rst" and "import boto3" not in samples["disguised"]["text"]
    assert samples["disguised"]["text"] == samples["boto3-s3-examples_rst"]["text"]
    assert "markup" not in samples["lines_1"]["meta"] and samples["lines_2"]["text"] == "and another one"
    for s in samples.values():
        assert all(s["text"][w["s"]:w["e"]] == w["w"] for w in s["meta"]["words"])
    plain = build.build(src, tmp_path / "plain", build.BuildOptions(kind="text", markup="plain"), progress=False)
    assert plain["inputs"]["total"] > 7  # the .txt files a line each: the disguised reST too


def test_anchors_read_text_files_as_the_build_does(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    role = "The :func:`load` and :meth:`save` and :attr:`size` and :exc:`Error` and :class:`Thing` of the codec."
    for k in range(4):
        (docs / f"page{k}.rst").write_text(f"Page {k}\n=======\n\n{role}\n\n.. versionadded:: 1.{k}\n")
    found = anchors.build_anchors([docs], "wordfreq:en", k=10, min_count=2)
    got = {a["word"] for a in found["anchors"]}
    assert got and got.isdisjoint({"func", "meth", "attr", "exc", "class", "versionadded"}), got
    raw = anchors.build_anchors([docs], "wordfreq:en", k=10, min_count=2, markup="plain")
    assert {"func", "meth", "attr"} & {a["word"] for a in raw["anchors"]}  # what markup does to anchors otherwise
    assert json.dumps(found)


def test_hostile_and_awkward_documents(tmp_path):
    """Cases an adversarial review found: each is now right, or reported instead of crashing the build."""
    import time

    comments = "\n".join(["great video<br>thanks", 'see <a href="https://x.org/v">0:42</a> lol', "wow<br><br>nice",
                          *[f"comment {k}" for k in range(500)]])
    assert detect(comments, lines_are_documents=True) == "plain"  # stray tags in a corpus of lines
    assert detect("\n".join(["# one", "# two", *[f"line {k}" for k in range(118)]]), lines_are_documents=True) == "plain"
    t = time.perf_counter()
    detect(":a" * 100_000 + "\n" + "[" * 100_000)
    assert time.perf_counter() - t < 5  # no quadratic backtracking
    html = to_text("<head><title>Title</title><body><p>no closing head</p><pre><code>x = 1</pre><p>After the code.</p>"
                   "<p>a<kbd>Ctrl</kbd>b</p>", "html")
    assert {"title", "no", "closing", "head", "after", "the", "code"} <= words(html) and "x" not in words(html)
    assert "a b" in html  # a skipped element does not glue its neighbours
    md = to_text("---\ntitle: Secret Front\nlayout: post\n---\n# Heading\n\n<div align=\"center\">Kept html prose</div>\n\n"
                 "Text <script>hidden()</script> more.\n", "markdown")
    assert {"kept", "html", "prose", "text", "more", "heading"} <= words(md)
    assert not {"secret", "layout", "hidden"} & words(md)
    rst = to_text(".. py:function:: connect(host)\n   :module: secretmodule.client\n\n   Opens a connection.\n\n"
                  ".. deprecated:: 3.1 Use the new loader instead.\n\nSet :attr:`Model.class_` then continue, "
                  "unless :envvar:`SECRET_ENV` is set.\n\n" + "x" * 12_000 + "\n\nThe end.\n", "rst")
    kept = words(rst)
    assert {"opens", "connection", "use", "new", "loader", "model", "class", "continue", "end"} <= kept, kept
    assert not {"secretmodule", "connect", "secret_env", "module", "deprecated"} & kept, kept
    deep = "".join(" " * i + "x\n\n" for i in range(300))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "deep.rst").write_text(deep)
    for ext in (".rst", ".md", ".html"):  # three documents of one stem
        (docs / f"guide{ext}").write_text({".rst": "Guide\n=====\n\nThe guide in reST.\n",
                                          ".md": "# Guide\n\nThe guide in Markdown.\n",
                                          ".html": "<html><body><p>The guide in HTML.</p></body></html>"}[ext])
    m = build.build(docs, tmp_path / "shards", build.BuildOptions(kind="text"), progress=False)
    assert m["inputs"]["total"] == 4 and m["inputs"]["written"] == 3 and m["inputs"]["rejected"] == 1
    errors = (tmp_path / "shards" / "errors.jsonl").read_text()
    assert "deep.rst" in errors and "nested too deep" in errors
