"""Markup to plain text: HTML, Markdown and reStructuredText lose their markup, keep their headings.

``corpus`` reads files and cuts passages; this module only turns one document's markup into text and the
list of its headings. HTML goes through the standard library's ``html.parser``: scripts, styles,
navigation, headers/footers and tables of contents are dropped, headings become lines of their own and
``<title>`` is the title. Markdown and reStructuredText lose their heading markup and little else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

# ---------------------------------------------------------------------------------------------------------
# HTML to text

_BLOCK_TAGS = frozenset(
    """
    address article blockquote body caption dd details dialog div dl dt fieldset figcaption figure
    hr li main ol p pre section summary table tbody thead tfoot tr ul br
    """.split()
)
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_CELL_TAGS = frozenset({"td", "th"})
# Whole subtrees that never carry document content.
_SKIP_TAGS = frozenset(
    """
    script style noscript template nav header footer aside form button select svg iframe object
    canvas map head
    """.split()
)
_VOID_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# class/id tokens that mark navigation and other page furniture.
_BOILERPLATE = re.compile(
    r"^(?:nav|navbar|navheader|navfooter|navigation|menu|breadcrumbs?|sidebar|toc|skip-?link|"
    r"cookie-?banner|site-?header|site-?footer|page-?header|page-?footer|footer|header|banner)$",
    re.IGNORECASE,
)
_BOILERPLATE_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "menu", "menubar"})
# Admonition boxes whose <h3>Note</h3> label is not a section heading.
_ADMONITIONS = frozenset({"note", "tip", "warning", "caution", "important"})


def _is_boilerplate(tag: str, attrs: dict[str, str | None]) -> bool:
    if tag in _SKIP_TAGS:
        return True
    if (attrs.get("role") or "").lower() in _BOILERPLATE_ROLES:
        return True
    tokens = (attrs.get("class") or "").split() + (attrs.get("id") or "").split()
    return any(_BOILERPLATE.match(t) for t in tokens)


class _HTMLText(HTMLParser):
    """Collect text blocks and headings from HTML, skipping boilerplate subtrees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.headings: list[str] = []
        self.title = ""
        self._buf: list[str] = []
        self._skip_tag: str | None = None  # tag name of the boilerplate subtree we are inside
        self._skip_depth = 0
        self._in_title = False
        self._title_buf: list[str] = []
        self._heading_depth = 0
        self._pre_depth = 0
        self._div_stack: list[bool] = []  # per open div: is it an admonition box?

    def _flush(self, heading: bool = False) -> None:
        raw = "".join(self._buf)
        self._buf = []
        if self._pre_depth:  # keep the line structure of code listings
            text = "\n".join(" ".join(line.split()) for line in raw.splitlines() if line.strip())
        else:
            text = " ".join(raw.split())
        if not text:
            return
        if heading:
            if any(self._div_stack) and text.lower().rstrip(":") in _ADMONITIONS:
                return  # "Note" label of an admonition box
            self.headings.append(text)
        self.blocks.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if self._skip_tag is not None:
            if tag == self._skip_tag and tag not in _VOID_TAGS:
                self._skip_depth += 1
            return
        attr = dict(attrs)
        if tag not in _VOID_TAGS and _is_boilerplate(tag, attr):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag == "div":
            self._div_stack.append(bool(set((attr.get("class") or "").lower().split()) & _ADMONITIONS))
        if tag in _HEADING_TAGS:
            self._flush()
            self._heading_depth += 1
        elif tag in _BLOCK_TAGS:
            self._flush()
            if tag == "pre":
                self._pre_depth += 1
        elif tag in _CELL_TAGS and "".join(self._buf).strip():
            self._buf.append(" | ")
        elif tag == "img" and attr.get("alt"):
            self._buf.append(f" {attr['alt']} ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            self.title = self.title or " ".join("".join(self._title_buf).split())
            return
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in _HEADING_TAGS and self._heading_depth:
            self._flush(heading=True)
            self._heading_depth -= 1
        elif tag in _BLOCK_TAGS:
            self._flush()
            if tag == "pre" and self._pre_depth:
                self._pre_depth -= 1
        if tag == "div" and self._div_stack:
            self._div_stack.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_buf.append(data)
        elif self._skip_tag is None:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush(heading=self._heading_depth > 0)


@dataclass(frozen=True)
class HtmlText:
    """Result of :func:`html_to_text`."""

    title: str
    text: str
    headings: tuple[str, ...]


def html_to_text(html: str) -> HtmlText:
    """Extract title, text blocks (blank-line separated) and headings from an HTML page.

    Drops ``script``, ``style``, ``nav``, ``header``, ``footer``, ``aside``, forms and elements whose
    class, id or ARIA role marks them as navigation, menus, breadcrumbs, sidebars or a table of contents.
    Headings (``h1``-``h6``) become blocks of their own; the "Note"/"Warning" labels of admonition boxes
    are not treated as headings.
    """
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return HtmlText(parser.title, "\n\n".join(parser.blocks), tuple(parser.headings))


# ---------------------------------------------------------------------------------------------------------
# Markdown / reStructuredText / plain text

_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_RST_ADORNMENT = re.compile(r"""^([=\-`:'"~^_*+#<>.])\1{2,}\s*$""")


def markdown_to_text(text: str) -> tuple[str, tuple[str, ...]]:
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # YAML front matter
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    out: list[str] = []
    headings: list[str] = []
    lines = text.splitlines()
    in_fence = False
    for i, line in enumerate(lines):
        if re.match(r"^\s*(```|~~~)", line):
            in_fence = not in_fence
            continue  # fence markers go; the code itself is kept
        if in_fence:
            out.append(line)
            continue
        m = _MD_HEADING.match(line)
        if m:
            heading = _inline_markdown(m.group(2))
            if heading:
                headings.append(heading)
                out += ["", heading, ""]
            continue
        if _MD_SETEXT.match(line):
            continue  # setext underline or horizontal rule
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _MD_SETEXT.match(nxt):
            heading = _inline_markdown(line)
            headings.append(heading)
            out += ["", heading, ""]
            continue
        out.append(_inline_markdown(re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)) if line.strip() else "")
    return "\n".join(out), tuple(headings)


