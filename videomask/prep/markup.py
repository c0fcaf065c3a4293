"""Documentation corpora as text: reStructuredText, Markdown and HTML lose their markup before their words count.

Real documentation arrives as markup, and without this its syntax becomes "domain words": on a reST corpus the
top anchors included ``func``, ``exc``, ``attr``, ``meth`` (Sphinx role names) and ``versionadded``. Each format
is read by its own parser (docutils, markdown-it-py, the standard library's ``html.parser``) and only the prose
is kept: role names, directives and their arguments, tags and attributes, code blocks and inline code, link
targets and bare URLs never become words. What a role or a link *says* stays (``:ref:`the loader <loader>``` ->
"the loader"). The cleaned text is what the sample stores, so word offsets refer to it.

``detect(text)`` tells the format from the content (file names do not: ``*.txt`` is common): ``plain``, ``rst``,
``markdown`` or ``html``. ``to_text(text, kind)`` removes the markup.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

KINDS = ("plain", "rst", "markdown", "html")
URL_RE = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.IGNORECASE)

_HTML_TAG = re.compile(r"</?(?:html|head|body|div|p|span|a|ul|ol|li|h[1-6]|table|tr|td|th|br|pre|code|section|"
                       r"article|nav|em|strong|img|meta|link|script|style)\b[^>]*>", re.IGNORECASE)
_RST_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^\s*\.\. [\w:.+-]+::", re.MULTILINE)
_RST_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`[^`]+`")
_MD_HEADING = re.compile(r"^#{1,6} \S", re.MULTILINE)
_MD_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_MD_LINK = re.compile(r"!?\[[^\]\n]+\]\([^)\s]+\)")


def detect(text: str) -> str:
    """``html``, ``rst``, ``markdown`` or ``plain``, from signals in the content (a few of them, and one every 50
    lines: one stray ``#`` or ``<b>`` does not make a document markup, nor a few links a corpus of lines)."""
    head = text[:200_000]
    tags = len(_HTML_TAG.findall(head))
    if tags >= 3 and re.search(r"</\w+\s*>", head):
        return "html"
    lines = head.splitlines()
    underlines = sum(1 for prev, line in zip(lines, lines[1:])
                     if prev.strip() and _RST_UNDERLINE.match(line) and len(line.strip()) >= len(prev.strip()))
    rst = 2 * underlines + 2 * len(_RST_DIRECTIVE.findall(head)) + len(_RST_ROLE.findall(head)) + \
        head.count("\n::\n") + len(re.findall(r"``[^`\n]+``", head))
    md = 2 * len(_MD_HEADING.findall(head)) + len(_MD_FENCE.findall(head)) + len(_MD_LINK.findall(head))
    # a few signals make a page markup, but a corpus of a document a line needs them on many lines: a million tweets
    # with a handful of [links](...) are plain text
    if max(rst, md) < max(3, len(lines) // 50):
        return "plain"
    return "rst" if rst >= md else "markdown"


def to_text(text: str, kind: str) -> str:
    """``text`` without its markup (``kind``: one of ``KINDS``); lines of prose, one block a line."""
    if kind not in KINDS:
        raise ValueError(f"markup must be one of {', '.join(KINDS)} (or auto), got {kind!r}")
    out = {"plain": lambda t: t, "rst": _rst, "markdown": _markdown, "html": _html}[kind](text)
    lines = (" ".join(URL_RE.sub(" ", line).split()) for line in out.splitlines())
    return "\n".join(line for line in lines if line)


# -- HTML ---------------------------------------------------------------------------------------------------
_HTML_SKIP = {"script", "style", "code", "pre", "kbd", "samp", "var", "template", "head", "svg", "math"}
_HTML_BLOCK = {"p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section", "article",
               "br", "dt", "dd", "blockquote", "td", "th", "header", "footer", "nav", "title", "hr", "figcaption"}


class _HTMLText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], []

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_SKIP:
            self.skipping.append(tag)
        if tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()
        if tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def _html(text: str) -> str:
    p = _HTMLText()
    p.feed(text)
    p.close()
    return "".join(p.parts)


# -- Markdown ---------------------------------------------------------------------------------------------------
def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    parts = []
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.type == "inline":
            autolink = False
            for c in token.children or []:
                if c.type == "link_open":
                    autolink = c.markup == "autolink"  # <https://...>: the target is the text
                elif c.type == "link_close":
                    autolink = False
                elif c.type == "text" and not autolink:
                    parts.append(c.content)
                elif c.type == "image":
                    parts.append(c.content)  # its alt text
                elif c.type in ("softbreak", "hardbreak"):
                    parts.append(" " if c.type == "softbreak" else "\n")
        elif token.block and token.nesting == -1:  # the end of a paragraph, heading, list item, cell ...
            parts.append("\n")
    return "".join(parts)


# -- reStructuredText ---------------------------------------------------------------------------------------------
#: docutils' own directives (the others, Sphinx's mostly, are rewritten before parsing)
_DOCUTILS_DIRECTIVES = {
    "attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning", "admonition", "image",
    "figure", "topic", "sidebar", "line-block", "parsed-literal", "code", "math", "rubric", "epigraph", "highlights",
    "pull-quote", "compound", "container", "table", "csv-table", "list-table", "contents", "sectnum",
    "section-numbering", "header", "footer", "target-notes", "meta", "replace", "unicode", "date", "include", "raw",
    "class", "role", "default-role", "title"}
#: Sphinx directives whose body is code or machinery, not prose
_CODE_DIRECTIVES = {"code-block", "sourcecode", "literalinclude", "highlight", "doctest", "testcode", "testoutput",
                    "testsetup", "testcleanup", "productionlist", "graphviz", "toctree", "index", "tabularcolumns",
                    "autosummary", "literal", "prompt", "ipython", "jupyter-execute", "program", "highlightlang"}
_DIRECTIVE_LINE = re.compile(r"^(\s*)\.\. ([\w:.+-]+)::(.*)$")
_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`((?:[^`\\]|\\.)+)`")


def _role_text(m: re.Match) -> str:
    """What a role says: ``:ref:`the loader <loader>``` -> the loader; ``:func:`~os.path.join``` -> os.path.join."""
    content = m.group(1)
    titled = re.match(r"^(.*\S)\s*<[^<>]+>$", content, re.DOTALL)
    return (titled.group(1) if titled else content).lstrip("~!")


def _sphinx_to_docutils(text: str) -> str:
    """Sphinx's roles become their text, its directives docutils' ``container`` (prose: object descriptions,
    version notes, see-alsos; the arguments on the directive's own line, a signature or a version, are dropped) or
    ``code`` (code and machinery), so that docutils parses every document without knowing Sphinx."""
    out = []
    for line in _ROLE.sub(_role_text, text).splitlines():
        m = _DIRECTIVE_LINE.match(line)
        if m and m.group(2) not in _DOCUTILS_DIRECTIVES:
            name = m.group(2).split(":")[-1]
            code = name in _CODE_DIRECTIVES or name.startswith("auto")
            # a blank line after it: the indented lines that follow (Sphinx's explanation argument, options) become
            # its content, kept as prose or dropped as code
            out += [f"{m.group(1)}.. {'code' if code else 'container'}::", ""]
            continue
        out.append(line)
    return "\n".join(out)


def _rst(text: str) -> str:
    import io

    import docutils.core
    from docutils import nodes

    doctree = docutils.core.publish_doctree(
        _sphinx_to_docutils(text), settings_overrides={
            "report_level": 5, "halt_level": 5, "warning_stream": io.StringIO(), "file_insertion_enabled": False,
            "raw_enabled": False, "input_encoding": "unicode", "_disable_config": True})
    skip = (nodes.literal_block, nodes.literal, nodes.comment, nodes.system_message, nodes.problematic, nodes.raw,
            nodes.substitution_definition, nodes.target, nodes.doctest_block, nodes.math, nodes.math_block,
            nodes.option_string, nodes.field_name)
    parts = []

    def walk(node):
        if isinstance(node, skip):
            return
        if isinstance(node, nodes.Text):
            parts.append(node.astext())
            return
        for child in node.children:
            walk(child)
        if isinstance(node, nodes.TextElement) and not isinstance(node, nodes.Inline):
            parts.append("\n")

    walk(doctree)
    return "".join(parts)
