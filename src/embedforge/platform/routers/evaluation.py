"""The evaluator under ``/v1/evaluation``: configs, targets and jobs (each inline or ``ns/name``), and
results: a completed job's ``result`` is the id of an evaluation result entity (``/v1/evaluation/results``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from embedforge.platform.deps import DB, Config, Params, split_ref
from embedforge.platform.errors import Conflict, NotFound, Unprocessable
from embedforge.platform.jobs import evaluation
from embedforge.platform.jobs import store as job_store
from embedforge.platform.routers import add_read_routes, add_update_route, same_identity
from embedforge.platform.schemas import (
    EvalConfigCreate,
    EvalResultCreate,
    EvalTargetCreate,
    EvaluationJobCreate,
    dump,
    update_schema,
)
from embedforge.platform.store import records

router = APIRouter(prefix="/v1/evaluation", tags=["evaluation"])
CONFIG, TARGET = "evaluation_config", "evaluation_target"
LIVE_SECONDS = 600  # how long a live evaluation's request waits for its job


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


def _config_update(_db, _cfg, merged: dict, changes: dict) -> dict:
    evaluation.check_config(merged, [])
    return changes


add_read_routes(router, "/configs", CONFIG)
add_read_routes(router, "/targets", TARGET)
add_update_route(router, "/configs", CONFIG, update_schema(EvalConfigCreate), _config_update)
add_update_route(router, "/targets", TARGET, update_schema(EvalTargetCreate))


def _resolve(db, value, kind: str, prefix: str, loc: str) -> dict:
    if isinstance(value, str):
        ns, name = split_ref(value, loc)
        row = records.find(db, kind, ns, name)
        if row is None:
            raise Unprocessable([loc], f"no evaluation {loc} '{value}'")
        return records.public(row)
    return _store(db, kind, prefix, value, [loc])


@router.post("/live")
def live(body: EvaluationJobCreate, db: DB) -> dict:
    """NeMo's live evaluation: a job like any other, answered once it has ended (with its result inline)."""
    job_id = create_job(body, db)["id"]
    deadline = time.monotonic() + LIVE_SECONDS
    while True:
        db.expire_all()
        row = job_store.get(db, evaluation.KIND, job_id)
        if row.status in job_store.TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    public = job_store.public(row)
    result_id = row.body.get("result")
    result = records.public(records.get_by_id(db, evaluation.RESULT, result_id)) if result_id else None
    return {"status": row.status, "status_details": public["status_details"], "result": result, "logs": None}


@router.post("/jobs")
def create_job(body: EvaluationJobCreate, db: DB) -> dict:
    config = _resolve(db, body.config, CONFIG, "eval-config", "config")
    target = _resolve(db, body.target, TARGET, "eval-target", "target")
    baseline = None
    if body.baseline_target is not None:
        baseline = _resolve(db, body.baseline_target, TARGET, "eval-target", "baseline_target")
    for field, chosen in (("target", target), ("baseline_target", baseline or target)):
        if config["type"] != chosen["type"]:
            raise Unprocessable([field, "type"], f"a {config['type']} config needs a {config['type']} target")
    own = ("config", "target", "baseline_target", "namespace", "name")
    extra = {k: v for k, v in dump(body).items() if k not in own}
    return evaluation.submit(db, body.namespace, body.name, config, target, extra, baseline)


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


def _completed(db, job_id: str):
    row = job_store.get(db, evaluation.KIND, job_id)
    if row.status != "completed":
        raise Unprocessable(
            ["job_id"], f"evaluation job {job_id} is {row.status}, results exist once completed"
        )
    return row


@router.get("/jobs/{job_id}/results")
def get_results(job_id: str, db: DB) -> dict:
    row = _completed(db, job_id)
    return records.public(records.get_by_id(db, evaluation.RESULT, row.body["result"]))


