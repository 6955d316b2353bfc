"""Exact inner-product search over unit vectors: the one top-k used by eval, mining and the sdg round trip.

Vectors are L2-normalised, so inner products are cosines. Small corpora are scored with numpy in blocks of
queries (at most ``SCORE_BLOCK`` scores in memory) and cut with ``argpartition``; above
``FAISS_THRESHOLD`` passages a FAISS ``IndexFlatIP`` (exact, blocked BLAS) is faster. Both give the same
ranking up to float rounding. Nothing here knows about ids, datasets or files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

FAISS_THRESHOLD = 50_000  # passages; above this, FAISS' blocked BLAS search beats numpy's full score matrix
SCORE_BLOCK = 25_000_000  # at most this many float32 scores (100 MB) in memory at once on the numpy path


def as_matrices(query_vecs, passage_vecs) -> tuple[np.ndarray, np.ndarray]:
    """Both as contiguous float32 2-D arrays of one width, or a ValueError saying which shapes differ."""
    queries = np.ascontiguousarray(query_vecs, dtype=np.float32)
    passages = np.ascontiguousarray(passage_vecs, dtype=np.float32)
    if queries.ndim != 2 or passages.ndim != 2 or queries.shape[1] != passages.shape[1]:
        raise ValueError(
            f"query and passage vectors must be 2-D with one width, got {queries.shape} and {passages.shape}"
        )
    return queries, passages


def score_blocks(queries: np.ndarray, passages: np.ndarray, batch_size: int = 1024) -> Iterator[np.ndarray]:
    """``queries @ passages.T`` a block of query rows at a time, each block at most ``SCORE_BLOCK`` scores."""
    step = max(1, min(batch_size, SCORE_BLOCK // max(1, len(passages))))
    for start in range(0, len(queries), step):
        yield queries[start : start + step] @ passages.T


def top_k(
    query_vecs,
    passage_vecs,
    k: int,
    *,
    batch_size: int = 1024,
    faiss_threshold: int = FAISS_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best passages of every query: ``(scores, rows)``, each ``(n_queries, min(k, n_passages))``.

    Rows are sorted by descending score. ``batch_size`` queries are
    scored per block; corpora larger than ``faiss_threshold`` passages go through FAISS.
    """
    queries, passages = as_matrices(query_vecs, passage_vecs)
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got {k} and {batch_size}")
    k = min(k, len(passages))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    if len(passages) > faiss_threshold:
        blocks = list(_faiss_blocks(queries, passages, k, batch_size))
    else:
        blocks = [_numpy_top(scores, k) for scores in score_blocks(queries, passages, batch_size)]
    return np.concatenate([s for s, _ in blocks]), np.concatenate([r for _, r in blocks]).astype(np.int64)


def _numpy_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = scores.shape[1]
    if k < n:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(n), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def _faiss_blocks(queries: np.ndarray, passages: np.ndarray, k: int, batch_size: int):
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    import faiss

    index = faiss.IndexFlatIP(passages.shape[1])
    index.add(passages)
    for start in range(0, len(queries), batch_size):
        yield index.search(queries[start : start + batch_size], k)


def positive_ranks(
    query_vecs, passage_vecs, positives: Sequence[Sequence[int]], batch_size: int = 256
) -> list[int]:
    """1-based rank of each query's best-ranked positive row among all passages; ties count against it.

    Exact over the whole corpus (not cut at a depth), so a report can give the median and the tail.
    """
    queries, passages = as_matrices(query_vecs, passage_vecs)
    ranks: list[int] = []
    for block in score_blocks(queries, passages, batch_size):
        for row in block:
            mine = list(positives[len(ranks)])
            best = row[mine].max()
            others = row.copy()
            others[mine] = -np.inf
            ranks.append(int(np.sum(others >= best)) + 1)
    return ranks
