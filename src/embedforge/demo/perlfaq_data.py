"""A retrieval benchmark with questions people wrote: the Perl FAQ, from Debian's ``perl-doc``.

Why: questions an LLM writes for held-out pages reward learning the generator's style. The Perl FAQ
(perlfaq1-9) is a set of real user questions, each a ``=head2`` heading followed by its answer. Here the
questions are the queries, each answer (its heading removed) is the one relevant document, and the
sections of other core manual pages (perlfunc, perlop, perlsyn, perlre, perlvar, ...) are distractors.

:func:`build_perlfaq` writes, under a cache folder and deterministically:

- ``docs/``: the folder ``embedforge run --corpus`` reads, laid out like a documentation site: each FAQ
  answer is a ``.txt`` file of its own with no heading (its heading is the question, which must never reach
  the pipeline), each distractor page is one Markdown file (``perlfunc.md``: ``# perlfunc``, then a
  ``## heading`` and the body of every section it contributes);
- ``beir/``: the same documents as a BEIR folder (``_id`` = ``page/NNN.txt``, the section's number in its
  page; no title) with the questions and their qrels, for ``embedforge eval --beir``;
- ``manifest.json``: counts, the ``perl-doc`` version and the SHA-256 of every written file.

The POD is parsed here (:func:`parse_pod`), not by Perl: formatting codes (``C<>``, ``L<>``, ``E<>``,
``C<< >>``...) become plain text, verbatim blocks stay, ``=begin``/``=for`` blocks are dropped.
perl-doc is distributed under Perl's terms (Artistic License or GPL-1+).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path

from embedforge.atomic import atomic_write, write_json_atomic
from embedforge.data.formats import BeirDataset, write_beir
from embedforge.demo.debian import fetch_debian_package

PACKAGE = "perl-doc"
FAQ_PODS = tuple(f"perlfaq{i}" for i in range(1, 10))
#: Core manual pages whose sections are the distractors (chosen to overlap the FAQ's topics).
DISTRACTOR_PODS = (
    "perlfunc", "perlop", "perlsyn", "perlre", "perlvar", "perldata", "perlsub", "perlref", "perlrun",
    "perlretut", "perlrequick", "perlreref", "perlipc", "perlport", "perlobj", "perlootut", "perlmod",
    "perldsc", "perllol", "perlopentut", "perlpacktut", "perlunicode", "perluniintro", "perlsec",
    "perlstyle", "perltrap", "perlform", "perldebug", "perlintro",
)  # fmt: skip
#: Pages whose entries are ``=item``s (one per function / variable / switch): split at those too.
ITEM_PODS = frozenset({"perlfunc", "perlvar", "perlrun"})
#: Boilerplate sections that are no one's answer.
SKIP_HEADINGS = re.compile(
    r"^(NAME|VERSION|AUTHORS?|COPYRIGHT.*|AUTHOR AND COPYRIGHT|SEE ALSO|LICENSE)$", re.I
)
MIN_WORDS = 15  # shorter sections (a lone "See perlop.") are dropped


@dataclass(frozen=True)
class PodSection:
    """A section of a POD page: its heading (level 1-4 for ``=headN``, 0 for an ``=item`` entry) and body."""

    heading: str
    level: int
    text: str


# ------------------------------------------------------------------------------------------ POD parser

_ESCAPES = {"lt": "<", "gt": ">", "sol": "/", "verbar": "|", "lchevron": "«", "rchevron": "»"}


def _escape(name: str) -> str:
    if name in _ESCAPES:
        return _ESCAPES[name]
    if re.fullmatch(r"0x[0-9a-fA-F]+|0[0-7]*|[1-9]\d*", name):
        return chr(int(name, 0) if not re.fullmatch(r"0[0-7]+", name) else int(name, 8))
    return html.unescape(f"&{name};")


def _link(content: str) -> str:
    """``L<text|target>`` -> text; ``L<perlop/"Quote-Like Operators">`` -> ``"Quote-Like Operators" in perlop``."""
    if "|" in content:
        return content.split("|", 1)[0]
    if re.match(r"\w+:[^:\s]\S*$", content):  # a URL
        return content
    page, _, section = content.partition("/")
    section = section.strip('"')
    if section and page:
        return f'"{section}" in {page}'
    return section or page


def _inline(text: str, start: int = 0, closer: str | None = None) -> tuple[str, int]:
    """Render formatting codes from ``start`` until ``closer`` (or the end); return (text, next index)."""
    out: list[str] = []
    i = start
    while i < len(text):
        if closer and text.startswith(closer, i):
            return "".join(out), i + len(closer)
        m = re.match(r"([A-Z])(<+)", text[i:])
        if m and (len(m.group(2)) == 1 or text[i + m.end() : i + m.end() + 1].isspace()):
            code, angles = m.group(1), len(m.group(2))
            if angles == 1:
                inner, i = _inline(text, i + 2, ">")
            else:  # C<< ... >>: ends at whitespace then as many '>'; surrounding whitespace is not content
                inner, i = _inline(text, i + m.end(), " " + ">" * angles)
                inner = inner.strip()
            out.append(_apply(code, inner))
            continue
        out.append(text[i])
        i += 1
    return "".join(out), i


def _apply(code: str, content: str) -> str:
    if code in "XZ":
        return ""
    if code == "E":
        return _escape(content)
    if code == "L":
        return _link(content)
    return content  # B, I, C, F, S: the text itself


def pod_inline(text: str) -> str:
    """Plain text of one POD paragraph: formatting codes rendered, whitespace collapsed."""
    return " ".join(_inline(text.replace("\n", " "))[0].split())


def _paragraphs(pod: str) -> list[str]:
    paragraphs = re.split(r"\n[ \t]*\n", pod.replace("\r\n", "\n"))
    return [p.lstrip("\n") for p in paragraphs if p.strip()]


def parse_pod(pod: str, split_items: bool = False) -> list[PodSection]:
    """Cut a POD page into sections at ``=head1``-``=head4`` (and, with ``split_items``, at top-level ``=item``s).

    Bodies are plain text, paragraphs separated by blank lines; verbatim (indented) paragraphs keep their
    lines. Consecutive ``=item`` lines (``chomp VARIABLE`` / ``chomp( LIST )``) open one entry, headed by
    the first. ``=begin``..``=end`` blocks and ``=for`` paragraphs are dropped; text before the first
    heading is a section with an empty heading.
    """
    sections: list[PodSection] = []
    heading, level, body = "", 1, []
    depth, skipping, after_item = 0, None, False

    def close() -> None:
        if heading or body:
            sections.append(PodSection(heading, level, "\n\n".join(body).strip()))

    for para in _paragraphs(pod):
        command = re.match(r"=(\w+)\s*", para)
        if skipping:
            if command and command.group(1) == "end" and para[command.end() :].split()[:1] == [skipping]:
                skipping = None
            continue
        if not command:
            if para[0] in " \t":
                body.append("\n".join(line.rstrip() for line in para.splitlines()))
            else:
                body.append(pod_inline(para))
            after_item = False
            continue
        name, arg = command.group(1), para[command.end() :]
        if name.startswith("head") and name[4:].isdigit():
            close()
            heading, level, body = pod_inline(arg), int(name[4:]), []
        elif name == "over":
            depth += 1
        elif name == "back":
            depth = max(0, depth - 1)
        elif name == "item":
            text = pod_inline(arg)
            if split_items and depth == 1 and not after_item:
                close()
                heading, level, body = text, 0, []
            elif split_items and depth == 1:
                pass  # another signature of the same entry
            elif text not in ("*", "") and not re.fullmatch(r"\d+\.?", text):
                body.append(text)
            after_item = True
            continue
        elif name == "begin":
            skipping = arg.split()[0] if arg.split() else ""
        # =pod, =cut, =encoding, =for (its paragraph is the command itself): nothing to keep
        after_item = False
    close()
    return sections


# ------------------------------------------------------------------------------------------ benchmark


@dataclass(frozen=True)
class PerlfaqPaths:
    """Where :func:`build_perlfaq` put the pipeline's document folder, the BEIR folder and the manifest."""

    docs: Path
    beir: Path
    manifest: Path


