"""The demo corpus: the PostgreSQL 15 manual from Debian, and a small training set derived from it.

What it does:
- :func:`fetch_postgres_manual` downloads the Debian package ``postgresql-doc-15`` with
  ``apt-get download`` (no root needed), unpacks it with ``dpkg-deb -x`` into a cache folder and returns
  the folder of HTML pages. It runs once: later calls find the extracted pages and return at once.
  Extraction goes to a temporary folder that is renamed into place, so an interrupted run never leaves
  a half-extracted manual behind.
- :func:`build_demo_dataset` turns those pages into a training set and a held-out test set without
  any LLM, so the demo works before a question generator is configured. Pages are split 80/20 **by
  document** (seed 42), as the Nemotron recipe does. Each section heading becomes a query whose
  positive is the first passage of that section; passages do not contain their headings, so the
  model has to match a topic name ("String Functions and Operators", "CREATE TABLE parameters") to
  the prose that explains it. Headings shared by many pages ("Description", "Examples") are
  qualified with the page title. The test set is a BEIR folder whose corpus is every passage of the
  test pages, so each query competes against its own page's other sections.

What it deliberately does not do: write questions with an LLM (the ``sdg`` stage does that), mine
hard negatives (``mining``; ``neg_doc`` is left empty), or depend on the network beyond the Debian
mirror that ``apt-get`` is configured with. The readers and writers for these file formats live in
``formats``; this module writes its three small files by hand to stay independent of it.

Example::

    from embedforge.demo_data import fetch_postgres_manual, build_demo_dataset
    html = fetch_postgres_manual()
    counts = build_demo_dataset(html, "data/demo")
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from embedforge.corpus import Document, Passage, TokenCounter, chunk_document, read_documents

logger = logging.getLogger(__name__)

PACKAGE = "postgresql-doc-15"
#: Where the HTML pages sit inside the unpacked package.
HTML_SUBDIR = Path("usr/share/doc/postgresql-doc-15/html")

# Section headings that do not name a topic a user would search for.
_SKIP_HEADINGS = frozenset({"see also", "author", "authors", "name", "synopsis"})

_SECTION_NUMBER = re.compile(
    r"^(?:(?:chapter|appendix|part|section|step)\s+[0-9A-Z]+\.?\s*|(?:[0-9]+|[A-Z])(?:\.[0-9]+)*\.\s+)",
    re.IGNORECASE,
)


def fetch_postgres_manual(cache_dir: Path | str = Path(".cache/demo")) -> Path:
    """Download and unpack the PostgreSQL 15 manual (Debian ``postgresql-doc-15``); return its HTML folder.

    Idempotent: if the pages are already extracted under ``cache_dir`` nothing is downloaded. Atomic:
    the package is unpacked into a temporary folder next to the target and renamed into place.

    Args:
        cache_dir: where to keep the unpacked package (``<cache_dir>/postgresql-doc-15/``).

    Returns:
        The folder holding the manual's ``*.html`` pages.

    Raises:
        RuntimeError: ``apt-get``/``dpkg-deb`` are missing (not a Debian-based system), the package is
            unknown because the package lists are empty (run ``sudo apt-get update``), or the download fails.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / PACKAGE
    html_dir = target / HTML_SUBDIR
    if html_dir.is_dir() and any(html_dir.glob("*.html")):
        return html_dir
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"`{tool}` not found: the demo manual comes from the Debian package {PACKAGE}, which needs a "
                "Debian or Ubuntu system. Point the demo at any folder of .html/.md/.txt files instead."
            )
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        tmp_path = Path(tmp)
        download = _apt_download(tmp_path)
        debs = sorted(tmp_path.glob(f"{PACKAGE}_*.deb"))
        if download.returncode != 0 or not debs:
            message = (download.stderr or download.stdout).strip()
            if re.search(r"Unable to locate package|no installation candidate|Can't select", message):
                hint = (
                    f"apt does not know {PACKAGE}: the package lists are probably empty. "
                    "Run `sudo apt-get update` once, then try again."
                )
            else:
                hint = f"`apt-get download {PACKAGE}` failed."
            raise RuntimeError(f"{hint}\n{message}")
        root = tmp_path / "root"
        extract = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], capture_output=True, text=True)
        if extract.returncode != 0 or not (root / HTML_SUBDIR).is_dir():
            raise RuntimeError(f"`dpkg-deb -x {debs[-1].name}` failed: {extract.stderr.strip()}")
        try:
            root.rename(target)
        except OSError:
            if not html_dir.is_dir():  # not a concurrent run that won the race
                raise
    logger.info("fetched %s into %s in %.1fs", PACKAGE, target, time.perf_counter() - start)
    return html_dir


