"""The eval stage: exact dense retrieval, BEIR metrics (pytrec_eval), and a base-vs-tuned comparison report.

What it does:

* ``retrieve`` runs exact inner-product search (the vectors are unit-norm, so this is cosine) with
  ``search.top_k`` and returns it as a TREC run keyed by ids.
* ``compute_metrics`` scores a run with pytrec_eval (the trec_eval semantics BEIR and MTEB use): nDCG, MAP,
  Recall and Precision at each k, plus MRR@10. The mean is over every judged query, so a query with nothing
  retrieved counts as 0.
* ``evaluate_encoder`` embeds the corpus once per model at full size and gets every Matryoshka dimension by
  truncating and re-normalising in numpy (identical to encoding with ``dimensions=d``).
* ``compare_models`` evaluates several models on one BEIR set, the first being the baseline, and writes
  ``eval_results.json``, ``eval_report.md`` and ``eval_chart.png`` with absolute and relative deltas.

What it deliberately does not do: read or validate dataset files (``formats``), train (``finetune``) or
check a served endpoint against the checkpoint (``serve``). It does not drop documents whose id equals the
query id (BEIR's ``ignore_identical_ids``); embedforge's corpus and query ids never collide.
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytrec_eval

from embedforge.atomic import atomic_write, write_json_atomic, write_text_atomic
from embedforge.config import EvalConfig
from embedforge.data.formats import (
    DataFormatError,
    passage_text,  # the one join of title and text, re-exported for callers
)
from embedforge.evaluate.report import CHART_FILE, REPORT_FILE, format_table, render_chart, render_report
from embedforge.measures import search
from embedforge.measures.metrics import (  # the metric vocabulary; DEFAULT_KS and MRR_CUTOFF re-exported for callers
    DEFAULT_KS,
    MRR_CUTOFF,
    SIGNIFICANCE_METRICS,
    delta,
    metric_names,
)
from embedforge.measures.metrics import TREC_FAMILIES as _FAMILIES
from embedforge.measures.significance import paired_comparison
from embedforge.models.encoder import Encoder
from embedforge.models.matryoshka import unit_truncate

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"


# --------------------------------------------------------------------------------------------- texts


# ------------------------------------------------------------------------------------------ retrieval


def retrieve(
    query_vecs: np.ndarray,
    passage_vecs: np.ndarray,
    passage_ids: Sequence[str],
    query_ids: Sequence[str],
    top_k: int = 100,
    batch_size: int = 1024,
    *,
    faiss_threshold: int = search.FAISS_THRESHOLD,
) -> dict[str, dict[str, float]]:
    """Exact inner-product search: the ``top_k`` passages for every query with their scores.

    Args:
        query_vecs: ``(n_queries, dim)`` float array (unit vectors, so scores are cosines).
        passage_vecs: ``(n_passages, dim)`` float array.
        passage_ids: one id per passage row.
        query_ids: one id per query row.
        top_k: passages kept per query (capped at the corpus size).
        batch_size: queries scored per block.
        faiss_threshold: corpora larger than this many passages are searched with FAISS ``IndexFlatIP``.

    Returns:
        ``{query_id: {passage_id: score}}`` with the best ``top_k`` per query (dicts in rank order).
    """
    if len(query_ids) != len(query_vecs) or len(passage_ids) != len(passage_vecs):
        raise ValueError(
            f"ids do not match vectors: {len(query_ids)} query ids for {len(query_vecs)} vectors, "
            f"{len(passage_ids)} passage ids for {len(passage_vecs)} vectors"
        )
    scores, rows = search.top_k(
        query_vecs, passage_vecs, top_k, batch_size=batch_size, faiss_threshold=faiss_threshold
    )
    return {
        str(qid): {str(passage_ids[i]): s for s, i in zip(score_row, row, strict=True)}
        for qid, score_row, row in zip(query_ids, scores.tolist(), rows.tolist(), strict=True)
    }


# -------------------------------------------------------------------------------------------- metrics


def _metric_name(measure: str) -> str:
    family, _, k = measure.rpartition("_")
    return f"{_FAMILIES[family]}@{k}"


def _trec_order(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, ties broken by document id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, dict[str, float]]:
    """pytrec_eval metrics for each judged query (what bootstrap confidence intervals need).

    A query with judgments but nothing in ``run`` gets 0 for every metric. Queries without any judgment are
    left out, as trec_eval does; graded relevance counts as relevant from grade 1.

    Returns:
        ``{query_id: {"ndcg@10": ..., "map@10": ..., "recall@10": ..., "precision@10": ..., "mrr@10": ...}}``.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    judged = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    if not judged:
        raise ValueError("qrels has no judged query")
    ranked = {q: {str(d): float(s) for d, s in run.get(q, {}).items()} for q in judged if run.get(q)}
    cut = ",".join(map(str, ks))
    measures = {f"{family}.{cut}" for family in _FAMILIES}
    # build and use each evaluator at once: trec_eval keeps measure cutoffs in global state
    scores = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(ranked)
    top_mrr = {q: dict(_trec_order(docs)[:MRR_CUTOFF]) for q, docs in ranked.items()}
    reciprocal = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top_mrr)

    names = metric_names(ks)
    result = {}
    for q in judged:
        values = dict.fromkeys(names, 0.0)
        for measure, value in scores.get(q, {}).items():
            values[_metric_name(measure)] = float(value)
        values[f"mrr@{MRR_CUTOFF}"] = float(reciprocal.get(q, {}).get("recip_rank", 0.0))
        result[q] = values
    return result


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Mean pytrec_eval metrics over the judged queries in ``qrels`` (missing from the run = 0, as in BEIR).

    Args:
        qrels: ``{query_id: {doc_id: grade}}``; grades >= 1 are relevant, nDCG uses the grades as gains.
        run: ``{query_id: {doc_id: score}}``, e.g. from ``retrieve``.
        ks: cutoffs for nDCG, MAP, Recall and Precision.

    Returns:
        ``{"ndcg@k", "map@k", "recall@k", "precision@k"`` for each k, and ``"mrr@10"}``.

    Example:
        >>> compute_metrics({"q": {"a": 1}}, {"q": {"b": 0.9, "a": 0.8}}, ks=(1,))["mrr@10"]
        0.5
    """
    return _mean_metrics(per_query_metrics(qrels, run, ks), ks)


def _mean_metrics(per_query: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> dict[str, float]:
    names = metric_names(sorted({int(k) for k in ks}))
    return {name: sum(values[name] for values in per_query.values()) / len(per_query) for name in names}


# ------------------------------------------------------------------------------------------- encoders


def _sizes(encoder, corpus, dimensions, ks, top_k: int | None) -> tuple[int, list[int], int]:
    """The model's full size, the Matryoshka sizes to score (refused when not in 1..full, or with no corpus)
    and the retrieval depth (``top_k``, or the deepest metric's)."""
    full_dim = int(encoder.dimension)
    dims = sorted({int(d) for d in dimensions or ()})
    bad = [d for d in dims if not 0 < d <= full_dim]
    if bad:
        raise ValueError(f"dimensions must be in 1..{full_dim} for model '{encoder.name}', got {bad}")
    if not corpus:
        raise ValueError("the corpus is empty")
    return full_dim, dims, top_k or max(max(ks), MRR_CUTOFF)


def _judged_queries(qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str]) -> tuple[list, list]:
    """The judged query ids, and those of them with a text (the others count as 0)."""
    judged = [str(q) for q, docs in qrels.items() if docs]
    query_ids = [q for q in judged if q in queries]
    if len(query_ids) < len(judged):
        logger.warning("%d judged queries have no text; they count as 0", len(judged) - len(query_ids))
    return judged, query_ids