def fetch_perl_pods(cache_dir: Path | str = Path(".cache/perlfaq")) -> Path:
    """Download and unpack Debian's ``perl-doc`` once (no root needed); return its ``pod`` folder."""
    root = fetch_debian_package(PACKAGE, Path("usr/share/perl"), "*/pod/perlfaq1.pod", cache_dir)
    return sorted(root.glob("*/pod/perlfaq1.pod"))[-1].parent


def _sections(pod_dir: Path, name: str) -> list[PodSection]:
    return parse_pod((pod_dir / f"{name}.pod").read_text(encoding="utf-8"), split_items=name in ITEM_PODS)


def _usable(section: PodSection) -> bool:
    return len(section.text.split()) >= MIN_WORDS and not SKIP_HEADINGS.match(section.heading)


def collect(pod_dir: Path) -> tuple[BeirDataset, dict[str, str]]:
    """The benchmark from an unpacked pod folder: (BEIR dataset, {doc_id: the heading it had})."""
    corpus: dict[str, dict] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    headings: dict[str, str] = {}
    seen: dict[str, str] = {}  # text -> doc id: identical sections are one document
    for name in FAQ_PODS + DISTRACTOR_PODS:
        for number, section in enumerate(_sections(pod_dir, name)):
            if not _usable(section):
                continue
            doc_id = seen.setdefault(section.text, f"{name}/{number:03d}.txt")
            if doc_id not in corpus:
                corpus[doc_id] = {"title": "", "text": section.text}
                headings[doc_id] = section.heading
            if name in FAQ_PODS and section.level == 2:
                query_id = f"{name}-q{number:03d}"
                queries[query_id] = section.heading
                qrels[query_id] = {doc_id: 1}
    return BeirDataset(corpus, queries, qrels), headings


