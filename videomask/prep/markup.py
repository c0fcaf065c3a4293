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
                       r"article|nav|em|strong|img|meta|link|script|style)\b[^<>]{0,2000}>", re.IGNORECASE)
_HTML_PAGE = re.compile(r"^\s*(?:<!doctype html|<html|<\?xml|<head|<body|<!--)", re.IGNORECASE)
_RST_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}\s*$")
_SETEXT = re.compile(r"^(?:=+|-+)\s*$")
_RST_DIRECTIVE = re.compile(r"^\s*\.\. [\w:.+-]{1,100}::", re.MULTILINE)
# bounded repetitions: no quadratic backtracking on hostile text (":a" * 100000, a line of "[")
_RST_ROLE = re.compile(r":[\w.+-]{1,100}(?::[\w.+-]{1,100}){0,3}:`[^`\n]{1,1000}`")
_MD_HEADING = re.compile(r"^#{1,6} \S", re.MULTILINE)
_MD_FENCE = re.compile(r"^\s*(```|~~~)", re.MULTILINE)
_MD_LINK = re.compile(r"!?\[[^\[\]\n]{1,500}\]\([^()\s]{1,2000}\)")


class MarkupError(ValueError):
    """A document its format's parser cannot read (nested too deep, say): reported, never a crash."""


def detect(text: str, lines_are_documents: bool = False) -> str:
    """``html``, ``rst``, ``markdown`` or ``plain``, from signals in the content (a few of them: one stray ``#`` or
    ``<b>`` does not make a document markup). ``lines_are_documents``: the text is a ``.txt`` corpus whose default
    is a document a line; it is one markup document only when it reads as a page: HTML that starts as a page, or
    reST or Markdown signals on at least one line in ten (a corpus of posts with a few links or ``<br>`` stays a
    line per document)."""
    head = text[:200_000]
    lines = head.splitlines()
    tags = len(_HTML_TAG.findall(head))
    if tags >= 3 and re.search(r"</\w+\s*>", head) and (not lines_are_documents or _HTML_PAGE.match(head)):
        return "html"
    underlines = [(prev, line) for prev, line in zip(lines, lines[1:])
                  if prev.strip() and _RST_UNDERLINE.match(line) and len(line.strip()) >= len(prev.strip())]
    setext = sum(1 for _, line in underlines if _SETEXT.match(line))  # also Markdown's headings
    rst = 2 * len(underlines) + 2 * len(_RST_DIRECTIVE.findall(head)) + len(_RST_ROLE.findall(head)) + \
        head.count("\n::\n") + len(re.findall(r"``[^`\n]{1,500}``", head))
    md = 2 * len(_MD_HEADING.findall(head)) + len(_MD_FENCE.findall(head)) + len(_MD_LINK.findall(head)) + 2 * setext
    least = max(5, len(lines) // 10) if lines_are_documents else 3
    if max(rst, md) < least:
        return "plain"
    return "rst" if rst > md else "markdown"


def to_text(text: str, kind: str) -> str:
    """``text`` without its markup (``kind``: one of ``KINDS``); lines of prose, one block a line."""
    if kind not in KINDS:
        raise ValueError(f"markup must be one of {', '.join(KINDS)} (or auto), got {kind!r}")
    try:
        out = {"plain": lambda t: t, "rst": _rst, "markdown": _markdown, "html": _html}[kind](text)
    except RecursionError:
        raise MarkupError(f"its {kind} is nested too deep to parse") from None
    lines = (" ".join(URL_RE.sub(" ", line).split()) for line in out.splitlines())
    return "\n".join(line for line in lines if line)


# -- HTML ---------------------------------------------------------------------------------------------------
#: elements whose content is never prose; the first four until their end tag, the others also until a block starts
#: (``</head>``, ``</pre>`` and ``</code>`` may be left out or misnested; what follows is still prose)
_HTML_SKIP_HARD = {"script", "style", "template", "svg", "math"}
_HTML_SKIP_SOFT = {"head", "code", "pre", "kbd", "samp", "var", "tt"}
_HTML_BLOCK = {"p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section", "article",
               "br", "dt", "dd", "blockquote", "td", "th", "header", "footer", "nav", "title", "hr", "figcaption",
               "body", "main", "details", "summary"}


class _HTMLText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], []

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_BLOCK and tag != "title":  # a block ends whatever soft skip was left open
            self.skipping = [t for t in self.skipping if t in _HTML_SKIP_HARD]
        if tag in _HTML_SKIP_HARD or tag in _HTML_SKIP_SOFT:
            self.skipping.append(tag)
            self.parts.append(" ")
        if tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.skipping:  # up to the innermost open element of that name
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag):]
            self.parts.append(" ")
        if tag in _HTML_BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping or (self.skipping == ["head"] and self.lasttag == "title"):
            self.parts.append(data)


def _html(text: str) -> str:
    p = _HTMLText()
    p.feed(text)
    p.close()
    return "".join(p.parts)


