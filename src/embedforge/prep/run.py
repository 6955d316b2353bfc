"""The prep stage: sdg's question pairs -> a leak-free document split, hard negatives, training and test data.

What it does (the prep stage of NVIDIA's Nemotron `embed` recipe):

1. reads the pairs JSONL and the passages JSONL that sdg writes (schemas below), checking every line;
2. splits **by document**: the documents that have questions are shuffled with ``seed`` and test documents
   are drawn from them until they hold about ``test_fraction`` of the questions (at least one document, at
   most all but one), so a corpus of a few large manuals still holds out a share of its questions, not
   of its files. A question belongs
   to the document(s) of its positive passages (not to its ``doc_id`` field, which is only cross-checked);
   a question whose positives span a train and a test document is dropped and counted. Documents without
   questions stay on the train side, where they only serve as negatives. When sdg wrote no questions
   (``questions_per_passage`` 0), the documents with usable section headings are split instead, and the
   test documents' headings become the test questions (``heading_pairs`` must be on). Your own questions
   (``user_questions``, below) take part in the split too, and when given they are the test set;
3. keeps at most ``max_positives`` positives per training query (first ones, duplicates removed);
4. mines hard negatives for train queries from **train documents' passages only** (``mining``), so no
   negative ever comes from a test document (the upstream leak) and none is a positive of its query;
5. unrolls a query with k positives into k records that share the negatives (ids ``<question_id>#<i>``
   when k > 1) and writes ``train.json`` (corpus-ID JSON with mining scores and a ``"mining"`` block, its
   corpus in ``corpus/``) and the same records as inline ``train.jsonl``;
6. writes ``test_beir/``: the test questions, qrels from all their ``positive_ids``, and the passages they
   search: every passage of the corpus (``test_corpus: all``, the default: the search a user runs, with
   the training documents' passages as distractors, never answers) or only the test documents' ones;
7. writes ``prep_report.json`` and ``prep_report.md``: split counts, score distributions of positives and
   negatives, candidates skipped by the margin, rows short of negatives, the config and its hash.

The passage string that is embedded and trained on is ``formats.passage_text`` (title + " " + text), the
string eval embeds for the BEIR corpus, so mining, training and eval see identical passages. Every file
is written atomically.

Input schemas (one JSON object per line):

* pairs: ``{"question_id": str, "question": str, "positive_ids": [passage id, ...], "doc_id": str,
  "query_type": ..., "complexity": int, "hops": int, "scores": {...}}``; only the first three are required;
* passages: ``{"passage_id": str, "doc_id": str, "text": str, "title": str}``; ``title`` may be missing;
* user questions (optional): ``{"question": str, "document": doc_id or [doc_id, ...], "id": str}``; ``id``
  may be missing (``u<line>``). The documents are named as sdg names them: the path relative to the corpus
  folder.

Your own questions (search logs, support tickets, an FAQ) are what the model is for: on the Perl FAQ's
298 real questions, generated questions and section headings lift MiniLM about +10% nDCG@10 and stop
there, and half of the real questions in training added about +0.011 (docs/benchmarks.md). Those on test
documents become the whole test set, every passage of their document relevant (a user names a page, not a
passage), searched in the whole corpus as the users search it (the training documents' passages are
distractors there, never answers; a test corpus of the test documents alone is a handful of pages for an
FAQ), and the generated questions of the test documents go unused: a test on what people ask is the one
that says what a search's users will see. Those on train documents train with the one passage of their
document the mining model scores highest (every passage as a positive makes a row per passage, and a
page's later passages answer less directly: three passages per heading scored 0.022 lower than one); the
document's other passages are no negatives of them.

What it deliberately does not do: write questions (sdg), hold out a validation split (finetune does),
train or evaluate.

Example::

    from embedforge.config import PrepConfig
    from embedforge.prep import run_prep
    report = run_prep(PrepConfig(pairs="runs/sdg/pairs.jsonl", out="runs/prep"))
    report["split"]["questions"]  # {"train": ..., "test": ...}
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from embedforge.atomic import atomic_write
from embedforge.config import PrepConfig, config_dict, config_hash
from embedforge.data.corpus import Passage
from embedforge.data.formats import (
    BeirDataset,
    TrainingExample,
    passage_text,
    write_beir,
    write_corpus_id_json,
    write_inline_jsonl,
)
from embedforge.data.records import DataFormatError, json_kind

# the public record checks under the short names the readers below use
from embedforge.data.records import ident_field as _ident
from embedforge.data.records import iter_jsonl as _iter_jsonl
from embedforge.data.records import required_field as _required
from embedforge.data.records import text_field as _text
from embedforge.errors import EmbedforgeError
from embedforge.layout import SDG_DROPPED_FILE as DROPPED_FILE
from embedforge.models.encoder import Encoder
from embedforge.prep.heading_pairs import heading_pairs
from embedforge.prep.mining import mine_hard_negatives

logger = logging.getLogger(__name__)


class PrepError(EmbedforgeError, RuntimeError):
    """Prep's own output check failed: a mined negative leaks from a test document or is a positive."""


