"""Deployments under ``/v1/deployment``: deployment configs and model deployments (config by reference or
inline). A deployment serves an entity-store model; the job runner exports and starts it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import select

from embedforge.platform import paths
from embedforge.platform.deps import DB, Config, Params, split_ref
from embedforge.platform.errors import Conflict, NotFound, Unprocessable
from embedforge.platform.jobs import store as job_store
from embedforge.platform.jobs.deployments import KIND, LIVE, served_name
from embedforge.platform.routers import add_read_routes
from embedforge.platform.schemas import DeploymentConfigCreate, ModelDeploymentCreate, dump
from embedforge.platform.store import records
from embedforge.platform.store.models import Job

router = APIRouter(prefix="/v1/deployment", tags=["deployment"])
CONFIG = "deployment_config"


def _model_folder(db, cfg, model_ref: str, loc: list) -> Path:
    """The model's local folder, confined to the folders the platform may read."""
    ns, name = split_ref(model_ref, "model")
    row = records.find(db, "model", ns, name)
    if row is None:
        raise Unprocessable(loc, f"no model '{model_ref}' in the entity store")
    url = str((row.body.get("artifact") or {}).get("files_url", ""))
    folder = (
        paths.confined(cfg, url, f"model '{model_ref}' artifact.files_url")
        if url.startswith("file://")
        else None
    )
    if folder is None or not folder.is_dir():
        raise Unprocessable(loc, f"model '{model_ref}' has no local files to deploy ({url or 'no artifact'})")
    return folder


@router.post("/configs")
def create_config(body: DeploymentConfigCreate, db: DB, cfg: Config) -> dict:
    _model_folder(db, cfg, body.model, ["model"])
    return records.public(
        records.create(db, CONFIG, body.namespace, body.name, dump(body), "deployment-config")
    )


add_read_routes(router, "/configs", CONFIG)


def _public(row: Job) -> dict:
    return {
        **row.body,
        "id": row.id,
        "status_details": {"status": row.status, "description": row.details.get("description", "")},
        "url": row.details.get("url"),
        "deployed": row.status == "ready",
        "models": [row.details["served_model_name"]],
        "created_at": records.iso(row.created_at),
        "updated_at": records.iso(row.updated_at),
    }


def _find(db, namespace: str, name: str) -> Job | None:
    query = select(Job).where(Job.kind == KIND, Job.namespace == namespace, Job.name == name)
    return db.scalars(query.order_by(Job.created_at.desc())).first()


@router.post("/model-deployments")
def create_deployment(body: ModelDeploymentCreate, db: DB, cfg: Config) -> dict:
    existing = _find(db, body.namespace, body.name)
    if existing is not None and existing.status in LIVE:
        raise Conflict(f"model deployment '{body.namespace}/{body.name}' already exists")
    if isinstance(body.config, str):
        ns, name = split_ref(body.config, "config")
        config_row = records.find(db, CONFIG, ns, name)
        if config_row is None:
            raise Unprocessable(["config"], f"no deployment config '{body.config}'")
        config = config_row.body
    else:
        config = dump(body.config)
    folder = _model_folder(db, cfg, config["model"], ["config", "model"])
    served = served_name(config["model"])
    precision = (config.get("nim_deployment") or {}).get("precision") or "fp32"
    work = {"model_dir": str(folder), "served_model_name": served, "precision": precision}
    data = {**dump(body), "config": body.config if isinstance(body.config, str) else config}
    row = job_store.create(
        db,
        KIND,
        records.new_id("deployment"),
        body.namespace,
        body.name,
        data,
        {"work": work, "served_model_name": served, "description": "queued"},
    )
    return _public(row)


@router.get("/model-deployments")
def list_deployments(params: Params, db: DB) -> dict:
    return job_store.list_public(db, KIND, params, _public)


@router.get("/model-deployments/{namespace}/{name}")
def get_deployment(namespace: str, name: str, db: DB) -> dict:
    row = _find(db, namespace, name)
    if row is None:
        raise NotFound(f"model deployment '{namespace}/{name}' not found")
    return _public(row)


@router.delete("/model-deployments/{namespace}/{name}")
def delete_deployment(namespace: str, name: str, db: DB) -> dict:
    row = _find(db, namespace, name)
    if row is None or row.status not in LIVE:
        raise NotFound(f"model deployment '{namespace}/{name}' not found")
    job_store.set_status(db, row, "deleting", "deleting", None, description="stopping the server")
    return {"id": row.id, "message": "Resource deletion started."}
