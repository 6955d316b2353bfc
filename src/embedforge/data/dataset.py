"""The in-memory data every format reads into and writes from, and the one rule for a passage's text and id.

``TrainingExample`` (a query with positive and negative passages) and ``BeirDataset`` (corpus, queries,
qrels) are what ``formats`` converts between; ``passage_text`` and ``passage_id`` are used by every stage
so training, eval and serving embed and name identical strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from embedforge.data.records import DataFormatError, json_kind, text_field


@dataclass
class TrainingExample:
    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    query_id: str | None = None
    positive_ids: list[str] | None = None
    negative_ids: list[str] | None = None


@dataclass
class BeirDataset:
    corpus: dict[str, dict]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def passage_id(text: str) -> str:
    """Stable id of a passage: the same text gets the same id in every run, stage and format."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def passage_text(doc: dict | str) -> str:
    """The text a model embeds for a BEIR corpus entry: "title text", or just the text without a title.

    BEIR's and MTEB's dense-retrieval join (title, one space, text), so scores compare with published ones.
    The one place this is decided: training, eval and serving all embed identical strings.
    """
    if isinstance(doc, str):
        return doc
    return f"{(doc.get('title') or '').strip()} {(doc.get('text') or '').strip()}".strip()


def check_example(ex, path, n) -> None:
    """Writers check each example so a bad one fails the write instead of producing a bad file."""
    text_field(path, n, ex.query, "query", "example")
    if not isinstance(ex.positives, list) or not ex.positives:
        raise DataFormatError(path, "needs at least one positive", n, "positives", unit="example")
    for name in ("positives", "negatives"):
        texts = getattr(ex, name)
        if not isinstance(texts, list):
            raise DataFormatError(path, f"must be a list, got {json_kind(texts)}", n, name, unit="example")
        for i, text in enumerate(texts):
            text_field(path, n, text, f"{name}[{i}]", "example")
        ids = getattr(ex, name[:-1] + "_ids")
        if ids is not None and len(ids) != len(texts):
            msg = f"has {len(ids)} ids for {len(texts)} passages"
            raise DataFormatError(path, msg, n, name[:-1] + "_ids", unit="example")


class PassageIds:
    """Gives each distinct passage one id: the id the input carried, else the text's hash."""

    def __init__(self):
        self.texts: dict[str, str] = {}  # id -> text
        self._ids: dict[str, str] = {}  # text -> id

    def add(self, text: str, known_id: str | None = None) -> str:
        pid = known_id if known_id is not None else self._ids.get(text, passage_id(text))
        if self.texts.setdefault(pid, text) != text:
            raise ValueError(f'id "{pid}" is used for two different passages')
        self._ids.setdefault(text, pid)
        return pid

    def add_all(self, texts, known_ids, path, n, name) -> list[str]:
        """Ids for one example's positives or negatives; a clash is reported against that example."""
        try:
            return [self.add(t, i) for t, i in zip(texts, known_ids or [None] * len(texts), strict=True)]
        except ValueError as e:
            raise DataFormatError(path, str(e), n, f"{name[:-1]}_ids", unit="example") from None
