"""The real-question dev suite: documentation sets whose FAQs people wrote, built offline from Debian packages.

Why: a recipe tuned on one set (the Perl FAQ, Markdown with headings) may not help on another. Each set
here is a documentation folder in its native format, the folder ``embedforge run --corpus`` reads, plus a
BEIR folder of the FAQ's human-written questions, each with its answer as the one relevant document among
the answers and the sections of the rest of the documentation (the distractors). As in
``embedforge.demo.perlfaq_data``, every answer is a file of its own without its question heading, so no question
ever reaches the pipeline.

- ``perlfaq``: Debian ``perl-doc``, the Perl FAQ against 29 core manual pages (Markdown and text).
- ``rfaq``: Debian ``r-doc-html``, the R FAQ's numbered questions (chapters 2 on) against the other R
  manuals (HTML, split at their headings).
- ``zshfaq``: Debian ``zsh-doc``, the Z shell FAQ (FAQ01-06) against the zsh manual's pages (HTML).
- ``sqlite_git``: the two small FAQs in one folder, scored pooled: Debian ``sqlite3-doc``'s faq.html
  against its other top-level pages (HTML), and Debian ``git-doc``'s gitfaq against the git manual pages
  (AsciiDoc source, ``.txt``).

    .venv/bin/python benchmarks/devsets.py [--cache-dir .cache/devsets] [NAME ...]

writes ``CACHE/NAME/{docs,beir,manifest.json}`` once (the manifest, written last, records the package
versions, counts and the SHA-256 of every file) and prints the counts.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from embedforge.atomic import atomic_write, write_json_atomic
from embedforge.data.formats import BeirDataset, write_beir
from embedforge.data.markup import html_to_text
from embedforge.demo.debian import fetch_debian_package
from embedforge.demo.perlfaq_data import build_perlfaq

ROOT = Path(__file__).resolve().parents[1]
MIN_WORDS = 15  # shorter answers and sections ("See below.") are no one's answer
_HEADING = re.compile(r"<h([1-6])\b[^>]*>(.*?)</h\1\s*>", re.S | re.I)


@dataclass(frozen=True)
class DevsetPaths:
    """Where a set's pipeline folder, BEIR folder and manifest are."""

    name: str
    docs: Path
    beir: Path
    manifest: Path


@dataclass(frozen=True)
class Section:
    """A piece of a page: its heading (plain text), heading level and body (HTML or text)."""

    heading: str
    level: int
    body: str


@dataclass(frozen=True)
class Faq:
    """One FAQ entry: the question, its answer's native markup and the page title its file gets."""

    question: str
    answer: str
    title: str


def _flat(text: str) -> str:
    return " ".join(text.split())


def _words(text: str) -> int:
    return len(text.split())


def html_sections(page: str) -> list[Section]:
    """Split an HTML page at its ``h1``-``h6`` headings; the text before the first is a section with no heading."""
    sections, start, heading, level = [], 0, "", 0
    for m in _HEADING.finditer(page):
        sections.append(Section(heading, level, page[start : m.start()]))
        heading, level, start = _flat(html_to_text(m.group(2)).text), int(m.group(1)), m.end()
    sections.append(Section(heading, level, page[start:]))
    return sections


_ADOC_UNDERLINE = re.compile(r"^([=\-~^+])\1{2,}\s*$")


def asciidoc_sections(text: str) -> list[Section]:
    """Split AsciiDoc at its titles: a line underlined with ``===``/``---``/``~~~``/``^^^`` or ``== Title``."""
    lines, sections, heading, body = text.splitlines(), [], "", []
    i = 0
    while i < len(lines):
        line, nxt = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        underlined = line.strip() and _ADOC_UNDERLINE.match(nxt) and abs(len(nxt) - len(line)) <= 2
        prefixed = re.match(r"^={1,5}\s+(\S.*)$", line)
        if underlined or prefixed:
            sections.append(Section(heading, 1, "\n".join(body)))
            heading, body = (line.strip() if underlined else prefixed.group(1).strip()), []
            i += 2 if underlined else 1
            continue
        body.append(line)
        i += 1
    sections.append(Section(heading, 1, "\n".join(body)))
    return sections


def html_text(fragment: str) -> str:
    return html_to_text(fragment).text.strip()


def adoc_text(fragment: str) -> str:
    """AsciiDoc body as plain text: continuation marks, anchors and ``linkgit:`` macros resolved."""
    text = re.sub(r"linkgit:([\w-]+)\[(\d)\]", r"\1(\2)", fragment)
    text = re.sub(
        r"^\[\[[^\]]*\]\]\s*$|^\+\s*$|^\[(?:verse|source[^\]]*|literal)\]\s*$", "", text, flags=re.M
    )
    return re.sub(r"\n\s*\n\s*", "\n\n", text).strip()