TRAIN_JSON, TRAIN_JSONL, TEST_BEIR = "train.json", "train.jsonl", "test_beir"
REPORT_JSON, REPORT_MD = "prep_report.json", "prep_report.md"
SCORE_DIGITS = 6
USER_QUERY_TYPE = "user"


@dataclass
class Pair:
    """One sdg question: its id, text, positive passage ids (deduplicated, in order) and metadata."""

    question_id: str
    question: str
    positive_ids: list[str]
    doc_id: str | None = None
    query_type: str | None = None
    line: int = 0


# ------------------------------------------------------------------------------------------------ input


def read_pairs(path, keep=None) -> list[Pair]:
    """Read sdg's pairs JSONL (only the records ``keep(record)`` accepts); errors name the file, line, field."""
    pairs, seen = [], {}
    for n, obj in _iter_jsonl(path):
        if keep is not None and not keep(obj):
            continue
        qid = _ident(path, n, _required(path, n, obj, "question_id"), "question_id")
        if qid in seen:
            raise DataFormatError(path, f'duplicate question_id "{qid}" (first on line {seen[qid]})', n)
        seen[qid] = n
        question = _text(path, n, _required(path, n, obj, "question"), "question")
        raw = _required(path, n, obj, "positive_ids")
        if not isinstance(raw, list) or not raw:
            raise DataFormatError(path, "must be a non-empty array of passage ids", n, "positive_ids")
        positives = [_ident(path, n, p, f"positive_ids[{i}]") for i, p in enumerate(raw)]
        doc_id = obj.get("doc_id")
        doc_id = None if doc_id is None else _ident(path, n, doc_id, "doc_id")
        query_type = obj.get("query_type")
        query_type = None if query_type is None else str(query_type)
        pairs.append(Pair(qid, question, list(dict.fromkeys(positives)), doc_id, query_type, n))
    return pairs


def read_user_questions(path, passages: dict[str, Passage]) -> list[Pair]:
    """Read a user questions JSONL; each question's positives are every passage of its document(s).

    Errors name the file, line and field: a missing or blank question, a document that is neither a path
    nor a list of paths, a document with no passage in the corpus, a repeated id.
    """
    by_doc: dict[str, list[str]] = {}
    for pid, p in passages.items():
        by_doc.setdefault(p.doc_id, []).append(pid)
    questions, seen = [], {}
    for n, obj in _iter_jsonl(path):
        qid = _ident(path, n, obj.get("id", f"u{n}"), "id")
        if qid in seen:
            raise DataFormatError(path, f'duplicate id "{qid}" (first on line {seen[qid]})', n, "id")
        seen[qid] = n
        question = _text(path, n, _required(path, n, obj, "question"), "question")
        raw = _required(path, n, obj, "document")
        docs = [raw] if isinstance(raw, str) else raw
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            msg = f"must be a document path or a non-empty list of them, got {json_kind(raw)}"
            raise DataFormatError(path, msg, n, "document")
        positives = []
        for doc in dict.fromkeys(docs):
            if doc not in by_doc:
                examples = ", ".join(f'"{d}"' for d in sorted(by_doc)[:3])
                msg = f'no document "{doc}" in the corpus (name it by its path in the corpus folder: {examples}, ...)'
                raise DataFormatError(path, msg, n, "document")
            positives += by_doc[doc]
        questions.append(Pair(qid, question, positives, docs[0], USER_QUERY_TYPE, n))
    return questions


def read_passages(path) -> dict[str, Passage]:
    """Read sdg's passages JSONL into ``{passage_id: Passage}``; errors name the file, line and field."""
    passages: dict[str, Passage] = {}
    for n, obj in _iter_jsonl(path):
        pid = _ident(path, n, _required(path, n, obj, "passage_id"), "passage_id")
        if pid in passages:
            raise DataFormatError(path, f'duplicate passage_id "{pid}"', n, "passage_id")
        doc_id = _ident(path, n, _required(path, n, obj, "doc_id"), "doc_id")
        text = _text(path, n, _required(path, n, obj, "text"), "text")
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise DataFormatError(path, "must be a string", n, "title")
        passages[pid] = Passage(pid, doc_id, text, title, str(obj.get("section") or ""))
    return passages


