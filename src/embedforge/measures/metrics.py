"""The retrieval metrics' vocabulary: their names, cut-offs and the headline metric, and a metric's change.

Shared by the eval stage, which computes the metrics (``evaluate.retrieval``), and its reports
(``evaluate.report``, the demo), so the reports read the names without importing the code that computes them.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_KS = (1, 5, 10, 100)
MRR_CUTOFF = 10  # MRR is reported at 10 only, as MS MARCO and sentence-transformers do

# pytrec_eval measure family -> our metric prefix
TREC_FAMILIES = {"ndcg_cut": "ndcg", "map_cut": "map", "recall": "recall", "P": "precision"}
SIGNIFICANCE_METRICS = ("ndcg@10", "recall@10")  # per-query scores kept for the paired tests
PRIMARY_METRIC = "ndcg@10"  # the one the report's verdict line is about


def metric_names(ks: Iterable[int]) -> list[str]:
    """Report order: every family at every k, then MRR@10."""
    return [f"{prefix}@{k}" for prefix in TREC_FAMILIES.values() for k in ks] + [f"mrr@{MRR_CUTOFF}"]


def delta(tuned: float, base: float) -> dict[str, float | None]:
    """Absolute and relative change of a metric (relative None when the base is 0)."""
    return {"abs": tuned - base, "rel": (tuned - base) / base if base else None}