# ------------------------------------------------------------------------------------------ the FAQs


def r_faq(page: str) -> list[Faq]:
    """Numbered sections of chapter 2 on ("2.1 What is R?"); chapter 1 is about the document itself."""
    faqs, chapter = [], "R FAQ"
    for s in html_sections(page):
        if s.level == 2:
            chapter = "R FAQ: " + re.sub(r"^\d+\s+", "", s.heading)
        m = re.match(r"^(\d+)\.\d+(?:\.\d+)?\s+(\S.*)$", s.heading)
        if s.level in (3, 4) and m and m.group(1) != "1":
            faqs.append(Faq(m.group(2), s.body, chapter))
    return faqs


def zsh_faq(page: str) -> list[Faq]:
    """``<h2>3.1: Why does $var ...</h2>`` entries; the chapter's ``<h1>`` is their title."""
    faqs, chapter = [], "Z shell FAQ"
    for s in html_sections(page):
        if s.level == 1:
            chapter = "Z shell FAQ: " + re.sub(r"^Chapter \d+:\s*", "", s.heading)
        m = re.match(r"^\d+\.\d+:\s+(\S.*)$", s.heading)
        if s.level == 2 and m:
            faqs.append(Faq(m.group(1), s.body, chapter))
    return faqs


def sqlite_faq(page: str) -> list[Faq]:
    """``<a name="qN"></a><p><b>(N) question</b></p><blockquote>answer</blockquote>`` entries."""
    faqs = []
    for block in re.split(r'<a name="q\d+"></a>', page)[1:]:
        m = re.match(r"\s*<p><b>\(\d+\)\s*(.*?)</b></p>(.*)", block, re.S)
        if m:
            answer = m.group(2).split("<hr", 1)[0]
            faqs.append(Faq(_flat(html_text(m.group(1))), answer, "SQLite FAQ"))
    return faqs


def git_faq(text: str) -> list[Faq]:
    """``[[anchor]]`` then ``Question?::`` then the answer, up to the next entry or section title."""
    faqs = []
    for s in asciidoc_sections(text):
        for entry in re.split(r"^\[\[[^\]]+\]\]\s*$", s.body, flags=re.M)[1:]:
            m = re.match(r"\s*(.+?)::\s*\n(.*)", entry, re.S)
            if m:
                faqs.append(Faq(_flat(m.group(1).replace("`", "")), m.group(2), f"Git FAQ: {s.heading}"))
    return faqs


# ------------------------------------------------------------------------------------------ building


@dataclass(frozen=True)
class Part:
    """One documentation set in a folder: a FAQ page and its distractor pages, all in one format."""

    package: str
    root: str  # the folder inside the unpacked package
    faq: str  # the FAQ page, relative to ``root``
    parse_faq: Callable[[str], list[Faq]]
    distractors: str  # glob of the distractor pages, relative to ``root``
    exclude: tuple[str, ...]  # distractor file names left out (the FAQ's other pages, index pages)
    subdir: str = ""  # where the part's files go in the set's folder (sets of two parts)

    @property
    def is_html(self) -> bool:
        return self.faq.endswith(".html")


PARTS = {
    "rfaq": [
        Part("r-doc-html", "usr/share/R/doc/manual", "R-FAQ.html", r_faq, "R-*.html", ("R-FAQ.html",)),
    ],
    "zshfaq": [
        Part(
            "zsh-doc",
            "usr/share/doc/zsh-common/html",
            "FAQ.html",
            zsh_faq,
            "*.html",
            ("The-Zsh-FAQ.html",),
        ),
    ],  # fmt: skip
    "sqlite_git": [
        Part("sqlite3-doc", "usr/share/doc/sqlite3", "faq.html", sqlite_faq, "*.html", (), "sqlite"),
        Part("git-doc", "usr/share/doc/git-doc", "gitfaq.txt", git_faq, "git*.txt", (), "git"),
    ],
}
SETS = ("perlfaq", *PARTS)


def _faq_pages(part: Part, root: Path) -> list[Path]:
    """The zsh FAQ is six pages (FAQ01-06) under an index page; the others are one page."""
    if part.package == "zsh-doc":
        return sorted(root.glob("FAQ0[0-9].html"))
    return [root / part.faq]


def _answer_file(part: Part, number: int, faq: Faq) -> tuple[str, str]:
    """(relative path, file content) of one answer in the part's own format, its question left out."""
    if part.is_html:
        body = f"<html><head><title>{html.escape(faq.title)}</title></head><body>\n{faq.answer}\n</body></html>\n"
        return f"faq/{number:03d}.html", body
    return f"faq/{number:03d}.txt", f"{faq.title}\n\n{adoc_text(faq.answer)}\n"