def _inline_markdown(line: str) -> str:
    line = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", line)  # images -> alt text
    line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)  # links -> link text
    line = re.sub(r"`([^`]*)`", r"\1", line)
    line = re.sub(r"(\*\*|__)(.+?)\1", r"\2", line)
    return line.strip()


def rst_to_text(text: str) -> tuple[str, tuple[str, ...]]:
    out: list[str] = []
    headings: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _RST_ADORNMENT.match(line):
            continue  # over/underline of a section title
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _RST_ADORNMENT.match(nxt) and len(nxt.rstrip()) >= len(line.strip()):
            headings.append(line.strip())
            out += ["", line.strip(), ""]
            continue
        if line.startswith(".."):
            continue  # directives, link targets, substitutions, comments (indented content stays)
        line = re.sub(r":[\w:-]+:`([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", line)  # :role:`text <target>`
        line = re.sub(r"`([^`<]*?)(?:\s*<[^>]*>)?`_{0,2}", r"\1", line)
        out.append(line.replace("``", "").rstrip())
    return "\n".join(out), tuple(headings)


# ---------------------------------------------------------------------------------------------------------
# Plain text and AsciiDoc

# ``== Title`` (AsciiDoc) and a title underlined with ``===``, ``---``, ``~~~``, ``^^^`` or ``+++``
_ADOC_PREFIX = re.compile(r"^(={1,5})\s+(\S.*?)\s*=*\s*$")
_UNDERLINE = re.compile(r"^\s{0,3}([=\-~^+])\1{2,}\s*$")
# AsciiDoc lines that are markup, not content: anchors, block attributes, document attributes,
# preprocessor directives, block delimiters and list continuations
_ADOC_MARKUP = re.compile(
    r"^(?:\[\[[^\]]*\]\]|\[[\w\"., =#%-]*\]|:[\w-]+!?:.*|(?:include|ifdef|ifndef|ifeval|endif)::.*|"
    r"(?:-{4,}|\.{4,}|\*{4,}|_{4,}|/{4,}|\+{4,})|\+)\s*$"
)
_TITLE_MAX_WORDS = 12
MIN_TITLE_BODY_WORDS = 8


def _is_title_line(block: list[str], following: list[str]) -> bool:
    """A block that reads as a title: one short unindented line that starts with a capital or a digit and
    has no sentence or code punctuation at its end, over an unindented paragraph of prose."""
    if len(block) != 1 or block[0][:1].isspace() or not following or following[0][:1].isspace():
        return False
    line = block[0].strip()
    words = line.split()
    return (
        0 < len(words) <= _TITLE_MAX_WORDS
        and (line[0].isupper() or line[0].isdigit())
        and line[-1] not in ".,;:{(=\\"
        and not re.search(r"[=$;{}<>|`]|\(\)|://", line)  # code or a URL, not a title
        and len(" ".join(following).split()) >= MIN_TITLE_BODY_WORDS
    )