# ------------------------------------------------------------------------------------------------ split


def split_documents(
    doc_ids, test_fraction: float, seed: int, weights: dict[str, int] | None = None
) -> tuple[list[str], list[str]]:
    """Deterministic document split: sort, shuffle with ``seed``, the first share is test.

    Without ``weights`` the share is ``test_fraction`` of the documents. With ``weights`` (the questions each
    document holds) it is about ``test_fraction`` of the questions. A corpus whose questions sit in a few large
    manuals would otherwise get a held-out set of a handful of questions, too few to tell anything.
    Returns ``(train_docs, test_docs)``, each sorted; test has at least one and at most all but one document.
    """
    docs = sorted(set(doc_ids))
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if len(docs) < 2:
        raise ValueError(f"splitting by document needs at least 2 documents with questions, got {len(docs)}")
    random.Random(seed).shuffle(docs)
    if weights is None:
        n_test = min(len(docs) - 1, max(1, int(len(docs) * test_fraction + 0.5)))
        test = docs[:n_test]
    else:
        test = _test_share_by_weight(docs, weights, test_fraction)
    chosen = set(test)
    return sorted(d for d in docs if d not in chosen), sorted(test)


def _test_share_by_weight(shuffled: list[str], weights: dict[str, int], test_fraction: float) -> list[str]:
    """The test documents holding about ``test_fraction`` of the weight (see ``split_documents``): each
    shuffled document joins when it brings the held-out weight closer to the share, never past 1.5 times it."""
    target = test_fraction * sum(weights.get(d, 0) for d in shuffled)
    test, held = [], 0
    for doc in shuffled:
        grown = held + weights.get(doc, 0)
        closer, within = abs(grown - target) < abs(held - target), grown <= 1.5 * target
        if closer and within and len(test) < len(shuffled) - 1:
            test.append(doc)
            held = grown
    if not test:  # every document alone is over the share: the one closest to it
        test = [min(shuffled, key=lambda d: abs(weights.get(d, 0) - target))]
    return test


def read_test_extras(pairs_path: Path, max_rank: int | None) -> list[Pair]:
    """Questions sdg's round-trip filter dropped (for the test side only); ``max_rank`` None = all of them.

    The round-trip filter keeps a question only when the base model already ranks a positive in its top
    k (10). A test set made of those alone is selected by the base model: it measures the base model on
    what it already gets right, and any change to the model can only lose there (regression to the mean).
    So the test side also takes the questions the filter dropped; they passed every model-free filter.
    Training never sees them.
    """
    path = pairs_path.with_name(DROPPED_FILE)
    if max_rank == 0 or not path.is_file() or path.stat().st_size == 0:
        return []  # no file, or sdg dropped nothing (it writes an empty file)

    def dropped_by_roundtrip(record: dict) -> bool:
        rank = record.get("roundtrip_rank")
        within = max_rank is None or (isinstance(rank, int) and rank <= max_rank)
        return record.get("dropped_by") == "roundtrip" and within

    return read_pairs(path, keep=dropped_by_roundtrip)


def _question_docs(pairs, passages, pairs_path) -> tuple[dict[str, set[str]], int]:
    """Each question's documents (those of its positives); also how many ``doc_id`` fields disagree."""
    docs, mismatched = {}, 0
    for pair in pairs:
        for i, pid in enumerate(pair.positive_ids):
            if pid not in passages:
                msg = f'unknown passage id "{pid}" (not in the passages file)'
                raise DataFormatError(pairs_path, msg, pair.line, f"positive_ids[{i}]")
        docs[pair.question_id] = {passages[p].doc_id for p in pair.positive_ids}
        if pair.doc_id is not None and pair.doc_id not in docs[pair.question_id]:
            mismatched += 1
    if mismatched:
        logger.warning("%d questions name a doc_id that none of their positives belongs to", mismatched)
    return docs, mismatched


def _questions_per_document(docs_of_question: dict[str, set[str]]) -> dict[str, int]:
    """How many questions each document holds: the split's weights. Only kept (or the user's) questions count,
    so the round trip's test extras never move the split."""
    return dict(Counter(d for docs in docs_of_question.values() for d in docs))


# ------------------------------------------------------------------------------------------------ output


