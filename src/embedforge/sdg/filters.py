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
from embedforge.data.formats import passage_text
from embedforge.layout import SDG_DROPPED_FILE, SDG_PAIRS_FILE, SDG_PASSAGES_FILE
from embedforge.measures.search import positive_ranks

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


def _judge_filter(config, candidates: list[dict], dropped: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Pairs whose judge score reaches ``judge_threshold`` (unscored pairs are dropped), and the judge's report."""
    kept = []
    for pair in candidates:
        overall = pair["scores"].get("overall")
        if overall is None or overall < config.judge_threshold:
            dropped.append({**pair, "dropped_by": "judge"})
        else:
            kept.append(pair)
    scored = [p["scores"]["overall"] for p in candidates if p["scores"]]
    return kept, {
        "enabled": True,
        "threshold": config.judge_threshold,
        "scored": sum(1 for p in candidates if p["scores"]),
        "unscored": sum(1 for p in candidates if not p["scores"]),
        "mean_overall": round(float(np.mean(scored)), 3) if any(p["scores"] for p in candidates) else None,
    }


def _dedup_filter(config, candidates: list[dict], vectors: np.ndarray | None, dropped: list[dict]):
    """(kept pairs, their vectors): a question too close to an earlier kept one is dropped."""
    keep = (
        dedup_mask(vectors, config.dedup_threshold) if vectors is not None else np.ones(len(candidates), bool)
    )
    for pair, ok in zip(candidates, keep, strict=True):
        if not ok:
            dropped.append({**pair, "dropped_by": "dedup"})
    kept = [p for p, ok in zip(candidates, keep, strict=True) if ok]
    return kept, (vectors[keep] if vectors is not None else None)


def _roundtrip_filter(config, corpus, candidates, vectors, encoder, dropped, progress) -> tuple[list, dict]:
    """Pairs whose positive ranks within ``roundtrip_top_k`` of the whole corpus for their question, with
    every pair's rank recorded, and the ranks' report."""
    index_of = {p.passage_id: i for i, p in enumerate(corpus.passages)}
    logger.info("round-trip filter: embedding the %d corpus passages", len(corpus.passages))
    passage_vecs = encoder.encode_passages(
        [passage_text({"title": p.title, "text": p.text}) for p in corpus.passages], progress=progress
    )
    positives = [[index_of[i] for i in p["positive_ids"]] for p in candidates]
    ranks = positive_ranks(vectors, passage_vecs, positives)
    report = {
        "top_k": config.roundtrip_top_k,
        "rank_histogram": rank_histogram(ranks),
        "kept_at_k": {str(k): sum(r <= k for r in ranks) for k in (1, 3, 10, 100)},
        "median_rank": float(np.median(ranks)),
    }
    kept = []
    for pair, rank in zip(candidates, ranks, strict=True):
        pair["roundtrip_rank"] = rank
        if rank <= config.roundtrip_top_k:
            kept.append(pair)
        else:
            dropped.append({**pair, "dropped_by": "roundtrip"})
    return kept, report


def _filter(config, resolved, corpus, candidates, encoder, progress) -> tuple[list, list, dict, dict, dict]:
    """Judge, dedup and round trip in turn: (kept, dropped, removed counts, judge report, round-trip report)."""
    dropped: list[dict] = []
    removed: dict[str, Any] = {}
    if resolved.judge:
        kept, judge_info = _judge_filter(config, candidates, dropped)
    else:
        kept, judge_info = candidates, {"enabled": False}
        for pair in kept:
            pair["scores"] = {}
    removed["judge"], candidates = len(candidates) - len(kept), kept

    need_vectors = candidates and (config.dedup_threshold < 1.0 or config.roundtrip_top_k > 0)
    if need_vectors and encoder is None:
        from embedforge.models.bi_encoder import BiEncoder

        encoder = BiEncoder.load(config.embed_model)
    vectors = encoder.encode_queries([p["question"] for p in candidates]) if need_vectors else None
    kept, vectors = _dedup_filter(config, candidates, vectors, dropped)
    removed["dedup"], candidates = len(candidates) - len(kept), kept

    roundtrip: dict[str, Any] = {"top_k": config.roundtrip_top_k}
    if config.roundtrip_top_k > 0 and candidates:
        kept, roundtrip = _roundtrip_filter(config, corpus, candidates, vectors, encoder, dropped, progress)
    else:
        for pair in candidates:
            pair["roundtrip_rank"] = None
    removed["roundtrip"] = len(candidates) - len(kept)
    return kept, dropped, removed, judge_info, roundtrip


def finish(config, resolved, corpus, plans, checkpoint, encoder, name, progress) -> dict[str, Any]:
    """Filter every finished unit (judge, dedup, round trip) and write pairs, dropped pairs and the report."""
    out = Path(config.out)
    done = [checkpoint.records[p.passage_id] for p in plans if p.passage_id in checkpoint.records]
    stale = len(set(checkpoint.records) - {p.passage_id for p in plans})
    rejected = Counter(r["reason"] for record in done for r in record["rejected"])
    candidates = [dict(pair) for record in done for pair in record["pairs"]]
    generated = len(candidates) + sum(rejected.values())
    kept, dropped, removed, judge_info, roundtrip = _filter(
        config, resolved, corpus, candidates, encoder, progress
    )
    removed = {"cleaning": dict(sorted(rejected.items())), **removed}

    fields = (
        "question_id", "question", "answer", "positive_ids", "doc_id", "query_type",
        "complexity", "hops", "scores", "roundtrip_rank", "generator",
    )  # fmt: skip
    pairs = [{k: pair.get(k) for k in fields} for pair in kept]
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