def _score_dimensions(vectors: tuple, ids: tuple, full_dim: int, dims, qrels, ks, depth: int):
    """Per-query metrics at full size, their mean, and the mean at each truncated size (``vectors``: the
    queries' and passages' rows, ``ids``: their ids)."""
    (query_vecs, passages), (query_ids, doc_ids) = vectors, ids

    def score(dim: int) -> dict[str, dict[str, float]]:
        q, p = (
            (query_vecs, passages)
            if dim == full_dim
            else (unit_truncate(query_vecs, dim), unit_truncate(passages, dim))
        )
        return per_query_metrics(qrels, retrieve(q, p, doc_ids, query_ids, top_k=depth), ks)

    per_query = score(full_dim)
    metrics = _mean_metrics(per_query, ks)
    per_dimension = {d: metrics if d == full_dim else _mean_metrics(score(d), ks) for d in dims}
    return per_query, metrics, per_dimension


def evaluate_encoder(
    encoder: Encoder,
    corpus: Mapping[str, Mapping[str, Any]],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = DEFAULT_KS,
    dimensions: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    *,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Embed a BEIR set with one model and score retrieval, at full size and at each Matryoshka dimension.

    Only judged queries are embedded. The corpus and queries are embedded once at full size; each entry of
    ``dimensions`` is scored on truncated, re-normalised copies.

    Args:
        encoder: an ``Encoder`` (``encode_queries``, ``encode_passages``, ``name``, ``dimension``), e.g. a
            ``BiEncoder``.
        corpus: ``{doc_id: {"title", "text"}}``.
        queries: ``{query_id: text}``.
        qrels: ``{query_id: {doc_id: grade}}``.
        ks: metric cutoffs.
        dimensions: Matryoshka sizes to score besides the full size.
        batch_size: encoding batch size.
        progress: show encoding progress bars.
        top_k: retrieval depth (default ``max(ks)``, at least 10 for MRR@10).

    Returns:
        ``{"model", "dimension", "prompts", "metrics", "per_dimension": {dim: metrics}, "per_query":
        {query_id: {"ndcg@10", "recall@10"}}, "num_queries", "num_passages", "seconds"}``.
    """
    full_dim, dims, depth = _sizes(encoder, corpus, dimensions, ks, top_k)
    judged, query_ids = _judged_queries(qrels, queries)
    doc_ids = [str(d) for d in corpus]
    start = time.perf_counter()
    logger.info("embedding %d passages and %d queries with %s", len(doc_ids), len(query_ids), encoder.name)
    texts = [passage_text(corpus[d]) for d in corpus]
    passages = encoder.encode_passages(texts, batch_size=batch_size, progress=progress)
    query_vecs = encoder.encode_queries(
        [queries[q] for q in query_ids], batch_size=batch_size, progress=progress
    )
    per_query, metrics, per_dimension = _score_dimensions(
        (query_vecs, passages), (query_ids, doc_ids), full_dim, dims, qrels, ks, depth
    )
    return {
        "model": encoder.name,
        "dimension": full_dim,
        "prompts": dict(encoder.prompts),
        "metrics": metrics,
        "per_dimension": per_dimension,
        # what the paired significance tests against the baseline need
        "per_query": {
            q: {m: values[m] for m in SIGNIFICANCE_METRICS if m in values} for q, values in per_query.items()
        },
        "num_queries": len(judged),
        "num_passages": len(doc_ids),
        "seconds": round(time.perf_counter() - start, 3),
    }


def evaluate_dataset(encoder: Encoder, dataset, **kwargs) -> dict[str, Any]:
    """``evaluate_encoder`` on a ``formats.BeirDataset`` (any object with ``corpus``, ``queries``, ``qrels``)."""
    return evaluate_encoder(encoder, dataset.corpus, dataset.queries, dataset.qrels, **kwargs)


# ----------------------------------------------------------------------------------------- comparison


def _deltas(tuned: Mapping[str, float], base: Mapping[str, float]) -> dict[str, dict[str, float | None]]:
    return {name: delta(tuned[name], base[name]) for name in base if name in tuned}


def _load_dataset(beir_dir_or_dataset, split: str):
    if isinstance(beir_dir_or_dataset, (str, os.PathLike)):
        from embedforge.data.formats import read_beir

        return read_beir(beir_dir_or_dataset, split=split), str(beir_dir_or_dataset)
    return beir_dir_or_dataset, f"<in-memory {type(beir_dir_or_dataset).__name__}>"


def _named_models(encoders_or_paths) -> list[tuple[str, Any]]:
    """``[(unique name, Encoder | path)]`` from a list of encoders/paths or a ``{name: encoder | path}``."""
    if isinstance(encoders_or_paths, Mapping):
        items = [(str(name), spec) for name, spec in encoders_or_paths.items()]
    elif isinstance(encoders_or_paths, (str, os.PathLike, Encoder)):
        items = [(_default_name(encoders_or_paths), encoders_or_paths)]
    else:
        items = [(_default_name(spec), spec) for spec in encoders_or_paths]
    if not items:
        raise ValueError("compare_models needs at least one model")
    named, seen = [], set()
    for name, spec in items:
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name} ({n})", n + 1
        seen.add(unique)
        named.append((unique, spec))
    return named


def _default_name(spec) -> str:
    return str(spec) if isinstance(spec, (str, os.PathLike)) else str(spec.name)


def _model_entry(name: str, source: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A model's line in the run's recorded config: where it came from, its size and prompts."""
    return {"name": name, "source": source, "dimension": result["dimension"], "prompts": result["prompts"]}


def _evaluate_spec(
    spec, name: str, dataset, options: Mapping[str, Any], general_check: bool, **evaluate
) -> dict:
    """Evaluate one model, loading it first when given as a folder or a known name."""
    from embedforge.models.bi_encoder import BiEncoder

    encoder = BiEncoder.load(spec, name=name, **options) if isinstance(spec, (str, os.PathLike)) else spec
    result = evaluate_dataset(encoder, dataset, **evaluate)
    result["model"] = name
    if general_check:
        result["general_check"] = _general_check(encoder)
    return result


def _evaluate_all(named, dataset, source: str, reuse, options, general_check: bool, ks, dims, **encoding):
    """Every model's result (an earlier one where ``reuse`` has it) and its entry in the recorded config;
    a model loaded here is freed before the next one loads."""
    models: dict[str, dict[str, Any]] = {}
    entries = []
    for i, (name, spec) in enumerate(named, 1):
        if name in reuse:
            result = _reused(reuse[name], name, dataset, source, ks, dims)
            entries.append(_model_entry(name, f"{spec} (earlier result)", result))
        else:
            logger.info("evaluating model %d/%d: %s", i, len(named), name)
            evaluate = {"ks": ks, "dimensions": dims, **encoding}
            result = _evaluate_spec(spec, name, dataset, options, general_check, **evaluate)
            entries.append(_model_entry(name, _default_name(spec), result))
            if isinstance(spec, (str, os.PathLike)):
                gc.collect()
        models[name] = result
    return models, entries


def _comparison(models: Mapping[str, Any], baseline: str, dims: list[int]) -> dict[str, Any]:
    """Each model against the baseline: metric deltas, their significance, and deltas per dimension."""
    base = models[baseline]
    others = {name: r for name, r in models.items() if name != baseline}
    return {
        "deltas": {name: _deltas(r["metrics"], base["metrics"]) for name, r in others.items()},
        "significance": _significance(models, baseline),
        "per_dimension_deltas": {
            name: {d: _deltas(r["per_dimension"][d], base["per_dimension"][d]) for d in dims}
            for name, r in others.items()
            if dims
        },
    }


def _recorded_config(source: str, split: str, ks, dims, entries, batch_size: int, options, base) -> dict:
    """What made the results: the set, cutoffs, models and settings (``base``: the baseline's result)."""
    from embedforge import __version__

    return {
        "dataset": source,
        "split": split,
        "ks": list(ks),
        "dimensions": dims,
        "models": entries,
        "batch_size": batch_size,
        "load_options": options,
        "retrieval": f"exact inner product, top {max(max(ks), MRR_CUTOFF)}",
        "num_queries": base["num_queries"],
        "num_passages": base["num_passages"],
        "embedforge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_reports(out: Path, results: Mapping[str, Any]) -> None:
    """eval_results.json, eval_report.md and eval_chart.png, each written atomically."""
    write_json_atomic(out / RESULTS_FILE, results)
    write_text_atomic(out / REPORT_FILE, render_report(results))
    with atomic_write(out / CHART_FILE) as tmp:
        tmp.write_bytes(render_chart(results))
    logger.info("wrote %s, %s and %s to %s", RESULTS_FILE, REPORT_FILE, CHART_FILE, out)


def compare_models(
    encoders_or_paths,
    beir_dir_or_dataset,
    out_dir: str | os.PathLike,
    ks: Sequence[int] = DEFAULT_KS,
    dimensions: Sequence[int] | None = None,
    *,
    split: str = "test",
    batch_size: int = 64,
    progress: bool = True,
    load_options: Mapping[str, Any] | None = None,
    general_check: bool = False,
    reuse: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate models on one BEIR set, the first as baseline, and write the JSON, Markdown and chart reports.

    Args:
        encoders_or_paths: encoders and/or model folders or short names (loaded one at a time with
            ``BiEncoder.load``), in a list, or a ``{name: model}`` mapping to choose report names.
        beir_dir_or_dataset: a BEIR folder (read with ``formats.read_beir``) or a dataset object with
            ``corpus``, ``queries`` and ``qrels``.
        out_dir: where ``eval_results.json``, ``eval_report.md`` and ``eval_chart.png`` go (written atomically).
        ks, dimensions, batch_size, progress: as in ``evaluate_encoder`` (``dimensions`` adds a
            per-dimension table for nDCG@10 and Recall@10); ``split``: the qrels split of a BEIR folder.
        load_options: keyword arguments for ``BiEncoder.load`` of the models given as paths (e.g.
            ``query_prompt``, ``passage_prompt``, ``max_seq_length``); None values are dropped.
        general_check: also score each model on the general-domain Lee similarity set
            (``general_check``), to show a domain fine-tune kept its general quality.
        reuse: ``{name: result}`` from an earlier ``eval_results.json`` on the same set (its ``"models"``):
            those models are not encoded again (an MPNet pass over a large corpus costs an hour on 2 cores).

    Returns:
        ``{"baseline", "models": {name: evaluate_encoder result}, "deltas": {name: {metric: {"abs", "rel"}}},
        "per_dimension_deltas", "config"}``; ``rel`` is None when the baseline value is 0.

    Example:
        >>> compare_models(["minilm", "runs/tuned/model"], "runs/prep/beir", "runs/eval")  # doctest: +SKIP
    """
    dataset, source = _load_dataset(beir_dir_or_dataset, split)
    named = _named_models(encoders_or_paths)
    ks, dims = tuple(sorted({int(k) for k in ks})), sorted({int(d) for d in dimensions or ()})
    options = {k: v for k, v in (load_options or {}).items() if v is not None}
    models, entries = _evaluate_all(
        named, dataset, source, reuse or {}, options, general_check, ks, dims, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    baseline = named[0][0]
    results = {"baseline": baseline, "models": models, **_comparison(models, baseline, dims)}
    base = models[baseline]
    results["config"] = _recorded_config(source, split, ks, dims, entries, batch_size, options, base)
    _write_reports(Path(out_dir), results)
    return results


def _reused(result: Mapping[str, Any], name: str, dataset, source: str, ks, dims) -> dict[str, Any]:
    """An earlier result, checked to be on the same queries, passages, cutoffs and dimensions."""
    judged = {str(q) for q, docs in dataset.qrels.items() if docs}
    same = (
        set(result.get("per_query", {})) == judged
        and result.get("num_passages") == len(dataset.corpus)
        and all(m in result.get("metrics", {}) for m in metric_names(ks))
        and all(
            str(d) in result.get("per_dimension", {}) or d in result.get("per_dimension", {}) for d in dims
        )
    )
    if not same:
        raise DataFormatError(
            source,
            "the earlier result is not on this BEIR set (queries, passages, ks or dims differ)",
            field=name,
        )
    logger.info("reusing the earlier result of %s", name)
    return {**result, "model": name}


def _significance(models: Mapping[str, Any], baseline: str) -> dict[str, dict[str, Any]]:
    """Paired bootstrap CI and sign-flip p-value of each model's per-query gain over the baseline."""

    def scores(name: str, metric: str) -> dict[str, float]:
        return {q: v[metric] for q, v in models[name].get("per_query", {}).items() if metric in v}

    return {
        name: {
            metric: paired_comparison(scores(baseline, metric), scores(name, metric))
            for metric in SIGNIFICANCE_METRICS
            if scores(baseline, metric) and scores(name, metric)
        }
        for name in models
        if name != baseline
    }


def _general_check(encoder: Encoder) -> dict[str, Any]:
    from embedforge.measures.general_check import lee_check

    try:
        return lee_check(encoder)
    except FileNotFoundError as error:  # the data package is optional: say so in the report, go on
        logger.warning("general-domain check skipped: %s", error)
        return {"skipped": str(error)}


def run_eval(config: EvalConfig, *, loaded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``embedforge eval`` stage: ``compare_models`` driven by a ``config.EvalConfig``.

    ``loaded``: already loaded encoders for some of ``config.models`` (keyed by the same string, and named
    by it), used instead of loading them. Returns the results of ``compare_models`` plus ``"table"``, the Markdown
    table the CLI prints.
    """
    loaded = loaded or {}
    results = compare_models(
        [loaded.get(str(m), m) for m in config.models],
        config.beir,
        config.out,
        ks=config.ks,
        dimensions=config.dims,
        split=config.split,
        batch_size=config.batch_size,
        general_check=config.general_check,
        load_options={
            "query_prompt": config.query_prompt,
            "passage_prompt": config.passage_prompt,
            "max_seq_length": config.max_seq_length,
        },
    )
    return {**results, "table": format_table(results)}