def _sections_of(part: Part, text: str) -> Iterable[tuple[int, str]]:
    """(index on the page, plain text) of the page's sections long enough to be someone's answer."""
    if part.is_html:
        pieces = (html_text(s.body) for s in html_sections(text))
    else:
        pieces = (adoc_text(s.body) for s in asciidoc_sections(text))
    return ((n, p) for n, p in enumerate(pieces) if _words(p) >= MIN_WORDS)


def collect_part(part: Part, root: Path, docs: Path, data: BeirDataset) -> int:
    """Write the part's answers and distractor pages into ``docs`` and add them to ``data``; return its
    number of answers."""
    prefix = f"{part.subdir}/" if part.subdir else ""
    answers = 0
    for page in _faq_pages(part, root):
        for faq in part.parse_faq(page.read_text(encoding="utf-8", errors="replace")):
            text = html_text(faq.answer) if part.is_html else adoc_text(faq.answer)
            if _words(text) < MIN_WORDS:
                continue
            rel, content = _answer_file(part, answers, faq)
            (docs / prefix / rel).parent.mkdir(parents=True, exist_ok=True)
            (docs / prefix / rel).write_text(content, encoding="utf-8")
            qid = f"{prefix}q{answers:03d}"
            data.corpus[prefix + rel] = {"title": "", "text": text}
            data.queries[qid], data.qrels[qid] = faq.question, {prefix + rel: 1}
            answers += 1
    excluded = {part.faq, *part.exclude} | {p.name for p in _faq_pages(part, root)}
    for page in sorted(root.glob(part.distractors)):
        if page.name in excluded or not page.is_file():
            continue
        text = page.read_text(encoding="utf-8", errors="replace")
        (docs / prefix / page.name).parent.mkdir(parents=True, exist_ok=True)
        (docs / prefix / page.name).write_text(text, encoding="utf-8")
        for n, section in _sections_of(part, text):
            data.corpus.setdefault(f"{prefix}{page.name}#{n:03d}", {"title": "", "text": section})
    return answers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_version(package_root: Path, package: str) -> str:
    """``sqlite3-doc 3.40.1-2+deb12u2``: from the first line of the unpacked package's Debian changelog."""
    for changelog in sorted(package_root.glob("usr/share/doc/*/changelog.Debian.gz")):
        first = gzip.decompress(changelog.read_bytes()).decode("utf-8", "replace").partition("\n")[0]
        match = re.search(r"\(([^)]+)\)", first)
        if match:
            return f"{package} {match.group(1)}"
    return package


def build_devset(name: str, cache_dir: Path | str = ROOT / ".cache" / "devsets") -> DevsetPaths:
    """Fetch the set's Debian packages and write ``docs/``, ``beir/`` and ``manifest.json`` (once, atomically;
    the manifest is written last, so its presence means the folders are complete)."""
    cache = Path(cache_dir) / name
    if name == "perlfaq":
        p = build_perlfaq(cache)
        return DevsetPaths(name, p.docs, p.beir, p.manifest)
    if name not in PARTS:
        raise SystemExit(f"unknown dev set {name!r}; known: {', '.join(SETS)}")
    paths = DevsetPaths(name, cache / "docs", cache / "beir", cache / "manifest.json")
    if paths.manifest.is_file():
        return paths
    data, answers, versions = BeirDataset({}, {}, {}), {}, []
    with atomic_write(paths.docs) as tmp:
        for part in PARTS[name]:
            debs = Path(cache_dir) / "debs"
            root = fetch_debian_package(part.package, Path(part.root), part.faq, debs)
            answers[part.package] = collect_part(part, root, tmp, data)
            versions.append(_package_version(debs / part.package, part.package))
    write_beir(data, paths.beir)
    docs = sorted(p for p in paths.docs.rglob("*") if p.is_file())
    write_json_atomic(
        paths.manifest,
        {
            "source": "Debian " + ", ".join(versions),
            "queries": len(data.queries),
            "answers_per_package": answers,
            "documents": len(data.corpus),
            "distractor_documents": len(data.corpus) - len(data.queries),
            "pipeline_files": len(docs),
            "docs_sha256": hashlib.sha256(
                "".join(f"{p.relative_to(paths.docs)}\t{_sha256(p)}\n" for p in docs).encode()
            ).hexdigest(),
            "sha256": {
                str(p.relative_to(cache)): _sha256(p) for p in sorted(paths.beir.rglob("*")) if p.is_file()
            },
        },
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", default=list(SETS), help=f"sets to build (default: all of {SETS})"
    )
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "devsets"))
    args = parser.parse_args(argv)
    for name in args.names:
        paths = build_devset(name, args.cache_dir)
        manifest = json.loads(paths.manifest.read_text())
        print(
            f"{name}: {manifest['queries']} questions, {manifest['documents']} BEIR documents -> {paths.docs}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
