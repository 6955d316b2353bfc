"""The sdg filters and outputs: judge threshold, near-duplicate removal, round-trip rank; pairs and report.

They run on every finished unit each time (model-free except the embedding model), so they can be
retuned without generating again.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.atomic import write_text_atomic
from embedforge.config import config_dict, config_hash
from embedforge.formats import passage_text
from embedforge.layout import SDG_DROPPED_FILE, SDG_PAIRS_FILE, SDG_PASSAGES_FILE
from embedforge.search import positive_ranks

logger = logging.getLogger(__name__)

RANK_BUCKETS = ((1, 1), (2, 3), (4, 10), (11, 100), (101, None))


def jsonl(rows: Iterable[dict]) -> str:
    """Rows as JSON lines (UTF-8 text kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def dedup_mask(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-first near-duplicate removal: row i is dropped if its cosine with an earlier KEPT row > threshold.

    ``vectors`` must be unit-norm. Returns a boolean keep mask.
    """
    n = len(vectors)
    keep = np.ones(n, dtype=bool)
    if n == 0 or threshold >= 1.0:
        return keep
    block = 512
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors[: start + block].T
        for r in range(sims.shape[0]):
            i = start + r
            earlier = sims[r, :i]
            if earlier.size and np.any(earlier[keep[:i]] > threshold):
                keep[i] = False
    return keep


def rank_histogram(ranks: list[int]) -> dict[str, int]:
    hist = {}
    for low, high in RANK_BUCKETS:
        label = f"{low}" if low == high else (f"{low}-{high}" if high else f">{low - 1}")
        hist[label] = sum(1 for r in ranks if r >= low and (high is None or r <= high))
    return hist


def _openings(questions: list[str]) -> dict[str, Any]:
    firsts = Counter(" ".join(q.lower().split()[:2]) for q in questions)
    total = max(1, len(questions))
    return {
        "distinct_first_two_words": len(firsts),
        "top": [[words, round(n / total, 3)] for words, n in firsts.most_common(8)],
        "how_do_share": round(sum(n for w, n in firsts.items() if w.startswith("how do")) / total, 3),
    }


def finish(config, resolved, corpus, plans, checkpoint, encoder, name, progress) -> dict[str, Any]:
    """Filter every finished unit (judge, dedup, round trip) and write pairs, dropped pairs and the report."""
    out = Path(config.out)
    index_of = {p.passage_id: i for i, p in enumerate(corpus.passages)}
    done = [checkpoint.records[p.passage_id] for p in plans if p.passage_id in checkpoint.records]
    stale = len(set(checkpoint.records) - {p.passage_id for p in plans})
    rejected = Counter(r["reason"] for record in done for r in record["rejected"])
    candidates = [dict(pair) for record in done for pair in record["pairs"]]
    generated = len(candidates) + sum(rejected.values())
    dropped: list[dict] = []
    removed: dict[str, Any] = {"cleaning": dict(sorted(rejected.items()))}

    if resolved.judge:
        kept = []
        for pair in candidates:
            overall = pair["scores"].get("overall")
            if overall is None or overall < config.judge_threshold:
                dropped.append({**pair, "dropped_by": "judge"})
            else:
                kept.append(pair)
        removed["judge"] = len(candidates) - len(kept)
        judge_info = {
            "enabled": True,
            "threshold": config.judge_threshold,
            "scored": sum(1 for p in candidates if p["scores"]),
            "unscored": sum(1 for p in candidates if not p["scores"]),
            "mean_overall": round(
                float(np.mean([p["scores"]["overall"] for p in candidates if p["scores"]])), 3
            )
            if any(p["scores"] for p in candidates)
            else None,
        }
        candidates = kept
    else:
        removed["judge"] = 0
        judge_info = {"enabled": False}
        for pair in candidates:
            pair["scores"] = {}

    need_vectors = candidates and (config.dedup_threshold < 1.0 or config.roundtrip_top_k > 0)
    if need_vectors and encoder is None:
        from embedforge.model import BiEncoder

        encoder = BiEncoder.load(config.embed_model)
    vectors = encoder.encode_queries([p["question"] for p in candidates]) if need_vectors else None

    keep = (
        dedup_mask(vectors, config.dedup_threshold) if vectors is not None else np.ones(len(candidates), bool)
    )
    for pair, ok in zip(candidates, keep, strict=True):
        if not ok:
            dropped.append({**pair, "dropped_by": "dedup"})
    removed["dedup"] = int((~keep).sum())
    candidates = [p for p, ok in zip(candidates, keep, strict=True) if ok]
    if vectors is not None:
        vectors = vectors[keep]

    roundtrip: dict[str, Any] = {"top_k": config.roundtrip_top_k}
    if config.roundtrip_top_k > 0 and candidates:
        logger.info("round-trip filter: embedding the %d corpus passages", len(corpus.passages))
        passage_vecs = encoder.encode_passages(
            [passage_text({"title": p.title, "text": p.text}) for p in corpus.passages], progress=progress
        )
        positives = [[index_of[i] for i in p["positive_ids"]] for p in candidates]
        ranks = positive_ranks(vectors, passage_vecs, positives)
        roundtrip.update(
            rank_histogram=rank_histogram(ranks),
            kept_at_k={str(k): sum(r <= k for r in ranks) for k in (1, 3, 10, 100)},
            median_rank=float(np.median(ranks)),
        )
        kept = []
        for pair, rank in zip(candidates, ranks, strict=True):
            pair["roundtrip_rank"] = rank
            if rank <= config.roundtrip_top_k:
                kept.append(pair)
            else:
                dropped.append({**pair, "dropped_by": "roundtrip"})
        removed["roundtrip"] = len(candidates) - len(kept)
        candidates = kept
    else:
        removed["roundtrip"] = 0
        for pair in candidates:
            pair["roundtrip_rank"] = None

    fields = (
        "question_id", "question", "answer", "positive_ids", "doc_id", "query_type",
        "complexity", "hops", "scores", "roundtrip_rank", "generator",
    )  # fmt: skip
    pairs = [{k: pair.get(k) for k in fields} for pair in candidates]
    write_text_atomic(out / SDG_PAIRS_FILE, jsonl(pairs))
    write_text_atomic(out / SDG_DROPPED_FILE, jsonl(dropped))
    return {
        "stage": "sdg",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "corpus": config.corpus,
        "out": str(out),
        "generator": name,
        "documents": len(corpus.documents),
        "passages": len(corpus.passages),
        "skipped_files": len(corpus.skipped),
        "passages_selected": len(plans),
        "passages_done": len(done),
        "passages_pending": len(plans) - len(done),
        "stale_checkpoint_units": stale,
        "generated": generated,
        "malformed_outputs": sum(r.get("malformed", 0) for r in done),
        "removed": removed,
        "kept": len(pairs),
        "query_types": dict(Counter(p["query_type"] for p in pairs)),
        "complexity": {str(k): v for k, v in sorted(Counter(p["complexity"] for p in pairs).items())},
        "hops": {str(k): v for k, v in sorted(Counter(p["hops"] for p in pairs).items())},
        "judge": judge_info,
        "roundtrip": roundtrip,
        "openings": _openings([p["question"] for p in pairs]),
        "config": config_dict(config),
        "config_hash": config_hash(config),
        "files": {"passages": SDG_PASSAGES_FILE, "pairs": SDG_PAIRS_FILE, "dropped": SDG_DROPPED_FILE},
    }
