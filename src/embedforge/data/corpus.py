"""Read a folder of documents and cut them into passages with stable ids.

What it does:
- walks a folder recursively and reads ``.txt``, ``.md``, ``.rst``, ``.adoc``, ``.html``/``.htm`` and man
  page (``.1``-``.9``, ``.man``) files into :class:`Document` records (``doc_id`` = path relative to the
  folder, POSIX style), each with its section headings: HTML ``h1``-``h6``, Markdown, reST and AsciiDoc
  titles, man pages' ``.SH``/``.SS``, and in plain text a short title line standing alone over a paragraph;
- turns HTML into text with the standard library's ``html.parser``: scripts, styles, navigation bars,
  headers/footers and tables of contents are dropped, headings become lines of their own, ``<title>`` is
  the document title; Markdown and reStructuredText lose their heading markup and little else;
- splits text into sentences with a small regex splitter that knows common abbreviations ("e.g.",
  "Dr.") and never splits inside decimals or version numbers ("3.14", "v2.0.1");
- groups sentences into passages of about five sentences (the Nemotron recipe's chunk size), never
  crossing a section heading and never exceeding ``max_tokens`` as measured by a tokenizer callable you
  pass in (a whitespace estimate otherwise); a sentence longer than the cap is split by words;
- gives every passage the id ``sha1(text)[:16]`` so ids are stable across runs and machines, drops
  near-empty passages and keeps only the first copy of identical passages;
- skips binary, undecodable or empty files with a logged warning and lists them as
  ``(path, reason)`` instead of failing.

What it deliberately does not do: PDF/Office parsing, OCR, language detection, semantic or
embedding-based chunking, overlapping windows, or any network access. Files are read as they are; a
document that needs cleaning beyond dropping boilerplate should be cleaned before it gets here.

Example::

    from embedforge.data.corpus import load_corpus
    result = load_corpus("docs/", max_tokens=200)
    print(len(result.documents), len(result.passages), result.skipped)
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.data.markup import html_to_text, man_to_text, markdown_to_text, plain_to_text, rst_to_text

logger = logging.getLogger(__name__)

#: File suffixes :func:`read_documents` picks up (compared case-insensitively).
SUPPORTED_SUFFIXES = (
    ".txt",
    ".md",
    ".rst",
    ".html",
    ".htm",
    ".adoc",
    ".asciidoc",
    ".man",
    *(f".{n}" for n in range(1, 10)),
)
#: Suffixes read as man pages (groff source: ``ls.1``, ``gitfaq.7``).
MAN_SUFFIXES = (".man", *(f".{n}" for n in range(1, 10)))

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Document:
    """One source file as plain text.

    Attributes:
        doc_id: path relative to the corpus folder, POSIX separators (``guide/install.md``).
        path: absolute path of the file.
        title: ``<title>`` for HTML, the first heading for Markdown/reST, else the file stem.
        text: plain text; blocks (paragraphs, headings, list items) separated by blank lines.
        headings: the heading lines found in ``text``, in order; chunking starts a new passage at each.
    """

    doc_id: str
    path: str
    title: str
    text: str
    headings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Passage:
    """One chunk of a document, the unit that gets embedded and retrieved.

    Attributes:
        passage_id: first 16 hex characters of ``sha1(text)``.
        doc_id: the :class:`Document` it came from.
        text: the passage text, whitespace-normalised.
        title: the document title.
        section: the heading of the section the passage lies in ("" before the first heading).
    """

    passage_id: str
    doc_id: str
    text: str
    title: str
    section: str = ""


@dataclass
class CorpusResult:
    """What :func:`load_corpus` returns."""

    documents: list[Document]
    passages: list[Passage]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Token counting


def estimate_tokens(text: str) -> int:
    """Rough sub-word token count: 1.3 x whitespace words (about right for English WordPiece/BPE)."""
    return math.ceil(len(text.split()) * 1.3)


def make_token_counter(tokenizer, add_special_tokens: bool = True) -> TokenCounter:
    """Wrap a Hugging Face tokenizer as a ``count_tokens`` callable for :func:`chunk_document`.

    Counting special tokens ([CLS]/[SEP]) by default means a passage that fits the cap also fits the
    model's ``max_seq_length`` once encoded. Leave room for a ``passage: `` prefix by lowering ``max_tokens``.

    Example::

        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer(path)
        count = make_token_counter(model.tokenizer)
        chunk_document(doc, max_tokens=model.max_seq_length, count_tokens=count)
    """

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"])

    count.__qualname__ = (
        f"make_token_counter({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__})"
    )
    return count


# ---------------------------------------------------------------------------------------------------------
# Sentence splitting

# Lower-cased words that end with a period but do not end a sentence.
ABBREVIATIONS = frozenset(
    """
    e.g i.e cf vs etc al approx ca resp viz fig figs eq eqs no nos vol vols p pp ch sec secs ref refs
    mr mrs ms dr prof sr jr st mt inc ltd co corp dept univ est min max avg misc incl excl
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
    u.s u.k e.u a.m p.m ph.d b.sc m.sc
    """.split()
)

# A candidate boundary: terminal punctuation, optional closing quotes/brackets, then whitespace.
# CJK full stops end a sentence without needing a space.
_BOUNDARY = re.compile(r"""([.!?…]+["'”’)\]]*)(\s+)|([。！？]+["'”’)\]]*)\s*""")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _is_abbreviation(text_before: str) -> bool:
    m = _WORD_BEFORE.search(text_before)
    if not m:
        return False
    word = m.group(1).lstrip("([\"'“‘").rstrip(".").lower()
    if word in ABBREVIATIONS:
        return True
    # Single letters are initials ("J. Smith", "Appendix A. ..."), dotted runs are acronyms ("U.S.A.").
    return bool(re.fullmatch(r"[^\W\d_]", word) or re.fullmatch(r"(?:[^\W\d_]\.)+[^\W\d_]", word))


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a regex; whitespace inside each sentence is normalised.

    Blank lines always end a sentence (they separate paragraphs, headings and list items). Inside a
    paragraph a sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by whitespace, unless the word before
    is a known abbreviation or an initial, or the next word starts with a lower-case letter. Decimals and
    versions (``3.14``, ``v2.0.1``) have no space after the dot so they never split. ``。！？`` split
    without a space.

    Args:
        text: any text.

    Returns:
        Non-empty sentences in order.

    Example::

        >>> split_sentences("Use e.g. version 2.0.1 here. It works! Does it?")
        ['Use e.g. version 2.0.1 here.', 'It works!', 'Does it?']
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        start = 0
        for m in _BOUNDARY.finditer(paragraph):
            end = m.end(1) if m.group(1) else m.end(3)
            if m.group(1):  # Latin-style boundary: check it is a real one.
                rest = paragraph[m.end() :]
                if not rest:
                    continue
                if m.group(1).startswith(".") and _is_abbreviation(paragraph[start : m.start(1)]):
                    continue
                if rest[0].islower():
                    continue
            piece = paragraph[start:end].strip()
            if piece:
                sentences.append(piece)
            start = m.end()
        piece = paragraph[start:].strip()
        if piece:
            sentences.append(piece)
    return sentences


# ---------------------------------------------------------------------------------------------------------
# Chunking


def passage_id(text: str) -> str:
    """Stable passage id: the first 16 hex characters of the SHA-1 of the UTF-8 text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _largest_prefix(units: list[str], sep: str, max_tokens: int, count: TokenCounter) -> int:
    """Largest n >= 1 such that sep.join(units[:n]) fits; 1 if even one unit does not fit."""
    lo, hi = 1, len(units)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(sep.join(units[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _split_long(sentence: str, max_tokens: int, count: TokenCounter) -> list[str]:
    """Split a sentence that exceeds the cap into pieces that fit, by words (by characters for a huge word)."""
    pieces: list[str] = []
    words = sentence.split()
    while words:
        n = _largest_prefix(words, " ", max_tokens, count)
        piece = " ".join(words[:n])
        if count(piece) > max_tokens:  # one word alone is over the cap: cut it by characters
            chars = list(words[0])
            while chars:
                k = _largest_prefix(chars, "", max_tokens, count)
                pieces.append("".join(chars[:k]))
                chars = chars[k:]
            n = 1
        else:
            pieces.append(piece)
        words = words[n:]
    return pieces


def _sections(doc: Document) -> Iterable[tuple[str, str]]:
    """Yield (heading, body text) pairs; headings are blocks equal to one of ``doc.headings``."""
    headings = set(doc.headings)
    heading, body = "", []
    for block in re.split(r"\n\s*\n", doc.text):
        flat = " ".join(block.split())
        if not flat:
            continue
        if flat in headings:
            yield heading, "\n\n".join(body)
            heading, body = flat, []
        else:
            body.append(block)
    yield heading, "\n\n".join(body)


def _section_units(heading: str, body: str, max_tokens: int, count: TokenCounter, include_heading: bool):
    """A section's sentences, each within the cap (a longer one split by words), with its heading line
    first when ``include_heading``; also how many leading units do not count as sentences (0 or 1)."""
    units: list[str] = []
    for sentence in split_sentences(body):
        units.extend(
            [sentence] if count(sentence) <= max_tokens else _split_long(sentence, max_tokens, count)
        )
    if include_heading and heading and units and count(heading) <= max_tokens:
        return [heading, *units], 1  # the heading line does not count towards sentences_per_chunk
    return units, 0


def _group_units(units: list[str], lead: int, sentences_per_chunk: int, max_tokens: int, count) -> list[str]:
    """Consecutive units joined into chunks of at most ``sentences_per_chunk`` (plus ``lead`` in the first)
    and ``max_tokens``."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for unit in units:
        candidate = current + [unit]
        full = len(current) - (lead if not chunks else 0) >= sentences_per_chunk
        if current and (full or count(" ".join(candidate)) > max_tokens):
            chunks.append(current)
            current = [unit]
        else:
            current = candidate
    if current:
        chunks.append(current)
    return [" ".join(chunk) for chunk in chunks]


def _merge_short(chunks: list[str], min_words: int, max_tokens: int, count: TokenCounter) -> list[str]:
    """A chunk under ``min_words`` words joins the one before it when that still fits the cap, else goes."""
    texts: list[str] = []
    for text in chunks:
        if len(text.split()) >= min_words:
            texts.append(text)
        elif texts and count(texts[-1] + " " + text) <= max_tokens:
            texts[-1] = texts[-1] + " " + text
    return texts


def chunk_document(
    doc: Document,
    sentences_per_chunk: int = 5,
    max_tokens: int = 256,
    min_words: int = 8,
    count_tokens: TokenCounter | None = None,
    include_headings: bool = True,
) -> list[Passage]:
    """Cut a document into passages of about ``sentences_per_chunk`` sentences.

    A passage never spans two sections (a heading starts a new one) and never exceeds ``max_tokens``
    as measured by ``count_tokens``; a single sentence over the cap is split by words. A passage with
    fewer than ``min_words`` words is appended to the previous passage of its section when that still
    fits the cap, else dropped. Identical passages within the document are kept once.

    Args:
        doc: the document.
        sentences_per_chunk: target sentences per passage (5 in the Nemotron recipe).
        max_tokens: hard cap per passage, in ``count_tokens`` units; set it to the model's max length.
        min_words: passages shorter than this (in whitespace words) are merged or dropped.
        count_tokens: ``text -> int``; default :func:`estimate_tokens` (1.3 x words). Use
            :func:`make_token_counter` for the model's own tokenizer.
        include_headings: prefix the first passage of each section with its heading line (context for
            retrieval). Turn off to keep headings out of passage text (``Passage.section`` has them anyway).

    Returns:
        Passages in document order.
    """
    if sentences_per_chunk < 1 or max_tokens < 1:
        raise ValueError("sentences_per_chunk and max_tokens must be >= 1")
    count = count_tokens or estimate_tokens
    passages: list[Passage] = []
    seen: set[str] = set()
    for heading, body in _sections(doc):
        units, lead = _section_units(heading, body, max_tokens, count, include_headings)
        chunks = _group_units(units, lead, sentences_per_chunk, max_tokens, count)
        for text in _merge_short(chunks, min_words, max_tokens, count):
            pid = passage_id(text)
            if pid not in seen:
                seen.add(pid)
                passages.append(Passage(pid, doc.doc_id, text, doc.title, heading))
    return passages


# ---------------------------------------------------------------------------------------------------------
# Reading files

_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w-]+)""", re.IGNORECASE)


def _decode(raw: bytes, is_html: bool) -> str:
    """Decode bytes or raise ValueError with a human-readable reason."""
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("binary file (contains NUL bytes)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        declared = _HTML_CHARSET.search(raw[:4096]) if is_html else None
        if declared:
            try:
                return raw.decode(declared.group(1).decode("ascii"))
            except (LookupError, UnicodeDecodeError):
                pass
        raise ValueError(f"not valid UTF-8 (byte {err.start})") from None


def _read_one(path: Path, doc_id: str) -> Document:
    suffix = path.suffix.lower()
    text = _decode(path.read_bytes(), is_html=suffix in (".html", ".htm"))
    if "\x00" in text:
        raise ValueError("binary file (contains NUL characters)")
    title = ""
    headings: tuple[str, ...] = ()
    if suffix in (".html", ".htm"):
        page = html_to_text(text)
        title, text, headings = page.title, page.text, page.headings
    elif suffix == ".md":
        text, headings = markdown_to_text(text)
    elif suffix == ".rst":
        text, headings = rst_to_text(text)
    elif suffix in MAN_SUFFIXES:
        text, headings = man_to_text(text)
    else:  # .txt, .adoc, .asciidoc: AsciiDoc titles and plain title lines
        text, headings = plain_to_text(text)
    text = re.sub(r"\n\s*\n\s*", "\n\n", text).strip()
    if not text:
        raise ValueError("no text (empty file or only markup)")
    title = title or (headings[0] if headings else path.stem)
    return Document(doc_id, str(path.resolve()), title, text, headings)


def read_documents(folder: str | Path) -> tuple[list[Document], list[tuple[str, str]]]:
    """Read every supported file under ``folder`` (recursively, in sorted path order).

    Hidden files and folders (names starting with ``.``) are ignored. A file that is binary, not
    decodable, unreadable or empty is skipped with a logged warning and reported.

    Args:
        folder: root folder of the corpus.

    Returns:
        ``(documents, skipped)`` where ``skipped`` lists ``(doc_id, reason)`` pairs.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    documents: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        if not path.is_file():
            continue
        doc_id = rel.as_posix()
        try:
            documents.append(_read_one(path, doc_id))
        except (OSError, ValueError) as err:
            reason = str(err) if isinstance(err, ValueError) else f"unreadable: {err.strerror or err}"
            logger.warning("skipping %s: %s", doc_id, reason)
            skipped.append((doc_id, reason))
    return documents, skipped


def load_corpus(folder: str | Path, **chunk_kwargs) -> CorpusResult:
    """Read a folder and chunk every document; identical passages across documents are kept once (first wins).

    Args:
        folder: root folder of the corpus.
        **chunk_kwargs: passed to :func:`chunk_document` (``sentences_per_chunk``, ``max_tokens``,
            ``min_words``, ``count_tokens``, ``include_headings``).

    Returns:
        :class:`CorpusResult` with documents, unique passages and skipped files.
    """
    documents, skipped = read_documents(folder)
    passages: list[Passage] = []
    seen: set[str] = set()
    for doc in documents:
        for p in chunk_document(doc, **chunk_kwargs):
            if p.passage_id not in seen:
                seen.add(p.passage_id)
                passages.append(p)
    return CorpusResult(documents, passages, skipped)