def _blocks(lines: list[str]) -> list[list[str]]:
    """Blank-line separated blocks of lines."""
    blocks, current = [], []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _underlined_titles(lines: list[str]) -> tuple[list[str], list[str]]:
    """Lift AsciiDoc/setext titles (``== Title``, a line over ``----``) out as lines of their own."""
    out, headings = [], []
    skip = False
    for i, line in enumerate(lines):
        if skip:
            skip = False
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prefixed = _ADOC_PREFIX.match(line)
        if line.strip() and _UNDERLINE.match(nxt) and abs(len(nxt.rstrip()) - len(line.rstrip())) <= 2:
            title, skip = line.strip(), True
        elif prefixed:
            title = prefixed.group(2)
        else:
            out.append(line)
            continue
        headings.append(title)
        out += ["", title, ""]
    return out, headings


def plain_to_text(text: str) -> tuple[str, tuple[str, ...]]:
    """Plain text or AsciiDoc -> (text, headings).

    Headings: AsciiDoc titles (``== Title``, or a line underlined with ``===``/``---``/``~~~``/``^^^``), and
    a short line standing alone over a paragraph (a file's title line, "Configuring the server"). AsciiDoc
    markup lines (anchors, attributes, ``include::``, block delimiters) are dropped, ``linkgit:git-add[1]``
    reads ``git-add(1)`` and a labelled list's ``term::`` loses its colons.
    """
    lines, headings = _underlined_titles(text.splitlines())
    lines = [
        line
        for line in lines
        if not _ADOC_MARKUP.match(line) and not re.match(r"^/{2}(?!/)", line)  # AsciiDoc comments
    ]
    lines = [re.sub(r"\blink(?:git)?:([\w./:-]+)\[(\w*)\]", r"\1(\2)", line) for line in lines]
    lines = [re.sub(r"^(\S.*?):{2,4}\s*$", r"\1", line) for line in lines]
    blocks = _blocks(lines)
    titled = set(headings)
    for block, following in zip(blocks, [*blocks[1:], []], strict=False):
        line = " ".join(block).strip()
        if line not in titled and _is_title_line(block, following):
            headings.append(line)
            titled.add(line)
    ordered = [line for line in (" ".join(b).strip() for b in blocks) if line in titled]
    return "\n\n".join("\n".join(b) for b in blocks), tuple(dict.fromkeys(ordered))


# ---------------------------------------------------------------------------------------------------------
# man pages (groff man macros)

_MAN_FONT = re.compile(r"\\f(?:[BIRP1-4]|\(\w\w|\[\w*\])")
_MAN_ESCAPES = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(aq": "'", r"\(dq": '"', r"\e": "\\", r"\&": ""}


def _man_inline(line: str) -> str:
    line = _MAN_FONT.sub("", line)
    for escape, char in _MAN_ESCAPES.items():
        line = line.replace(escape, char)
    return re.sub(r"\\\(\w\w|\\[*]\(?\w+", "", line)


_ALTERNATING = ("BI", "BR", "IB", "IR", "RB", "RI")  # fonts alternate, arguments joined without spaces


def _man_words(args: str, alternating: bool) -> str:
    """A request's arguments as text: quotes removed; joined without spaces for the alternating-font ones."""
    words = [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', _man_inline(args))]
    return ("" if alternating else " ").join(words).strip()


def man_to_text(text: str) -> tuple[str, tuple[str, ...]]:
    """A man page's groff source -> (text, headings): ``.SH``/``.SS`` are headings, ``.TH`` the title,
    font macros (``.B``, ``.IR``...) keep their words, other requests are dropped."""
    out, headings = [], []
    for raw in text.splitlines():
        if raw.startswith(('.\\"', "'\\\"")):
            continue  # comment
        m = re.match(r"^[.\']\s*(\w+)\s*(.*)$", raw)
        if not m:
            out.append(_man_inline(raw))
            continue
        request, args = m.group(1), _man_words(m.group(2), alternating=m.group(1) in _ALTERNATING)
        if request in ("SH", "SS", "TH"):
            title = args.split()[0] if request == "TH" and args else args
            if title:
                headings.append(title)
                out += ["", title, ""]
        elif request in ("B", "I", "SM", "SB", *_ALTERNATING):
            out.append(args)
        elif request in ("PP", "LP", "P", "TP", "IP", "sp", "br") and args:
            out += ["", args] if request == "IP" else [""]
        elif request in ("PP", "LP", "P", "TP", "sp", "br"):
            out.append("")
    return "\n".join(out), tuple(headings)
