"""Hard-negative mining: for each query, the most similar passages that are not its positives.

What it does:

* embeds the corpus with ``encoder.encode_passages`` and the queries with ``encoder.encode_queries``, so
  mining applies exactly the prompts the model saves and trains with;
* searches exactly (``search.top_k``; unit vectors, so scores are cosines) for each query's top
  candidates, widening the search for a query whose candidates ran out before it had enough negatives;
* applies NVIDIA's false-negative margin (TopK-PercPos of the NV-Retriever paper, arXiv:2407.15831)
  through :func:`select_negatives`, measured against the query's LOWEST positive score ``s``:

  - ``"perc"``: a candidate scoring above ``margin * s`` is a likely false negative and skipped
    (margin 0.95 = sentence-transformers' ``relative_margin=0.05``);
  - ``"abs"``: a candidate scoring above ``s - margin`` is skipped (sentence-transformers' ``absolute_margin``).

  A candidate exactly at the threshold is kept. Positives, passages with the same text as a positive and
  any ids the caller excludes are never returned;
* returns every negative with its score, each positive's score, and statistics for a report (candidates
  skipped by the margin, queries short of negatives, positive vs negative score distributions).

What it deliberately does not do: choose the corpus (the caller passes only passages that may serve as
negatives; ``prep`` passes training documents only, so no test passage leaks into training), split data,
write files, or re-rank with a cross-encoder.

Not sentence-transformers' ``mine_hard_negatives``: it applies the margin per (anchor, positive) row rather
than against a query's lowest positive, works on texts not ids, and cannot exclude ids per query.

Example::

    from embedforge.models.bi_encoder import BiEncoder
    from embedforge.prep.mining import mine_hard_negatives
    enc = BiEncoder.load("minilm")
    negatives, positive_scores, stats = mine_hard_negatives(
        enc, ["how do I vacuum a table?"], [["p1"]], {"p1": "VACUUM reclaims storage ...", "p2": "..."}
    )
    negatives[0]  # [("p2", 0.41), ...] hardest first
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from embedforge.measures.search import top_k
from embedforge.models.encoder import Encoder

logger = logging.getLogger(__name__)

MARGIN_TYPES = ("perc", "abs")
DEFAULT_CANDIDATE_POOL = 100  # first search depth per query; widened only for queries left short
PERCENTILES = (5, 25, 50, 75, 95)


class Selection(NamedTuple):
    """What :func:`select_negatives` keeps for one query and what it passed over."""

    negatives: list[tuple[str, float]]  # (id, score), in candidate order (hardest first)
    skipped_by_margin: int  # candidates over the threshold, examined before the list was full
    masked: int  # positives / excluded ids met among the examined candidates


def margin_threshold(min_positive_score: float, margin: float, margin_type: str) -> float:
    """The highest score a negative may have: ``margin * s`` (perc) or ``s - margin`` (abs)."""
    if margin_type == "perc":
        return margin * min_positive_score
    if margin_type == "abs":
        return min_positive_score - margin
    raise ValueError(f"margin_type must be one of {list(MARGIN_TYPES)}, got {margin_type!r}")


def select_negatives(
    candidate_ids: Sequence[str],
    candidate_scores: Sequence[float],
    positive_ids: Collection[str],
    min_positive_score: float,
    num_negatives: int,
    margin: float,
    margin_type: str = "perc",
) -> Selection:
    """The margin rule for one query, on candidates already sorted by descending score.

    Walks the candidates in order, skipping ids in ``positive_ids`` (the query's positives and anything
    else that must never be a negative) and every candidate whose score is strictly above
    :func:`margin_threshold`, until ``num_negatives`` are kept or the candidates run out.

    Args:
        candidate_ids: passage ids, best first.
        candidate_scores: their scores, same order.
        positive_ids: ids never returned.
        min_positive_score: the query's lowest positive score.
        num_negatives: how many negatives to keep at most.
        margin: 0.95 for "perc" (NVIDIA's default), e.g. 0.05 for "abs".
        margin_type: "perc" or "abs".

    Returns:
        :class:`Selection` (negatives with scores, candidates skipped by the margin, masked ids met).

    Example::

        >>> select_negatives(["a", "b", "c"], [0.9, 0.8, 0.5], {"a"}, 0.9, 5, 0.8, "perc")
        Selection(negatives=[('c', 0.5)], skipped_by_margin=1, masked=1)
    """
    if len(candidate_ids) != len(candidate_scores):
        raise ValueError(f"{len(candidate_ids)} candidate ids for {len(candidate_scores)} scores")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    threshold = margin_threshold(float(min_positive_score), margin, margin_type)
    kept: list[tuple[str, float]] = []
    skipped = masked = 0
    for pid, score in zip(candidate_ids, candidate_scores, strict=True):
        if len(kept) >= num_negatives:
            break
        if pid in positive_ids:
            masked += 1
        elif float(score) > threshold:
            skipped += 1
        else:
            kept.append((pid, float(score)))
    return Selection(kept, skipped, masked)


def score_summary(values: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, min, max and the 5/25/50/75/95th percentiles of a list of scores (count 0 if empty)."""
    if len(values) == 0:
        return {"count": 0}
    arr = np.asarray(values, dtype=np.float64)
    summary: dict[str, float | int] = {"count": int(arr.size), "mean": round(float(arr.mean()), 4)}
    summary["min"] = round(float(arr.min()), 4)
    for p, value in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        summary[f"p{p}"] = round(float(value), 4)
    summary["max"] = round(float(arr.max()), 4)
    return summary


def _check_args(queries, positives, corpus, num_negatives, margin, margin_type, exclude, pool) -> None:
    if not queries:
        raise ValueError("no queries to mine negatives for")
    if len(queries) != len(positives):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positive lists")
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(exclude)} exclude lists")
    if margin_type not in MARGIN_TYPES:
        raise ValueError(f"margin_type must be one of {list(MARGIN_TYPES)}, got {margin_type!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if num_negatives < 0 or pool < 1:
        raise ValueError(f"num_negatives must be >= 0 and candidate_pool >= 1, got {num_negatives}, {pool}")
    for i, pos in enumerate(positives):
        if not pos:
            raise ValueError(f"query {i} ({queries[i][:60]!r}) has no positives")
        missing = [p for p in pos if p not in corpus]
        if missing:
            raise ValueError(f"query {i}: positive id {missing[0]!r} is not in the corpus")


def mine_hard_negatives(
    encoder: Encoder,
    queries: Sequence[str],
    positives: Sequence[Sequence[str]],
    corpus: Mapping[str, str],
    *,
    num_negatives: int = 5,
    margin: float = 0.95,
    margin_type: str = "perc",
    exclude_ids_per_query: Sequence[Collection[str]] | None = None,
    candidate_pool: int = DEFAULT_CANDIDATE_POOL,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[list[tuple[str, float]]], list[list[float]], dict]:
    """Mine up to ``num_negatives`` hard negatives per query from ``corpus`` with the margin rule.

    Args:
        encoder: any ``encoder.Encoder`` (a checkpoint, an ONNX export, a served model); its prompts apply.
        queries: query texts.
        positives: for each query, the ids of its positive passages (all must be in ``corpus``).
        corpus: ``{passage id: text}``, the passages that may become negatives, plus the positives.
        num_negatives: negatives wanted per query (NVIDIA: 5).
        margin: margin of the false-negative rule (NVIDIA: 0.95 with "perc").
        margin_type: "perc" (skip scores above ``margin * lowest positive``) or "abs" (skip scores above
            ``lowest positive - margin``).
        exclude_ids_per_query: per query, more ids that must never be its negatives.
        candidate_pool: passages retrieved per query in the first search; a query still short of negatives
            is searched again 4x deeper, up to the whole corpus.
        batch_size: encoding batch size.
        progress: show progress bars while encoding.

    Returns:
        ``(negatives, positive_scores, stats)``: per query a list of ``(id, score)`` hardest first; per query
        the score of each of its positives (in the given order); and a stats dict with ``queries``,
        ``corpus``, ``skipped_by_margin``, ``queries_with_skips``, ``masked``, ``rows_short`` (queries with
        fewer than ``num_negatives``), ``rows_without_negatives``, ``missing_negatives`` and score summaries
        ``positive_scores`` / ``negative_scores`` / ``min_positive_scores`` (see :func:`score_summary`).
    """
    _check_args(
        queries, positives, corpus, num_negatives, margin, margin_type, exclude_ids_per_query, candidate_pool
    )
    ids = list(corpus)
    texts = [corpus[i] for i in ids]
    row_of = {pid: r for r, pid in enumerate(ids)}
    logger.info("mining: encoding %d passages and %d queries", len(ids), len(queries))
    passage_vecs = encoder.encode_passages(texts, batch_size=batch_size, progress=progress)
    query_vecs = encoder.encode_queries(list(queries), batch_size=batch_size, progress=progress)
    passage_vecs = np.ascontiguousarray(passage_vecs, dtype=np.float32)
    query_vecs = np.ascontiguousarray(query_vecs, dtype=np.float32)

    positive_scores = [
        [float(query_vecs[q] @ passage_vecs[row_of[p]]) for p in pos] for q, pos in enumerate(positives)
    ]
    rule = (num_negatives, margin, margin_type)
    masks = _masks(corpus, positives, exclude_ids_per_query)
    results = _select_deepening(query_vecs, passage_vecs, ids, masks, positive_scores, rule, candidate_pool)
    stats = _stats(results, positive_scores, len(ids), rule)
    negatives = [r.negatives for r in results]
    return negatives, positive_scores, stats


def _masks(
    corpus: Mapping[str, str], positives: Sequence[Sequence[str]], exclude: Sequence[Collection[str]] | None
) -> list[set[str]]:
    """Per query, the ids that may never be its negatives: its positives, every passage with a positive's
    exact text, and the ids the caller excludes."""
    same_text: dict[str, list[str]] = {}
    for pid, text in corpus.items():
        same_text.setdefault(text, []).append(pid)
    masks = []
    for q, pos in enumerate(positives):
        mask = {dup for p in pos for dup in same_text[corpus[p]]}
        mask.update(exclude[q] if exclude is not None else ())
        masks.append(mask)
    return masks


def _select_deepening(
    query_vecs: np.ndarray,
    passage_vecs: np.ndarray,
    ids: list[str],
    masks: list[set[str]],
    positive_scores: list[list[float]],
    rule: tuple[int, float, str],
    candidate_pool: int,
) -> list[Selection]:
    """Each query's selection from its top candidates; a query still short of negatives is searched again
    4x deeper, up to the whole corpus."""
    num_negatives = rule[0]
    results: list[Selection | None] = [None] * len(query_vecs)
    pending = list(range(len(query_vecs)))
    depth = candidate_pool
    while pending:
        k = min(len(ids), depth + max(len(masks[q]) for q in pending))
        scores, rows = top_k(query_vecs[pending], passage_vecs, k)
        still_short = []
        for q, q_scores, q_rows in zip(pending, scores, rows, strict=True):
            candidates = [ids[r] for r in q_rows]
            results[q] = select_negatives(
                candidates, q_scores.tolist(), masks[q], min(positive_scores[q]), *rule
            )
            if len(results[q].negatives) < num_negatives and k < len(ids):
                still_short.append(q)
        pending, depth = still_short, depth * 4
    return results


def _stats(
    results: list[Selection],
    positive_scores: list[list[float]],
    corpus_size: int,
    rule: tuple[int, float, str],
) -> dict:
    """The mining report: what the margin skipped, rows short of negatives, and score summaries."""
    num_negatives, margin, margin_type = rule
    negatives = [r.negatives for r in results]
    stats = {
        "queries": len(results),
        "corpus": corpus_size,
        "num_negatives": num_negatives,
        "margin": margin,
        "margin_type": margin_type,
        "skipped_by_margin": sum(r.skipped_by_margin for r in results),
        "queries_with_skips": sum(1 for r in results if r.skipped_by_margin),
        "masked": sum(r.masked for r in results),
        "rows_short": sum(1 for n in negatives if len(n) < num_negatives),
        "rows_without_negatives": sum(1 for n in negatives if not n) if num_negatives else 0,
        "missing_negatives": sum(num_negatives - len(n) for n in negatives),
        "positive_scores": score_summary([s for row in positive_scores for s in row]),
        "min_positive_scores": score_summary([min(row) for row in positive_scores]),
        "negative_scores": score_summary([s for row in negatives for _, s in row]),
    }
    if stats["rows_short"]:
        logger.warning(
            "mining: %d of %d queries have fewer than %d negatives (%d candidates skipped by the margin)",
            stats["rows_short"],
            len(results),
            num_negatives,
            stats["skipped_by_margin"],
        )
    return stats
