"""Evaluation jobs (type ``retriever``, ``beir`` tasks): embed a BEIR folder through the target's
OpenAI/NIM-compatible ``/v1/embeddings`` URL and score retrieval with pytrec_eval.

The worker reuses the deploy check's HTTP client (``embedforge.verify``) and the eval stage's retrieval and
metrics (``embedforge.evaluate``); results come back in NeMo's shape:
``tasks.<task>.metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"].value``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy.orm import Session

from embedforge.platform.errors import Unprocessable
from embedforge.platform.jobs import store as job_store
from embedforge.platform.settings import Settings
from embedforge.platform.store import records

KIND = "evaluation"
# pytrec_eval metric names NeMo uses -> embedforge.evaluate's names
_METRIC = re.compile(r"^(recall|ndcg_cut|map_cut|P)_(\d+)$")
_FAMILY = {"recall": "recall", "ndcg_cut": "ndcg", "map_cut": "map", "P": "precision"}


def metric_key(nemo_name: str) -> tuple[str, int]:
    """``ndcg_cut_10`` -> (``ndcg@10``, 10); anything else is not a metric we compute."""
    match = _METRIC.match(nemo_name)
    if not match:
        raise ValueError(f"unknown retriever metric '{nemo_name}' (recall_k, ndcg_cut_k, map_cut_k, P_k)")
    return f"{_FAMILY[match.group(1)]}@{match.group(2)}", int(match.group(2))


def check_config(config: dict, loc: list) -> None:
    for task_name, task in config["tasks"].items():
        for metric_name, metric in task["metrics"].items():
            try:
                metric_key(metric.get("type") or metric_name)
            except ValueError as err:
                raise Unprocessable(
                    [*loc, "tasks", task_name, "metrics", metric_name, "type"], str(err)
                ) from err


def submit(db: Session, namespace: str, name: str | None, config: dict, target: dict, body: dict) -> dict:
    job_id = records.new_id("eval")
    tasks = {t: {"status": "pending"} for t in config["tasks"]}
    public_body = {
        **body,
        "namespace": namespace,
        "name": name or job_id,
        "config": config,
        "target": target,
        "result": None,
        "output_files_url": f"hf://datasets/evaluation-results/{job_id}",
    }
    details = {
        "message": "queued",
        "task_status": tasks,
        "progress": 0.0,
        "work": {"config": config, "target": target},
    }
    row = job_store.create(db, KIND, job_id, namespace, public_body["name"], public_body, details)
    return job_store.public(row)


def worker_spec(settings: Settings, row, workdir: Path) -> dict:
    from embedforge.platform.datastore import files_url_dir

    config, target = row.details["work"]["config"], row.details["work"]["target"]
    pipeline = target["retriever"]["pipeline"]
    tasks = {}
    for name, task in config["tasks"].items():
        tasks[name] = {
            "beir_dir": str(files_url_dir(settings.data_dir, task["dataset"]["files_url"])),
            "metrics": {m: spec.get("type") or m for m, spec in task["metrics"].items()},
        }
    return {
        "kind": KIND,
        "job_id": row.id,
        "tasks": tasks,
        "query_endpoint": pipeline["query_embedding_model"]["api_endpoint"],
        "index_endpoint": (pipeline.get("index_embedding_model") or pipeline["query_embedding_model"])[
            "api_endpoint"
        ],
        "top_k": pipeline.get("top_k", 10),
        "progress_file": str(workdir / "progress.json"),
    }


def progress(row, workdir: Path) -> dict:
    path = workdir / "progress.json"
    if not path.exists():
        return {}
    done = json.loads(path.read_text())
    tasks = {t: {"status": "completed" if t in done else "running"} for t in row.details["task_status"]}
    return {
        "task_status": tasks,
        "progress": round(100.0 * len(done) / max(1, len(tasks)), 1),
        "message": "running",
    }


def finish(db: Session, row, workdir: Path) -> dict:
    result = json.loads((workdir / "result.json").read_text())
    tasks = {t: {"status": "completed"} for t in row.details["task_status"]}
    row.body = {**row.body, "result": {"tasks": result["tasks"]}}
    db.commit()
    return {"task_status": tasks, "progress": 100.0, "message": "completed"}


def results(row) -> dict:
    """``GET /v1/evaluation/jobs/{id}/results`` in NeMo's shape."""
    return {
        "job": row.id,
        "id": f"evaluation_result-{row.id.removeprefix('eval-')}",
        "namespace": row.namespace,
        "files_url": row.body["output_files_url"],
        "tasks": (row.body.get("result") or {}).get("tasks", {}),
        "groups": {},
        "custom_fields": {},
        "created_at": records.iso(row.created_at),
        "updated_at": records.iso(row.updated_at),
    }


# ------------------------------------------------------------------------------------ in the worker


PER_QUERY_FILE = "per_query.json"  # in the job's folder: {task: {metric: {query_id: score}}}


def keep_per_query(path: Path, task: str, per_query: dict, wanted: dict) -> None:
    """Add a task's per-query scores of the asked metrics to ``path``: what a paired comparison of two
    models needs (``embedforge.significance``), too large for the job's body or NeMo's results."""
    from embedforge.atomic import write_json_atomic

    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[task] = {metric: {q: v[key] for q, v in per_query.items()} for metric, (key, _) in wanted.items()}
    write_json_atomic(path, kept)


def evaluate_task(name: str, task: dict, spec: dict) -> dict:
    """Embed the task's BEIR folder through the endpoints, retrieve top_k, score the asked metrics."""
    from embedforge.atomic import write_json_atomic
    from embedforge.evaluate import compute_metrics, per_query_metrics, retrieve
    from embedforge.formats import passage_text, read_beir
    from embedforge.verify import EmbeddingsClient, embed_all

    dataset = read_beir(task["beir_dir"])
    wanted = {name: metric_key(kind) for name, kind in task["metrics"].items()}
    ks = sorted({k for _, k in wanted.values()})
    clients = [
        EmbeddingsClient(_base(ep["url"]), ep["model_id"], ep.get("api_key") or None, 300.0, "float")
        for ep in (spec["index_endpoint"], spec["query_endpoint"])
    ]
    try:
        doc_ids = [str(d) for d in dataset.corpus]
        passages = embed_all(
            clients[0], [passage_text(dataset.corpus[d]) for d in dataset.corpus], "passage", None, 32, 4
        )
        query_ids = [str(q) for q, docs in dataset.qrels.items() if docs and q in dataset.queries]
        queries = embed_all(clients[1], [dataset.queries[q] for q in query_ids], "query", None, 32, 4)
    finally:
        for client in clients:
            client.close()
    run = retrieve(queries, passages, doc_ids, query_ids, top_k=max(max(ks), int(spec["top_k"])))
    values = compute_metrics(dataset.qrels, run, ks)
    progress_file = Path(spec["progress_file"])
    done = json.loads(progress_file.read_text()) if progress_file.exists() else []
    write_json_atomic(progress_file, [*done, name])
    keep_per_query(
        progress_file.with_name(PER_QUERY_FILE), name, per_query_metrics(dataset.qrels, run, ks), wanted
    )
    return {
        "metrics": {
            f"retriever.{metric}": {"scores": {metric: {"value": values[key], "stats": {}}}}
            for metric, (key, _) in wanted.items()
        }
    }


def _base(url: str) -> str:
    """``http://host/nim/v1/embeddings`` -> ``http://host/nim`` (the client adds ``/v1/embeddings``)."""
    url = url.rstrip("/")
    for suffix in ("/embeddings", "/v1"):
        url = url.removesuffix(suffix)
    return url