def _heading_test_questions(passages, test_docs: set[str]) -> tuple[list[Pair], dict[str, str]]:
    """The test documents' section headings as test questions (when sdg wrote none), and the text each
    heading's first passage takes in the test corpus: the heading line cut off, so no question is found by
    its own words. A heading's relevant passages are its whole section."""
    questions, bodies = [], {}
    for h in heading_pairs(passages.values(), test_docs, passages_per_section=len(passages)):
        bodies[h.source_id] = h.body
        questions.append(Pair(h.question_id, h.heading, [h.source_id, *h.more_ids], h.doc_id, "heading"))
    return questions, bodies


def _closest_positive(
    encoder: Encoder, questions: list[Pair], texts: dict[str, str], batch_size: int
) -> list[Pair]:
    """Each question with its positives cut to the one passage ``encoder`` scores highest for it."""
    if not questions:
        return []
    ids = sorted({pid for q in questions for pid in q.positive_ids})
    row = {pid: i for i, pid in enumerate(ids)}
    passages = encoder.encode_passages([texts[pid] for pid in ids], batch_size=batch_size)
    queries = encoder.encode_queries([q.question for q in questions], batch_size=batch_size)
    closest = []
    for q, vector in zip(questions, queries, strict=True):
        scores = passages[[row[pid] for pid in q.positive_ids]] @ vector
        closest.append(replace(q, positive_ids=[q.positive_ids[int(scores.argmax())]]))
    return closest


def _unroll(pairs, max_positives, negatives, positive_scores, texts):
    """k positives -> k examples sharing the negatives, plus the scores that go into train.json."""
    examples, scores = [], []
    for pair, negs, pos_scores in zip(pairs, negatives, positive_scores, strict=True):
        positives = pair.positive_ids[:max_positives]
        neg_ids = [n for n, _ in negs]
        neg_scores = [round(s, SCORE_DIGITS) for _, s in negs]
        for i, pid in enumerate(positives):
            qid = pair.question_id if len(positives) == 1 else f"{pair.question_id}#{i}"
            examples.append(
                TrainingExample(
                    pair.question, [texts[pid]], [texts[n] for n in neg_ids], qid, [pid], list(neg_ids)
                )
            )
            scores.append((round(pos_scores[i], SCORE_DIGITS), neg_scores))
    return examples, scores


def _add_scores(path: Path, scores) -> None:
    """Put the mining scores on each pos_doc / neg_doc entry of a written corpus-ID JSON (atomically)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    for record, (pos_score, neg_scores) in zip(doc["data"], scores, strict=True):
        record["pos_doc"][0]["score"] = pos_score
        for ref, score in zip(record["neg_doc"], neg_scores, strict=True):
            ref["score"] = score
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _summary_row(name: str, s: dict) -> str:
    keys = ("count", "mean", "min", "p5", "p25", "p50", "p75", "p95", "max")
    return f"| {name} | " + " | ".join(str(s.get(k, "")) for k in keys) + " |"


def _split_lines(report: dict) -> list[str]:
    """The report's split table, and what it left out."""
    split, args = report["split"], report["mining_args"]
    questions = split["questions"]
    user = questions.get("user", {})
    lines = [
        f"## Split by document (test_fraction {args['test_fraction']}, seed {args['seed']})",
        "",
        "| | train | test |",
        "|---|---|---|",
        f"| documents with questions | {split['documents']['train']} | {split['documents']['test']} |",
        f"| questions | {questions['train']} | {questions['test']} "
        f"+ {questions.get('test_roundtrip_dropped', 0)} the round trip dropped |",
        f"| heading -> body pairs (training only) | {questions.get('heading_pairs', 0)} | - |",
        f"| your questions (`user_questions`) | {user.get('train', 0)} | {user.get('test', 0)} |",
        f"| passages (mining corpus / BEIR corpus) | {split['passages']['train']} | {split['passages']['test']} |",
        f"| training records (unrolled) / qrels | {split['train_records']} | {split['test_qrels']} |",
        "",
    ]
    if user.get("test"):
        lines += [
            f"Your questions are the test set: the generated questions of the test documents "
            f"({questions['generated_test_unused']}) are not used.",
            "",
        ]
    return lines + [
        f"Documents without questions (train side, negatives only): {split['documents']['without_questions']}. "
        f"Questions dropped because their positives span both sides: {questions['dropped_cross_split']}. "
        f"Questions whose `doc_id` disagrees with their positives: {split['doc_id_mismatches']}. "
        f"Training queries with more than {args['max_positives']} positives (cut): "
        f"{split['queries_with_positives_cut']}.",
        "",
    ]


