"""Training pairs from the documents' own structure: a section heading is a query for the section's body.

Why: the title -> body pairs that E5 (Wang et al. 2022, arXiv:2212.03533) and GTE (Li et al. 2023,
arXiv:2308.03281) pre-train on cost no generation time, and in documentation a heading ("Sorting a hash by
value", "chomp VARIABLE") reads much like what people search for. They sit beside the LLM's questions in
the training data only: never in the test set, which stays the generator's held-out questions. Without
LLM questions (sdg's ``questions_per_passage`` 0) prep trains on them alone and tests on the test
documents' headings, each against its whole section with the heading line cut off.

One pair per section with a heading: the query is the heading, the positive is the section's first passage
with the heading line cut off (a positive that starts with its own query teaches string matching). The
positive keeps the document title, as every passage does. With ``passages_per_section`` > 1 the section's
next passages (which never carry the heading) are further positives of the same query; on the Perl FAQ's
real questions 3 scored lower than 1 (docs/benchmarks.md), so 1 is the default. With ``whole_section``
the positive is the whole section, its passages joined (0.012 lower there: a heading names what its section
opens with), and the joined passages are no negatives of the heading. Skipped: headings found in
more than one document ("Description", "Examples": no one's answer), headings equal to their document's
title, and bodies shorter than ``MIN_BODY_WORDS`` words. Section numbers ("36.4.2.") are cut from the query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from embedforge.data.corpus import Passage

MIN_BODY_WORDS = 8
BODY_SUFFIX = "#body"  # id of the heading-free copy of a passage: "<passage id>#body"


@dataclass(frozen=True)
class HeadingPair:
    """A heading, the id and text of its body passage, and the id of the passage it was cut from."""

    question_id: str
    heading: str
    body_id: str
    body: str
    source_id: str
    doc_id: str
    title: str
    # the section's next passages, positives too (``passages_per_section`` > 1)
    more_ids: tuple[str, ...] = ()
    # the section's next passages joined into ``body`` (``whole_section``): no negatives of this heading
    joined_ids: tuple[str, ...] = ()


# "36.4.2. ", "F.10.1. ", "2) ": numbering says where a section is, not what it is about
_NUMBERING = re.compile(r"^(?:[A-Z]\.)?\d+(?:\.\d+)*[.)]?\s+")


def query_of(heading: str) -> str:
    """The heading as a query: its section number cut off."""
    return _NUMBERING.sub("", heading).strip()


def _key(heading: str) -> str:
    return " ".join(query_of(heading).casefold().split())


def heading_pairs(
    passages: Iterable[Passage],
    doc_ids: set[str] | None = None,
    passages_per_section: int = 1,
    whole_section: bool = False,
) -> list[HeadingPair]:
    """Heading -> body pairs of ``passages`` (in document order), from the documents in ``doc_ids`` (None = all).

    Headings are counted over every document, so a heading shared with an excluded document still counts
    as generic. ``passages_per_section``: how many of a section's passages, from its first, are positives.
    """
    if passages_per_section < 1:
        raise ValueError(f"passages_per_section must be >= 1, got {passages_per_section}")
    passages = list(passages)
    docs_per_heading: dict[str, set[str]] = {}
    section_passages: dict[tuple[str, str], list[Passage]] = {}
    for p in passages:
        if p.section:
            docs_per_heading.setdefault(_key(p.section), set()).add(p.doc_id)
            section_passages.setdefault((p.doc_id, p.section), []).append(p)
    pairs, seen = [], set()
    for p in passages:
        section = (p.doc_id, p.section)
        if not p.section or section in seen or (doc_ids is not None and p.doc_id not in doc_ids):
            continue
        seen.add(section)
        if len(docs_per_heading[_key(p.section)]) > 1 or _key(p.section) == _key(p.title):
            continue
        body = p.text[len(p.section) :].lstrip(" :.-") if p.text.startswith(p.section) else p.text
        rest = section_passages[section][1:]
        joined = tuple(rest) if whole_section else ()
        body = " ".join([body, *(q.text for q in joined)])
        if len(body.split()) < MIN_BODY_WORDS:
            continue
        more = () if whole_section else tuple(q.passage_id for q in rest[: passages_per_section - 1])
        pairs.append(
            HeadingPair(f"h-{p.passage_id}", query_of(p.section), p.passage_id + BODY_SUFFIX, body, p.passage_id,
                        p.doc_id, p.title, more, tuple(q.passage_id for q in joined))
        )  # fmt: skip
    return pairs
