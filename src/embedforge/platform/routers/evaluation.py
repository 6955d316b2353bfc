"""The evaluator under ``/v1/evaluation``: configs, targets and jobs (each inline or ``ns/name``), results."""

from __future__ import annotations

import json

from fastapi import APIRouter

from embedforge.platform.deps import DB, Config, Params, split_ref
from embedforge.platform.errors import NotFound, Unprocessable
from embedforge.platform.jobs import evaluation
from embedforge.platform.jobs import store as job_store
from embedforge.platform.routers import add_read_routes
from embedforge.platform.schemas import EvalConfigCreate, EvalTargetCreate, EvaluationJobCreate, dump
from embedforge.platform.store import records

router = APIRouter(prefix="/v1/evaluation", tags=["evaluation"])
CONFIG, TARGET = "evaluation_config", "evaluation_target"


def _store(db, kind: str, prefix: str, body, loc: list) -> dict:
    data = dump(body)
    if kind == CONFIG:
        evaluation.check_config(data, loc)
    entity_id = records.new_id(prefix)
    data = {**data, "name": body.name or entity_id, "namespace": body.namespace, "schema_version": "1.0"}
    data["type_prefix"] = data.get("type")
    row = records.create(db, kind, body.namespace, data["name"], {**data, "id": entity_id}, prefix)
    return records.public(row)


@router.post("/configs")
def create_config(body: EvalConfigCreate, db: DB) -> dict:
    return _store(db, CONFIG, "eval-config", body, [])


@router.post("/targets")
def create_target(body: EvalTargetCreate, db: DB) -> dict:
    return _store(db, TARGET, "eval-target", body, [])


add_read_routes(router, "/configs", CONFIG)
add_read_routes(router, "/targets", TARGET)


def _resolve(db, value, kind: str, prefix: str, loc: str) -> dict:
    if isinstance(value, str):
        ns, name = split_ref(value, loc)
        row = records.find(db, kind, ns, name)
        if row is None:
            raise Unprocessable([loc], f"no evaluation {loc} '{value}'")
        return records.public(row)
    return _store(db, kind, prefix, value, [loc])


@router.post("/jobs")
def create_job(body: EvaluationJobCreate, db: DB) -> dict:
    config = _resolve(db, body.config, CONFIG, "eval-config", "config")
    target = _resolve(db, body.target, TARGET, "eval-target", "target")
    if config["type"] != target["type"]:
        raise Unprocessable(["target", "type"], f"a {config['type']} config needs a {config['type']} target")
    extra = {k: v for k, v in dump(body).items() if k not in ("config", "target", "namespace", "name")}
    return evaluation.submit(db, body.namespace, body.name, config, target, extra)


@router.get("/jobs")
def list_jobs(params: Params, db: DB) -> dict:
    return job_store.list_public(db, evaluation.KIND, params)


@router.get("/jobs/{job_id}/per-query-scores")
def get_per_query_scores(job_id: str, db: DB, cfg: Config) -> dict:
    """embedforge's addition to NeMo's routes: each metric per query (``{task: {metric: {query_id:
    score}}}``), for paired comparisons of two models."""
    row = job_store.get(db, evaluation.KIND, job_id)
    path = cfg.data_dir / evaluation.KIND / row.id / evaluation.PER_QUERY_FILE
    if row.status != "completed" or not path.is_file():
        raise NotFound(f"evaluation job {job_id} has no per-query scores ({row.status})")
    return {"job": row.id, "tasks": json.loads(path.read_text())}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, db: DB) -> dict:
    return job_store.public(job_store.get(db, evaluation.KIND, job_id))


@router.get("/jobs/{job_id}/status")
def get_status(job_id: str, db: DB) -> dict:
    row = job_store.get(db, evaluation.KIND, job_id)
    return {"job_id": row.id, **job_store.public(row)["status_details"]}


@router.get("/jobs/{job_id}/results")
def get_results(job_id: str, db: DB) -> dict:
    row = job_store.get(db, evaluation.KIND, job_id)
    if row.status != "completed":
        raise Unprocessable(
            ["job_id"], f"evaluation job {job_id} is {row.status}, results exist once completed"
        )
    return evaluation.results(row)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, db: DB) -> dict:
    return job_store.public(job_store.request_cancel(db, evaluation.KIND, job_id))