def _mining_lines(report: dict) -> list[str]:
    """The report's hard-negative section: the margin rule, what it skipped, the score distributions."""
    mining, args = report["mining"], report["mining_args"]
    rule = (
        f"score > {args['margin']} x lowest positive score"
        if args["margin_type"] == "perc"
        else f"score > lowest positive score - {args['margin']}"
    )
    return [
        "## Hard negatives",
        "",
        f"{args['num_negatives']} per query from the train documents only; a candidate is a likely false "
        f"negative and skipped when {rule}.",
        "",
        f"- candidates skipped by the margin: {mining['skipped_by_margin']} "
        f"(in {mining['queries_with_skips']} of {mining['queries']} queries)",
        f"- queries short of negatives: {mining['rows_short']} ({mining['missing_negatives']} negatives "
        f"missing; {mining['rows_without_negatives']} queries with none)",
        f"- negatives from test documents: {report['checks']['negatives_from_test_documents']}; "
        f"negatives that are positives of their query: {report['checks']['negatives_that_are_positives']}",
        "",
        "| scores | count | mean | min | p5 | p25 | p50 | p75 | p95 | max |",
        "|---|---|---|---|---|---|---|---|---|---|",
        _summary_row("positives", mining["positive_scores"]),
        _summary_row("lowest positive per query", mining["min_positive_scores"]),
        _summary_row("negatives", mining["negative_scores"]),
        "",
    ]


