"""The evaluation worker's side: embed each task's BEIR folder through a target's ``/v1/embeddings`` URLs,
retrieve, score; with a baseline target, score it on the same queries and compare the two per query.

The comparison is paired (both models answer the same queries): for each metric the baseline's and the
target's means, the mean difference with its bootstrap 95% CI, the relative change (and its interval,
the CI over the baseline's mean) and the sign-flip p-value, from ``embedforge.measures.significance``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedforge.platform.jobs.evaluation import KEYS_ENV, PER_QUERY_FILE, metric_key

BASELINE = "baseline_"  # the spec's prefix of the baseline target's endpoints and keys


def run(spec: dict) -> dict:
    """Every task of the job: NeMo's ``tasks`` for the target and, with a baseline, ``baseline.tasks`` and
    ``comparison`` (``{task: {"retriever.<metric>": paired comparison}}``)."""
    compared = f"{BASELINE}query_endpoint" in spec
    out: dict = {"tasks": {}, **({"baseline": {"tasks": {}}, "comparison": {}} if compared else {})}
    for number, (name, spec_task) in enumerate(spec["tasks"].items()):
        task = {**spec_task, "beir_dir": str(beir_folder(spec, number, spec_task))}
        means, per_query = score(task, spec)
        out["tasks"][name] = metrics_block(means)
        if compared:
            base_means, base_per_query = score(task, spec, BASELINE)
            out["baseline"]["tasks"][name] = metrics_block(base_means)
            out["comparison"][name] = {
                f"retriever.{metric}": compare(base_per_query[metric], per_query[metric]) for metric in means
            }
        keep_per_query(Path(spec["progress_file"]).with_name(PER_QUERY_FILE), name, per_query)
        mark_done(Path(spec["progress_file"]), name)
    return out


def beir_folder(spec: dict, number: int, task: dict) -> Path:
    """The task's BEIR folder: downloaded from the data store into the job's folder (``datasets/<n>``,
    as task names are the client's), or an operator's folder on the platform's host."""
    from embedforge.platform.jobs.store_client import fetch

    if "dataset" not in task:
        return Path(task["beir_dir"])
    into = Path(spec["progress_file"]).with_name("datasets") / str(number)
    return fetch(spec["data_store"], task["dataset"], into)


def metrics_block(means: dict[str, float]) -> dict:
    """NeMo's shape: ``metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"].value``."""
    return {
        "metrics": {
            f"retriever.{metric}": {"scores": {metric: {"value": value, "stats": {}}}}
            for metric, value in means.items()
        }
    }


def compare(base: dict[str, float], model: dict[str, float]) -> dict:
    """One metric's paired comparison, in the result's field names."""
    from embedforge.measures.significance import paired_comparison

    c = paired_comparison(base, model)
    low, high = c["ci95"]
    return {
        "n": c["n"],
        "baseline": c["base"],
        "value": c["model"],
        "difference": c["diff"],
        "difference_ci95": [low, high],
        "relative_change": c["rel"],
        "relative_change_ci95": [low / c["base"], high / c["base"]] if c["base"] else None,
        "p_value": c["p"],
        "significant": c["significant"],
        "better": c["better"],
        "worse": c["worse"],
        "tied": c["tied"],
        "resamples": c["resamples"],
        "seed": c["seed"],
    }


def score(task: dict, spec: dict, prefix: str = "") -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One target's scores on a task through ``{prefix}index_endpoint`` and ``{prefix}query_endpoint``:
    ({metric: mean}, {metric: {query_id: score}}) for the metrics the task asks for."""
    from embedforge.data.formats import passage_text, read_beir
    from embedforge.evaluate.retrieval import compute_metrics, per_query_metrics, retrieve
    from embedforge.verify import embed_all

    dataset = read_beir(task["beir_dir"])
    wanted = {name: metric_key(kind) for name, kind in task["metrics"].items()}
    ks = sorted({k for _, k in wanted.values()})
    index, query = (_client(spec, prefix, role) for role in ("index", "query"))
    try:
        doc_ids = [str(d) for d in dataset.corpus]
        passages = embed_all(
            index, [passage_text(dataset.corpus[d]) for d in doc_ids], "passage", None, 32, 4
        )
        query_ids = [str(q) for q, docs in dataset.qrels.items() if docs and q in dataset.queries]
        queries = embed_all(query, [dataset.queries[q] for q in query_ids], "query", None, 32, 4)
    finally:
        index.close()
        query.close()
    run_ = retrieve(queries, passages, doc_ids, query_ids, top_k=max(max(ks), int(spec["top_k"])))
    values, per_query = compute_metrics(dataset.qrels, run_, ks), per_query_metrics(dataset.qrels, run_, ks)
    means = {metric: values[key] for metric, (key, _) in wanted.items()}
    return means, {metric: {q: v[key] for q, v in per_query.items()} for metric, (key, _) in wanted.items()}


def _client(spec: dict, prefix: str, role: str):
    from embedforge.verify import EmbeddingsClient

    endpoint = spec[f"{prefix}{role}_endpoint"]
    keys = json.loads(os.environ.get(KEYS_ENV) or "{}")
    return EmbeddingsClient(
        _base(endpoint["url"]), endpoint["model_id"], keys.get(f"{prefix}{role}") or None, 300.0, "float"
    )


def keep_per_query(path: Path, task: str, per_query: dict) -> None:
    """Add a task's per-query scores (``{metric: {query_id: score}}``) to ``path``: what a paired comparison
    of two models needs (``embedforge.measures.significance``), too large for the job's body or NeMo's results."""
    from embedforge.atomic import write_json_atomic

    kept = json.loads(path.read_text()) if path.exists() else {}
    write_json_atomic(path, {**kept, task: per_query})


def mark_done(progress_file: Path, task: str) -> None:
    from embedforge.atomic import write_json_atomic

    done = json.loads(progress_file.read_text()) if progress_file.exists() else []
    write_json_atomic(progress_file, [*done, task])


def _base(url: str) -> str:
    """``http://host/nim/v1/embeddings`` -> ``http://host/nim`` (the client adds ``/v1/embeddings``)."""
    url = url.rstrip("/")
    for suffix in ("/embeddings", "/v1"):
        url = url.removesuffix(suffix)
    return url