# -- Markdown ---------------------------------------------------------------------------------------------------
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*\n", re.DOTALL)


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    parts = []
    for token in MarkdownIt("commonmark").enable("table").parse(_FRONT_MATTER.sub("", text, count=1)):
        if token.type == "html_block":  # a block of HTML in the page: its prose, as HTML's
            parts.append(_html(token.content) + "\n")
        elif token.type == "inline":
            autolink, raw = False, []
            for c in token.children or []:
                if c.type == "html_inline":  # <script> ... </script> inline: what is between is not prose
                    opening = re.match(r"<\s*(script|style)\b", c.content, re.IGNORECASE)
                    closing = re.match(r"<\s*/\s*(script|style)\b", c.content, re.IGNORECASE)
                    if opening:
                        raw.append(opening.group(1).lower())
                    elif closing and raw:
                        raw.pop()
                elif c.type == "link_open":
                    autolink = c.markup == "autolink"  # <https://...>: the target is the text
                elif c.type == "link_close":
                    autolink = False
                elif raw:
                    continue
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
#: docutils' own directives (the others, Sphinx's mostly, are rewritten before parsing; ``role`` and
#: ``default-role`` too, which would register roles in docutils' global registry)
_DOCUTILS_DIRECTIVES = {
    "attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning", "admonition", "image",
    "figure", "topic", "sidebar", "line-block", "parsed-literal", "code", "math", "rubric", "epigraph", "highlights",
    "pull-quote", "compound", "container", "table", "csv-table", "list-table", "sectnum", "section-numbering",
    "header", "footer", "target-notes", "meta", "replace", "unicode", "date", "include", "raw", "class", "title"}
#: Sphinx directives whose own line holds prose: after a version number, or all of it
_VERSION_DIRECTIVES = {"versionadded", "versionchanged", "deprecated", "versionremoved"}
_PROSE_ARGUMENT_DIRECTIVES = {"seealso", "centered"}
#: roles whose text is code, a path, a variable or a formula: dropped like inline code
_CODE_ROLES = {"code", "samp", "envvar", "math", "raw", "file", "kbd", "command", "program", "option", "regexp",
               "makevar", "mimetype", "eq", "literal", "raw-html", "raw-latex"}
#: Sphinx directives whose body is code or machinery, not prose
_CODE_DIRECTIVES = {"code-block", "sourcecode", "literalinclude", "highlight", "doctest", "testcode", "testoutput",
                    "testsetup", "testcleanup", "productionlist", "graphviz", "toctree", "index", "tabularcolumns",
                    "autosummary", "literal", "prompt", "ipython", "jupyter-execute", "program", "highlightlang"}
_DIRECTIVE_LINE = re.compile(r"^(\s*)\.\. ([\w:.+-]{1,100})::(.*)$")
_ROLE = re.compile(r":([\w.+-]{1,100}(?::[\w.+-]{1,100}){0,3}):`((?:[^`\\\n]|\\.){1,1000})`")
_OPTION_LINE = re.compile(r"^\s+:[\w.+-]+:")


def _role_text(m: re.Match) -> str:
    """What a role says, as plain reST text: ``:ref:`the loader <loader>``` -> the loader; ``:func:`~os.path.join```
    -> os.path.join; a code role (``:envvar:``, ``:samp:`` ...) -> nothing."""
    if m.group(1).split(":")[-1] in _CODE_ROLES:
        return " "
    content = m.group(2)
    titled = re.match(r"^(.*\S)\s*<[^<>]+>$", content, re.DOTALL)
    text = (titled.group(1) if titled else content).lstrip("~!")
    return re.sub(r"([\\`*_|\[\]])", r"\\\1", text)  # its characters are text, not reST again (class_ ...)


def _sphinx_to_docutils(text: str) -> str:
    """Sphinx's roles become their text, its directives docutils' ``container`` (prose: object descriptions,
    version notes, see-alsos; the arguments on the directive's own line, a signature or a version, are dropped) or
    ``code`` (code and machinery), so that docutils parses every document without knowing Sphinx."""
    out, options = [], False
    for line in _ROLE.sub(_role_text, text).splitlines():
        if options and _OPTION_LINE.match(line):  # a rewritten directive's options (:module: x): not prose
            continue
        options = False
        m = _DIRECTIVE_LINE.match(line)
        if m and m.group(2) not in _DOCUTILS_DIRECTIVES:
            name = m.group(2).split(":")[-1]
            code = name in _CODE_DIRECTIVES or name.startswith("auto") or name in ("role", "default-role")
            argument = m.group(3).strip()
            if name in _VERSION_DIRECTIVES:  # ".. deprecated:: 3.1 Use the new loader." keeps its sentence
                argument = argument.partition(" ")[2]
            elif name not in _PROSE_ARGUMENT_DIRECTIVES:  # a signature, a path, a name: not prose
                argument = ""
            # a blank line after it: the indented lines that follow (Sphinx's explanation argument) become its
            # content, kept as prose or dropped as code
            out += [f"{m.group(1)}.. {'code' if code else 'container'}::", ""]
            if argument and not code:
                out.append(f"{m.group(1)}   {argument}")
            options = True
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
            "raw_enabled": False, "input_encoding": "unicode", "_disable_config": True, "line_length_limit": 10**7})
    skip = (nodes.literal_block, nodes.literal, nodes.comment, nodes.system_message, nodes.problematic, nodes.raw,
            nodes.substitution_definition, nodes.target, nodes.doctest_block, nodes.math, nodes.math_block,
            nodes.option_string, nodes.option_argument, nodes.field_name, nodes.label)
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
