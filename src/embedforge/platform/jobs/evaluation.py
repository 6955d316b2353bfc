"""Evaluation jobs (type ``retriever``, ``beir`` tasks): embed a BEIR folder through the target's
OpenAI/NIM-compatible ``/v1/embeddings`` URL and score retrieval with pytrec_eval.

The worker (``eval_worker``) reuses the deploy check's HTTP client (``embedforge.verify``) and the eval
stage's retrieval and metrics (``embedforge.evaluate.retrieval``); results come back in NeMo's shape:
``tasks.<task>.metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"].value``. A job may name a
``baseline_target`` (embedforge's addition): the same tasks are scored for it, and the result adds its
``baseline.tasks`` and a paired ``comparison`` of every metric.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy.orm import Session

from embedforge.platform.errors import Unprocessable
from embedforge.platform.jobs import store as job_store
from embedforge.platform.settings import Settings
from embedforge.platform.store import records, secret_store

KIND = "evaluation"
RESULT = "evaluation_result"  # the entity kind (and id prefix) of a finished job's scores
KEYS_ENV = "EMBEDFORGE_ENDPOINT_KEYS"  # the worker's endpoint keys, {"query", "index", "baseline_query", ...}
PER_QUERY_FILE = "per_query.json"  # in the job's folder: {task: {metric: {query_id: score}}}
# pytrec_eval metric names NeMo uses -> embedforge.evaluate.retrieval's names
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


def submit(
    db: Session,
    namespace: str,
    name: str | None,
    config: dict,
    target: dict,
    body: dict,
    baseline: dict | None = None,
) -> dict:
    """Queue a job; ``baseline`` is a second target scored on the same tasks and compared with ``target``."""
    job_id = records.new_id("eval")
    tasks = dict.fromkeys(config["tasks"], "pending")  # NeMo: task name -> status
    public_body = {
        **body,
        "namespace": namespace,
        "name": name or job_id,
        "config": config,
        "target": target,
        "result": None,
        "output_files_url": f"hf://datasets/evaluation-results/{job_id}",
        **({"baseline_target": baseline} if baseline else {}),
    }
    work = {"config": config, "target": target, **({"baseline": baseline} if baseline else {})}
    details = {"message": "queued", "task_status": tasks, "progress": 0.0, "work": work}
    row = job_store.create(db, KIND, job_id, namespace, public_body["name"], public_body, details)
    return job_store.public(row)


def worker_spec(settings: Settings, row, workdir: Path) -> dict:
    """What the worker runs: each task's dataset (an ``hf://`` one is downloaded by the worker from the
    data store; a ``file://`` one is an operator's folder on this host), its metrics and the endpoints."""
    from embedforge.platform.jobs.store_client import store_spec

    config, target = row.details["work"]["config"], row.details["work"]["target"]
    pipeline = target["retriever"]["pipeline"]
    baseline = row.details["work"].get("baseline")
    tasks = {}
    for name, task in config["tasks"].items():
        tasks[name] = {
            **_dataset_source(settings, task["dataset"]["files_url"]),
            "metrics": {m: spec.get("type") or m for m, spec in task["metrics"].items()},
        }
    return {
        "kind": KIND,
        "job_id": row.id,
        "data_store": store_spec(settings),
        "tasks": tasks,
        **{f"{role}_endpoint": _without_key(endpoint) for role, endpoint in _endpoints(pipeline).items()},
        **(_baseline_endpoints(baseline) if baseline else {}),
        "top_k": pipeline.get("top_k", 10),
        "progress_file": str(workdir / "progress.json"),
    }


def _dataset_source(settings: Settings, files_url: str) -> dict:
    """``{"dataset": files_url}`` for a data store repo, ``{"beir_dir": path}`` for an operator's folder."""
    from embedforge.platform.datastore import files_url_dir

    if files_url.startswith("hf://"):
        return {"dataset": files_url}
    return {"beir_dir": str(files_url_dir(settings.data_dir, files_url))}


def _endpoints(pipeline: dict) -> dict[str, dict]:
    """The query and index embedding endpoints (the index one defaults to the query one)."""
    query = pipeline["query_embedding_model"]["api_endpoint"]
    return {
        "query": query,
        "index": (pipeline.get("index_embedding_model") or {}).get("api_endpoint") or query,
    }


def _baseline_endpoints(baseline: dict) -> dict:
    pipeline = baseline["retriever"]["pipeline"]
    return {f"baseline_{role}_endpoint": _without_key(e) for role, e in _endpoints(pipeline).items()}


def _without_key(endpoint: dict) -> dict:
    return {k: v for k, v in endpoint.items() if k != "api_key"}


def worker_env(settings: Settings, db: Session, row) -> dict[str, str]:
    """The endpoints' real API keys and the data store's key for the worker's environment: never in
    spec.json, never in a body."""
    from embedforge.platform.jobs.store_client import store_env

    keys = {}
    for prefix, field in (("", "target"), ("baseline_", "baseline")):
        target = row.details["work"].get(field)
        if target:
            revealed = secret_store.reveal(db, target["id"], target)
            for role, ep in _endpoints(revealed["retriever"]["pipeline"]).items():
                keys[prefix + role] = ep.get("api_key")
    return {KEYS_ENV: json.dumps(keys), **store_env(settings)}


def progress(row, workdir: Path) -> dict:
    path = workdir / "progress.json"
    if not path.exists():
        return {}
    done = json.loads(path.read_text())
    tasks = {t: "completed" if t in done else "running" for t in row.details["task_status"]}
    return {
        "task_status": tasks,
        "progress": round(100.0 * len(done) / max(1, len(tasks)), 1),
        "message": "running",
    }


def finish(db: Session, row, workdir: Path) -> dict:
    """Store the worker's scores as an evaluation result entity; the job's ``result`` is its id, as NeMo's."""
    result = json.loads((workdir / "result.json").read_text())
    result_id = f"{RESULT}-{row.id.removeprefix('eval-')}"
    if records.find(db, RESULT, row.namespace, result_id) is None:  # a finish retried after a restart
        body = {
            "id": result_id,
            "job": row.id,
            "namespace": row.namespace,
            "files_url": row.body["output_files_url"],
            "tasks": result["tasks"],
            "groups": {},
            "custom_fields": {},
            **{k: result[k] for k in ("baseline", "comparison") if k in result},
        }
        if "baseline" in body:
            body["baseline"] = {"target": row.body["baseline_target"].get("id"), **body["baseline"]}
        records.create(db, RESULT, row.namespace, result_id, body, RESULT)
    row.body = {**row.body, "result": result_id}
    db.commit()
    tasks = dict.fromkeys(row.details["task_status"], "completed")
    return {"task_status": tasks, "progress": 100.0, "message": "completed"}


def archive(workdir: Path, members: dict[str, bytes | Path], name: str) -> Path:
    """A zip of ``members`` (archive name -> bytes or a file, missing files left out) at WORKDIR/name,
    written atomically so a concurrent download never reads half of it."""
    import zipfile

    from embedforge.atomic import atomic_write

    target = workdir / name
    with atomic_write(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, member in members.items():
            if isinstance(member, bytes):
                zf.writestr(arcname, member)
            elif member.is_file():
                zf.write(member, arcname)
    return target
