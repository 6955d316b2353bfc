"""In-batch negatives for multi-process training: gathered across processes, with false negatives masked.

With in-batch negatives each query is scored against every passage in the batch. Under DDP a "batch" is one
process's share; ``gather_across_devices`` all-gathers the passage embeddings (with gradients flowing back to
their process, as sentence-transformers' MNRL does), so each query competes against the passages of the whole
global batch -- the same candidate set a single process with the same global batch would see (NVIDIA's
``do_distributed_inbatch_negative``).

Gathering makes false negatives likely: batches on different processes are sampled independently, so the same
passage can sit in two of them, and a query with several positives is unrolled into rows that may land in
different processes. ``InBatchNegativesLoss`` removes a candidate from a query's softmax when it is

* the same passage as the query's positive (NVIDIA masks gathered passages with the positive's document id;
  embedforge's training rows carry no source-document id, so identity is the passage text, which is also how
  NVIDIA's corpus ids are made: id = hash of the text), or
* the positive of another row with the same query text (an unrolled multi-positive query).

``CachedInBatchNegativesLoss`` is the same loss computed GradCache's way (Gao et al. 2021,
arXiv:2101.06983): embeddings first without a graph, then the loss and its gradients in chunks of rows, then
each mini-batch's forward again with those gradients. Same value and gradients, a fraction of the memory.

The ids travel to the loss in the training dataset's ``label`` column (sentence-transformers hands that column
to the loss untokenised): per row ``[query key, positive key, negative keys...]``, 60-bit text hashes.
"""

from __future__ import annotations

import hashlib

import torch
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank

ID_COLUMN = "label"  # the column sentence-transformers passes to the loss as ``labels``


def text_key(text: str) -> int:
    """A stable 60-bit integer for a text (fits int64 on every device)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:15], 16)


def id_rows(columns: dict[str, list[str]]) -> list[list[int]]:
    """Per training row ``[query key, positive key, negative keys...]`` for ``InBatchNegativesLoss``."""
    passages = [name for name in columns if name != "anchor"]
    return [
        [text_key(query), *(text_key(columns[name][i]) for name in passages)]
        for i, query in enumerate(columns["anchor"])
    ]


def false_negative_mask(local_ids: torch.Tensor, all_ids: torch.Tensor, offset: int) -> torch.Tensor:
    """(local rows, candidates) bool mask of in-batch false negatives; the own positive is never masked.

    Candidates are ordered as the score matrix is: every row's positive, then every row's first negative, ...
    (``torch.cat`` of the passage columns), over the gathered rows ``all_ids``.
    """
    rows, world_rows = local_ids.size(0), all_ids.size(0)
    candidates = all_ids[:, 1:].T.reshape(-1)  # column-major: positives of all rows first
    mask = candidates.unsqueeze(0) == local_ids[:, 1:2]  # same passage as my positive
    mask[:, :world_rows] |= (
        all_ids[:, 0].unsqueeze(0) == local_ids[:, 0:1]
    )  # positives of my query's other rows
    own = torch.arange(rows, device=mask.device)
    mask[own, own + offset] = False
    return mask


def _candidates(queries: torch.Tensor, docs: list[torch.Tensor], labels: torch.Tensor, gather: bool):
    """Every row's passages as one candidate matrix (gathered from every process when ``gather``), the
    rows' ids, the candidates' ids and this process's first row among all rows."""
    ids = labels.to(device=queries.device, dtype=torch.long)
    offset, all_ids = 0, ids
    if gather:
        docs = [all_gather_with_grad(d) for d in docs]
        all_ids = all_gather(ids)
        offset = get_rank() * queries.size(0)
    return torch.cat(docs, dim=0), ids, all_ids, offset


def _masked_cross_entropy(loss, queries, candidates, ids, all_ids, first: int) -> torch.Tensor:
    """Mean cross-entropy of ``queries`` (rows ``first``... of all rows) against the candidates, each row's
    positive the target, its false negatives removed from the softmax."""
    scores = loss.similarity_fct(queries, candidates) * loss.scale
    scores = scores.masked_fill(false_negative_mask(ids, all_ids, first), float("-inf"))
    target = torch.arange(first, first + queries.size(0), device=queries.device)
    return torch.nn.functional.cross_entropy(scores, target)


def _has_ids(labels: torch.Tensor | None, columns: int) -> bool:
    return labels is not None and labels.dim() == 2 and labels.size(1) == columns


class InBatchNegativesLoss(MultipleNegativesRankingLoss):
    """sentence-transformers' MNRL (query -> all batch passages, positive first) with false negatives masked.

    Without id labels (no ``label`` column) it is exactly ``MultipleNegativesRankingLoss``.
    """

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor | None):
        if not _has_ids(labels, len(embeddings)):
            return super().compute_loss_from_embeddings(embeddings, labels)
        queries = embeddings[0]
        candidates, ids, all_ids, offset = _candidates(
            queries, embeddings[1:], labels, self.gather_across_devices
        )
        return _masked_cross_entropy(self, queries, candidates, ids, all_ids, offset)


class CachedInBatchNegativesLoss(CachedMultipleNegativesRankingLoss):
    """sentence-transformers' GradCache MNRL with ``InBatchNegativesLoss``'s false-negative masking.

    Only the query -> passage direction (the default); without id labels it is the parent's loss.
    """

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels=None, *, with_backward: bool = False):
        if not _has_ids(labels, len(reps)):
            return super().calculate_loss(reps, labels, with_backward=with_backward)
        queries = torch.cat(reps[0])
        docs = [torch.cat(r) for r in reps[1:]]
        candidates, ids, all_ids, offset = _candidates(queries, docs, labels, self.gather_across_devices)
        rows, total = queries.size(0), []
        for begin in range(0, rows, self.mini_batch_size):
            end = min(begin + self.mini_batch_size, rows)
            chunk = (queries[begin:end], candidates, ids[begin:end], all_ids, offset + begin)
            part = _masked_cross_entropy(self, *chunk) * (end - begin) / rows
            if with_backward:
                part.backward()
                part = part.detach()
            total.append(part)
        return sum(total)