@router.get("/jobs/{job_id}/download-results")
def download_results(job_id: str, db: DB, cfg: Config) -> FileResponse:
    """A zip of the job's result (results.json), its worker's spec (no keys) and log."""
    row = _completed(db, job_id)
    result = records.public(records.get_by_id(db, evaluation.RESULT, row.body["result"]))
    workdir = _workdir(cfg, job_id)
    members = {
        "results.json": json.dumps(result, indent=2).encode(),
        "spec.json": workdir / "spec.json",
        "worker.log": workdir / "worker.log",
    }
    return _zip(evaluation.archive(workdir, members, "results.zip"), f"{job_id}-results.zip")


@router.get("/jobs/{job_id}/logs")
def download_logs(job_id: str, db: DB, cfg: Config) -> FileResponse:
    """The worker's log as a zip, as NeMo answers it."""
    job_store.get(db, evaluation.KIND, job_id)
    log = _workdir(cfg, job_id) / "worker.log"
    if not log.is_file():
        raise NotFound(f"evaluation job {job_id} has no worker log yet")
    return _zip(evaluation.archive(log.parent, {"worker.log": log}, "logs.zip"), f"{job_id}-logs.zip")


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, db: DB) -> dict:
    return job_store.public(job_store.request_cancel(db, evaluation.KIND, job_id))


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: str, db: DB, cfg: Config) -> Response:
    """Delete a job that is not running, with its files; its result entity stays (delete it by id)."""
    row = job_store.get(db, evaluation.KIND, job_id)
    if row.status in ("pending", "running", "cancelling"):
        raise Conflict(f"evaluation job {job_id} is {row.status}; cancel it first")
    job_store.delete(db, row)
    shutil.rmtree(_workdir(cfg, job_id), ignore_errors=True)
    return Response(status_code=204)


def _workdir(cfg, job_id: str) -> Path:
    return cfg.data_dir / evaluation.KIND / job_id


def _zip(path: Path, filename: str) -> FileResponse:
    return FileResponse(path, media_type="application/zip", filename=filename)


# ------------------------------------------------------------------------------------------ results


@router.post("/results")
def create_result(body: EvalResultCreate, db: DB) -> dict:
    """A result recorded by a client (NeMo's create): its job must be an evaluation job here."""
    _known_job(db, body.job)
    result_id = records.new_id(evaluation.RESULT)
    data = {"groups": {}, "tasks": {}, "custom_fields": {}, **dump(body), "id": result_id}
    data["namespace"] = body.namespace
    return records.public(records.create(db, evaluation.RESULT, body.namespace, result_id, data, "r"))


def _known_job(db, job_id: str) -> None:
    try:
        job_store.get(db, evaluation.KIND, job_id)
    except NotFound as err:
        raise Unprocessable(["job"], f"no evaluation job '{job_id}'") from err


ResultUpdate = update_schema(EvalResultCreate)


@router.patch("/results/{result_id}")
def update_result(result_id: str, body: ResultUpdate, db: DB) -> dict:
    row = records.get_by_id(db, evaluation.RESULT, result_id)
    changes = dump(body)
    same_identity(changes, namespace=row.namespace, id=result_id)
    if "job" in changes:
        _known_job(db, changes["job"])
    return records.public(records.patch(db, row, changes))


@router.get("/results")
def list_results(params: Params, db: DB) -> dict:
    """NeMo's result list; ``filter[job_id]`` selects one job's results."""
    renamed = {("filter[job]" if k == "filter[job_id]" else k): v for k, v in params.items()}
    return records.list_public(db, evaluation.RESULT, renamed)


@router.get("/results/{result_id}")
def get_result(result_id: str, db: DB) -> dict:
    return records.public(records.get_by_id(db, evaluation.RESULT, result_id))


@router.delete("/results/{result_id}")
def delete_result(result_id: str, db: DB) -> dict:
    records.delete(db, records.get_by_id(db, evaluation.RESULT, result_id))
    return {"id": result_id, "message": "Resource deleted successfully.", "deleted_at": None}