def _apt_download(folder: Path) -> subprocess.CompletedProcess:
    """``apt-get download``; on a fresh machine with empty package lists, refresh them once if we are root."""
    download = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True)
    unknown = re.search(r"Unable to locate package|no installation candidate", download.stderr or "")
    if download.returncode != 0 and unknown and hasattr(os, "geteuid") and os.geteuid() == 0:
        logger.info("apt does not know %s yet: running apt-get update once", PACKAGE)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        download = subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True
        )
    return download


def clean_heading(heading: str) -> str:
    """Strip section numbers and labels: ``"9.4.1. format"`` -> ``"format"``, ``"Chapter 9. Functions"`` -> ``"Functions"``."""
    text = " ".join(heading.split())
    text = _SECTION_NUMBER.sub("", text, count=1)
    return text.strip(" .:")


def _heading_queries(
    docs: list[Document], first_passage: dict[tuple[str, str], Passage]
) -> dict[str, list[tuple[str, Passage]]]:
    """Per document, (query, positive passage) pairs from section headings."""
    # How many pages use each heading: a heading on several pages needs its page title to mean anything.
    usage = Counter(h for doc in docs for h in {clean_heading(x).lower() for x in doc.headings})
    pairs: dict[str, list[tuple[str, Passage]]] = {}
    for doc in docs:
        title = clean_heading(doc.title)
        seen: set[str] = set()
        for heading in doc.headings:
            passage = first_passage.get((doc.doc_id, heading))
            name = clean_heading(heading)
            if passage is None or len(name) < 3 or name.lower() in _SKIP_HEADINGS:
                continue
            query = name if usage[name.lower()] <= 1 or name.lower() == title.lower() else f"{title} {name}"
            if query.lower() not in seen:
                seen.add(query.lower())
                pairs.setdefault(doc.doc_id, []).append((query, passage))
    return pairs


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_demo_dataset(
    html_dir: Path | str,
    out_dir: Path | str,
    max_docs: int | None = None,
    seed: int = 42,
    test_fraction: float = 0.2,
    max_train_pairs: int = 1200,
    max_test_queries: int = 250,
    max_test_corpus: int = 2500,
    sentences_per_chunk: int = 5,
    max_tokens: int = 200,
    min_words: int = 8,
    count_tokens: TokenCounter | None = None,
) -> dict[str, int]:
    """Derive a training set and a BEIR test set from a folder of HTML pages, without an LLM.

    Args:
        html_dir: folder of pages (e.g. from :func:`fetch_postgres_manual`); any folder
            :func:`embedforge.corpus.read_documents` reads works.
        out_dir: where ``train.jsonl``, ``test_beir/`` and ``dataset_config.json`` are written.
        max_docs: use only this many pages, sampled with ``seed`` (None: all).
        seed: seed of the document split and of all subsampling.
        test_fraction: share of pages held out for the test set (split by page, never by passage).
        max_train_pairs: subsample training pairs to at most this many.
        max_test_queries: subsample test queries to at most this many.
        max_test_corpus: keep only as many test pages as fit this many passages (whole pages only);
            pages dropped from the test side are not moved to training.
        sentences_per_chunk: passage size in sentences.
        max_tokens: passage cap in ``count_tokens`` units.
        min_words: shorter passages are merged or dropped.
        count_tokens: token counter for the cap; pass
            ``embedforge.corpus.make_token_counter(model.tokenizer)`` to cap in the model's own tokens.
            Default: the 1.3 x words estimate (on this manual about 2% of passages then exceed 256
            MiniLM word pieces, because code and identifiers split into many pieces).

    Returns:
        Counts: documents, train/test documents, train pairs, test queries, test corpus passages.
    """
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items() if k != "count_tokens"}
    config["count_tokens"] = (
        getattr(count_tokens, "__qualname__", repr(count_tokens)) if count_tokens else "estimate"
    )
    start = time.perf_counter()
    html_dir, out_dir = Path(html_dir), Path(out_dir)
    docs, skipped = read_documents(html_dir)
    rng = random.Random(seed)
    if max_docs is not None and max_docs < len(docs):
        docs = sorted(rng.sample(docs, max_docs), key=lambda d: d.doc_id)

    # Chunk every page; identical passages are kept once (first page wins) so no text sits on both sides.
    passages_by_doc: dict[str, list[Passage]] = {}
    first_passage: dict[tuple[str, str], Passage] = {}
    seen: set[str] = set()
    for doc in docs:
        kept, sections = [], set()
        for p in chunk_document(
            doc, sentences_per_chunk, max_tokens, min_words, count_tokens, include_headings=False
        ):
            opens_section = p.section not in sections
            sections.add(p.section)
            if p.passage_id in seen:
                continue
            seen.add(p.passage_id)
            kept.append(p)
            if opens_section and p.section:
                first_passage[(doc.doc_id, p.section)] = p
        passages_by_doc[doc.doc_id] = kept

    # Split by document.
    doc_ids = sorted(passages_by_doc)
    rng.shuffle(doc_ids)
    n_test = max(1, round(len(doc_ids) * test_fraction)) if len(doc_ids) > 1 else 0
    test_ids, train_ids = doc_ids[:n_test], doc_ids[n_test:]
    corpus_size, kept_test = 0, []
    for doc_id in test_ids:
        size = len(passages_by_doc[doc_id])
        if kept_test and corpus_size + size > max_test_corpus:
            continue
        kept_test.append(doc_id)
        corpus_size += size
    test_ids = sorted(kept_test)
    train_ids = sorted(train_ids)

    pairs = _heading_queries(docs, first_passage)
    train_pairs = [pair for d in train_ids for pair in pairs.get(d, [])]
    test_pairs = [pair for d in test_ids for pair in pairs.get(d, [])]
    if len(train_pairs) > max_train_pairs:
        train_pairs = rng.sample(train_pairs, max_train_pairs)
    if len(test_pairs) > max_test_queries:
        test_pairs = sorted(rng.sample(test_pairs, max_test_queries), key=lambda qp: qp[1].doc_id)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        out_dir / "train.jsonl",
        [{"query": q, "pos_doc": p.text, "neg_doc": []} for q, p in train_pairs],
    )
    beir = out_dir / "test_beir"
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = [p for d in test_ids for p in passages_by_doc[d]]
    _write_jsonl(
        beir / "corpus.jsonl",
        # No title: the page title often equals a heading-query, which would make retrieval trivial; and the
        # training positives are bare passage text, so test passages are embedded the same way.
        [{"_id": p.passage_id, "title": "", "text": p.text} for p in corpus],
    )
    queries = [(f"q{i:05d}", q, p.passage_id) for i, (q, p) in enumerate(test_pairs)]
    _write_jsonl(beir / "queries.jsonl", [{"_id": qid, "text": q} for qid, q, _ in queries])
    with (beir / "qrels" / "test.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{qid}\t{pid}\t1\n" for qid, _, pid in queries)

    counts = {
        "documents": len(docs),
        "skipped_files": len(skipped),
        "train_documents": len(train_ids),
        "test_documents": len(test_ids),
        "train_pairs": len(train_pairs),
        "test_queries": len(queries),
        "test_corpus": len(corpus),
    }
    config.update(html_dir=str(html_dir), out_dir=str(out_dir), counts=counts, test_documents=test_ids)
    (out_dir / "dataset_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("demo dataset %s built in %.1fs", counts, time.perf_counter() - start)
    return counts