def _write_docs(
    folder: Path, dataset: BeirDataset, headings: dict[str, str], faq_docs: set[str]
) -> list[Path]:
    """FAQ answers as heading-free ``.txt`` files, each distractor page as one Markdown file of sections."""
    pages: dict[str, list[str]] = {}
    for doc_id, doc in dataset.corpus.items():
        if doc_id in faq_docs:
            (folder / doc_id).parent.mkdir(parents=True, exist_ok=True)
            (folder / doc_id).write_text(doc["text"] + "\n", encoding="utf-8")
        else:
            page = doc_id.split("/")[0]
            heading = f"## {headings[doc_id]}\n\n" if headings[doc_id] else ""
            body = "\n\n".join(  # verbatim (indented) paragraphs are code: fenced, so '# comment' is no heading
                f"```\n{para}\n```" if para[:1].isspace() else para for para in doc["text"].split("\n\n")
            )
            pages.setdefault(page, [f"# {page}"]).append(heading + body)
    for page, blocks in pages.items():
        (folder / f"{page}.md").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _debian_version(pod_dir: Path) -> str:
    """``5.36.0-7+deb12u3``: the package version, from the first line of its Debian changelog."""
    changelog = pod_dir.parents[2] / "doc" / PACKAGE / "changelog.Debian.gz"
    if not changelog.is_file():
        return pod_dir.parent.name
    first = gzip.decompress(changelog.read_bytes()).decode("utf-8", "replace").partition("\n")[0]
    match = re.search(r"\(([^)]+)\)", first)
    return match.group(1) if match else pod_dir.parent.name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_perlfaq(cache_dir: Path | str = Path(".cache/perlfaq")) -> PerlfaqPaths:
    """Fetch ``perl-doc`` and write ``docs/``, ``beir/`` and ``manifest.json`` under ``cache_dir`` (once).

    Later calls find the manifest and return at once. Every output is written atomically; the manifest
    is written last, so its presence means the folders are complete.
    """
    cache_dir = Path(cache_dir)
    paths = PerlfaqPaths(cache_dir / "docs", cache_dir / "beir", cache_dir / "manifest.json")
    if paths.manifest.is_file():
        return paths
    pod_dir = fetch_perl_pods(cache_dir)
    dataset, headings = collect(pod_dir)
    faq_docs = {doc for rels in dataset.qrels.values() for doc in rels}
    with atomic_write(paths.docs) as tmp:
        _write_docs(tmp, dataset, headings, faq_docs)
    write_beir(dataset, paths.beir)
    files = sorted(p for p in paths.beir.rglob("*") if p.is_file())
    write_json_atomic(
        paths.manifest,
        {
            "source": f"Debian {PACKAGE} {_debian_version(pod_dir)} (Perl's Artistic License or GPL-1+)",
            "queries": len(dataset.queries),
            "documents": len(dataset.corpus),
            "answer_documents": len(faq_docs),
            "distractor_documents": len(dataset.corpus) - len(faq_docs),
            "docs_sha256": hashlib.sha256(
                "".join(
                    f"{p.relative_to(paths.docs)}\t{_sha256(p)}\n"
                    for p in sorted(paths.docs.rglob("*"))
                    if p.is_file()
                ).encode()
            ).hexdigest(),
            "sha256": {str(p.relative_to(cache_dir)): _sha256(p) for p in files},
            "headings": headings,
        },
    )
    return paths