def render_report(report: dict) -> str:
    """The Markdown version of ``prep_report.json``."""
    args = report["mining_args"]
    lines = [
        "# prep report",
        "",
        f"Config hash `{report['config_hash']}`; model `{args['model']}` with query prompt "
        f"{args['query_prompt']!r} and passage prompt {args['passage_prompt']!r}; {report['seconds']} s.",
        "",
        *_split_lines(report),
        *_mining_lines(report),
        "## Query types",
        "",
        "| type | train | test |",
        "|---|---|---|",
    ]
    types = report["query_types"]
    for name in sorted(set(types["train"]) | set(types["test"])):
        lines.append(f"| {name} | {types['train'].get(name, 0)} | {types['test'].get(name, 0)} |")
    lines += ["", "## Outputs", ""]
    lines += [f"- {name}: `{path}`" for name, path in report["outputs"].items()]
    lines += ["", "## Config", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in report["config"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- run


def _check_config(config: PrepConfig) -> None:
    """Refuse settings prep cannot run with before anything is read."""
    if not config.pairs:
        raise ValueError("prep needs the pairs JSONL written by sdg (pairs=PATH)")
    if config.max_positives < 1:
        raise ValueError(f"max_positives must be >= 1, got {config.max_positives}")
    if config.heading_passages < 1:
        raise ValueError(f"heading_passages must be >= 1, got {config.heading_passages}")


@dataclass
class _Inputs:
    """What prep read and checked: each source's questions with their documents, and the passages."""

    pairs_path: Path
    passages_path: Path
    passages: dict[str, Passage]
    pairs: list[Pair]
    pair_docs: dict[str, set[str]]
    extras: list[Pair]
    extra_docs: dict[str, set[str]]
    user: list[Pair]
    user_docs: dict[str, set[str]]
    mismatched: int

    @property
    def headings_only(self) -> bool:
        """No question from any source: the section headings are the questions."""
        return not self.pairs and not self.extras and not self.user


def _read_inputs(config: PrepConfig) -> _Inputs:
    """sdg's pairs, passages and round-trip drops, and the user's questions, each checked."""
    pairs_path = Path(config.pairs)
    passages_path = Path(config.passages) if config.passages else pairs_path.with_name("passages.jsonl")
    # sdg with questions_per_passage 0 writes an empty pairs file: prep then works from the section headings
    empty = pairs_path.is_file() and pairs_path.stat().st_size == 0
    pairs, passages = [] if empty else read_pairs(pairs_path), read_passages(passages_path)
    pair_docs, mismatched = _question_docs(pairs, passages, pairs_path)
    extras = read_test_extras(pairs_path, config.test_roundtrip_top_k)
    extra_docs, _ = _question_docs(extras, passages, pairs_path.with_name(DROPPED_FILE))
    user = read_user_questions(config.user_questions, passages) if config.user_questions else []
    user_docs = {q.question_id: {passages[p].doc_id for p in q.positive_ids} for q in user}
    return _Inputs(
        pairs_path, passages_path, passages, pairs, pair_docs, extras, extra_docs, user, user_docs, mismatched
    )


def _documents_to_split(inputs: _Inputs, config: PrepConfig) -> set[str]:
    """Every document with a question (kept, or dropped by the round trip only); without questions, every
    document with a usable section heading. Fewer than two cannot be split."""
    if inputs.headings_only and not config.heading_pairs:
        raise ValueError(
            f"{inputs.pairs_path} holds no questions (sdg ran with questions_per_passage 0?): set "
            "prep.heading_pairs=true to train and test on the documents' section headings"
        )
    if inputs.headings_only:
        docs = {h.doc_id for h in heading_pairs(inputs.passages.values())}
    else:
        sources = (inputs.pair_docs, inputs.extra_docs, inputs.user_docs)
        docs = {d for question_docs in sources for ds in question_docs.values() for d in ds}
    if len(docs) < 2:
        what, hint = (
            (
                "documents with usable section headings",
                ": let sdg write questions (questions_per_passage > 0)",
            )
            if inputs.headings_only
            else ("documents with questions", "")
        )
        raise ValueError(
            f"prep needs at least 2 {what} to split into train and test, found {len(docs)} in "
            f"{inputs.passages_path}{hint}"
        )
    return docs


@dataclass
class _Split:
    """The document split, and the questions and passages each side gets."""

    train_docs: list[str]
    test_docs: list[str]
    test_set: set[str]
    train_pairs: list[Pair]  # the generated questions of the train documents
    train_user: list[Pair]
    test_user: list[Pair]
    test_pairs: list[Pair]  # the test questions: generated, the test documents' headings, or the user's
    test_extras: list[Pair]
    test_passages: dict[str, Passage]
    dropped: int
    generated_unused: int


def _split(inputs: _Inputs, config: PrepConfig) -> _Split:
    """Split the documents and send each question to the side of its documents (both sides: dropped)."""
    weights = (
        _questions_per_document(inputs.user_docs or inputs.pair_docs) or None
    )  # None: headings by document
    documents = _documents_to_split(inputs, config)
    train_docs, test_docs = split_documents(documents, config.test_fraction, config.seed, weights)
    test_set = set(test_docs)
    pairs, user = inputs.pairs, inputs.user
    train_pairs = [p for p in pairs if not inputs.pair_docs[p.question_id] & test_set]
    test_pairs = [p for p in pairs if inputs.pair_docs[p.question_id] <= test_set]
    test_extras = [p for p in inputs.extras if inputs.extra_docs[p.question_id] <= test_set]
    train_user = [q for q in user if not inputs.user_docs[q.question_id] & test_set]
    test_user = [q for q in user if inputs.user_docs[q.question_id] <= test_set]
    dropped = len(pairs) - len(train_pairs) - len(test_pairs) + len(user) - len(train_user) - len(test_user)
    if dropped:
        logger.warning("%d questions have positives in both train and test documents: dropped", dropped)
    bodies: dict[str, str] = {}
    if inputs.headings_only:
        test_pairs, bodies = _heading_test_questions(inputs.passages, test_set)
    generated_unused = 0
    if user:  # the user's own questions are the test: the generated ones of the test documents go unused
        generated_unused = len(test_pairs) + len(test_extras)
        test_pairs, test_extras = test_user, []
    whole = config.test_corpus == "all" or bool(user)
    test_passages = _test_passages(inputs.passages, test_set, bodies, whole)
    return _Split(
        train_docs, test_docs, test_set, train_pairs, train_user, test_user, test_pairs, test_extras,
        test_passages, dropped, generated_unused,
    )  # fmt: skip


def _test_passages(passages: dict, test_set: set[str], bodies: dict[str, str], whole: bool) -> dict:
    """What the test questions search: the whole corpus, as the users search it (the training documents'
    passages are distractors, never answers; your own questions always do), or the test documents alone;
    ``bodies`` replaces a passage's text (its heading cut off when the headings are the questions)."""
    return {
        pid: replace(p, text=bodies.get(pid, p.text))
        for pid, p in passages.items()
        if p.doc_id in test_set or whole
    }


@dataclass
class _TrainCorpus:
    """The strings training embeds, the train documents' passages negatives come from, the heading pairs."""

    texts: dict[str, str]  # every passage id (heading-free copies included) -> the string embedded
    corpus: dict[str, str]  # the train documents' passages and the heading-free copies
    doc_of: dict[str, str]
    headings: list


def _train_corpus(inputs: _Inputs, split: _Split, config: PrepConfig) -> _TrainCorpus:
    """The training side's passages, with the heading-free copies of the heading pairs joined in."""
    passages, test_set = inputs.passages, split.test_set
    texts = {pid: passage_text({"title": p.title, "text": p.text}) for pid, p in passages.items()}
    corpus = {pid: texts[pid] for pid, p in passages.items() if p.doc_id not in test_set}
    train_docs_all = {p.doc_id for p in passages.values()} - test_set
    headings = (
        heading_pairs(passages.values(), train_docs_all, config.heading_passages, config.heading_section)
        if config.heading_pairs
        else []
    )
    if not (split.train_pairs or split.train_user or headings) or not split.test_pairs:
        raise ValueError("the document split left no train or no test questions; add documents")
    doc_of = {pid: p.doc_id for pid, p in passages.items()}
    for h in headings:  # the heading-free copies join the training corpus (and may be others' negatives)
        texts[h.body_id] = corpus[h.body_id] = passage_text({"title": h.title, "text": h.body})
        doc_of[h.body_id] = h.doc_id
    return _TrainCorpus(texts, corpus, doc_of, headings)


def _train_queries(
    encoder: Encoder, split: _Split, train: _TrainCorpus, batch_size: int
) -> tuple[list[Pair], list]:
    """The training queries (generated; the user's, with their closest passage; headings) and, for each,
    the passages that may not be its negatives."""
    headings = train.headings
    queries = (
        split.train_pairs
        + _closest_positive(encoder, split.train_user, train.texts, batch_size)
        + [Pair(h.question_id, h.heading, [h.body_id, *h.more_ids], h.doc_id, "heading") for h in headings]
    )
    # the heading-free copies are positives only (a copy next to its source would waste a negative), and a
    # heading's source passage, which starts with the heading, is no negative of it, nor are the passages
    # joined into a whole-section positive; a user question's document answers it all through: none of
    # its passages is a negative
    copies = frozenset(h.body_id for h in headings)
    exclude = (
        [copies] * len(split.train_pairs)
        + [copies | set(q.positive_ids) for q in split.train_user]
        + [copies | {h.source_id, *h.joined_ids} for h in headings]
    )
    return queries, exclude


class _Mined(NamedTuple):
    queries: list[Pair]
    negatives: list
    positive_scores: list
    stats: dict
    checks: dict


def _mine(
    encoder: Encoder, split: _Split, train: _TrainCorpus, config: PrepConfig, pairs_path: Path
) -> _Mined:
    """Mine hard negatives for the training queries, then check none leaks from a test document or is a
    positive of its query (raising before anything is written)."""
    queries, exclude = _train_queries(encoder, split, train, config.batch_size)
    positives = [p.positive_ids[: config.max_positives] for p in queries]
    negatives, positive_scores, stats = mine_hard_negatives(
        encoder,
        [p.question for p in queries],
        positives,
        train.corpus,
        num_negatives=config.num_negatives,
        margin=config.margin,
        margin_type=config.margin_type,
        exclude_ids_per_query=exclude,
        candidate_pool=config.candidate_pool,
        batch_size=config.batch_size,
        progress=True,
    )
    checks = {
        "negatives_from_test_documents": sum(
            train.doc_of[n] in split.test_set for negs in negatives for n, _ in negs
        ),
        "negatives_that_are_positives": sum(
            n in set(pos) for negs, pos in zip(negatives, positives, strict=True) for n, _ in negs
        ),
    }
    if any(checks.values()):
        raise PrepError(
            f"prep: the negatives mined for {pairs_path} leak {checks} (a bug in mining); nothing was written "
            f"to {Path(config.out)}"
        )
    return _Mined(queries, negatives, positive_scores, stats, checks)


def _mining_args(config: PrepConfig, encoder: Encoder) -> dict:
    """How the negatives were mined, recorded in train.json and the report."""
    return {
        "model": config.model,
        "query_prompt": encoder.prompts["query"],
        "passage_prompt": encoder.prompts["passage"],
        "num_negatives": config.num_negatives,
        "margin": config.margin,
        "margin_type": config.margin_type,
        "margin_rule": "skip score > "
        + ("margin * min_positive_score" if config.margin_type == "perc" else "min_positive_score - margin"),
        "candidate_pool": config.candidate_pool,
        "max_positives": config.max_positives,
        "heading_pairs": config.heading_pairs,
        "heading_passages": config.heading_passages,
        "heading_section": config.heading_section,
        "negative_corpus": "train documents only",
        "test_fraction": config.test_fraction,
        "seed": config.seed,
        "config_hash": config_hash(config),
    }


def _write_data(out: Path, mined: _Mined, split: _Split, texts: dict, mining_args: dict, max_positives: int):
    """Write train.json (with its scores), train.jsonl and test_beir/; returns the training records."""
    examples, scores = _unroll(mined.queries, max_positives, mined.negatives, mined.positive_scores, texts)
    extra = {"mining": {"args": mining_args, "stats": mined.stats}}
    write_corpus_id_json(examples, out / TRAIN_JSON, extra=extra)
    _add_scores(out / TRAIN_JSON, scores)
    write_inline_jsonl(examples, out / TRAIN_JSONL)
    test_questions = split.test_pairs + split.test_extras
    beir = BeirDataset(
        corpus={pid: {"title": p.title, "text": p.text} for pid, p in split.test_passages.items()},
        queries={p.question_id: p.question for p in test_questions},
        qrels={p.question_id: dict.fromkeys(p.positive_ids, 1) for p in test_questions},
    )
    write_beir(beir, out / TEST_BEIR)
    return examples


def _split_counts(
    inputs: _Inputs, split: _Split, train: _TrainCorpus, mined: _Mined, records: int, config
) -> dict:
    """The report's ``split`` block: documents, questions and passages on each side."""
    all_docs = {p.doc_id for p in inputs.passages.values()}
    questions = {
        "total": len(inputs.pairs),
        "train": len(split.train_pairs),
        "heading_pairs": len(train.headings),
        "user": {"total": len(inputs.user), "train": len(split.train_user), "test": len(split.test_user)},
        "test": len(split.test_pairs),
        "generated_test_unused": split.generated_unused,
        "test_roundtrip_dropped": len(split.test_extras),
        "dropped_cross_split": split.dropped,
    }
    return {
        "documents": {
            "train": len(split.train_docs),
            "test": len(split.test_docs),
            "without_questions": len(all_docs - (set(split.train_docs) | split.test_set)),
        },
        "train_documents": split.train_docs,
        "test_documents": split.test_docs,
        "questions": questions,
        "passages": {
            "total": len(inputs.passages),
            "train": len(train.corpus) - len(train.headings),
            "test": len(split.test_passages),
        },
        "train_records": records,
        "test_qrels": sum(len(p.positive_ids) for p in split.test_pairs + split.test_extras),
        "doc_id_mismatches": inputs.mismatched,
        "queries_with_positives_cut": sum(len(p.positive_ids) > config.max_positives for p in mined.queries),
    }


def _report(
    config: PrepConfig, inputs: _Inputs, mining_args: dict, split_counts: dict, mined: _Mined, split
) -> dict:
    """``prep_report.json``: the config, the inputs, the split, the mining and its checks, the outputs."""
    out = Path(config.out)
    return {
        "config": config_dict(config),
        "config_hash": config_hash(config),
        "inputs": {
            "pairs": str(inputs.pairs_path),
            "passages": str(inputs.passages_path),
            "user_questions": config.user_questions or None,
        },
        "mining_args": mining_args,
        "split": split_counts,
        "mining": mined.stats,
        "checks": mined.checks,
        "query_types": {
            "train": dict(Counter(p.query_type or "unknown" for p in mined.queries)),
            "test": dict(Counter(p.query_type or "unknown" for p in split.test_pairs)),
        },
        "outputs": {
            "train_json": str(out / TRAIN_JSON),
            "train_jsonl": str(out / TRAIN_JSONL),
            "test_beir": str(out / TEST_BEIR),
            "report_json": str(out / REPORT_JSON),
            "report_md": str(out / REPORT_MD),
        },
    }


def run_prep(config: PrepConfig, *, encoder: Encoder | None = None) -> dict:
    """Run the prep stage and return the report (also written to ``out/prep_report.{json,md}``).

    ``encoder``: an already loaded mining model to use instead of loading ``config.model`` (the caller makes
    sure it is that model with the configured prompts).
    """
    from embedforge.models.bi_encoder import BiEncoder  # torch import only when the stage actually runs

    started = time.time()
    _check_config(config)
    inputs = _read_inputs(config)
    split = _split(inputs, config)
    train = _train_corpus(inputs, split, config)  # every input error is raised before the model loads
    encoder = encoder or BiEncoder.load(
        config.model, query_prompt=config.query_prompt, passage_prompt=config.passage_prompt
    )
    mined = _mine(encoder, split, train, config, inputs.pairs_path)
    mining_args = _mining_args(config, encoder)
    out = Path(config.out)
    examples = _write_data(out, mined, split, train.texts, mining_args, config.max_positives)
    counts = _split_counts(inputs, split, train, mined, len(examples), config)
    report = _report(config, inputs, mining_args, counts, mined, split)
    report["seconds"] = round(time.time() - started, 1)
    _write_text(out / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _write_text(out / REPORT_MD, render_report(report))
    logger.info(
        "prep: %d train records (%d queries), %d test queries over %d passages; report in %s",
        len(examples),
        len(mined.queries),
        len(split.test_pairs),
        len(split.test_passages),
        out / REPORT_MD,
    )
    return report
