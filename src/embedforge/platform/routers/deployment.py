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
from embedforge.platform.routers import add_read_routes, add_update_route, same_identity
from embedforge.platform.schemas import DeploymentConfigCreate, ModelDeploymentCreate, dump, update_schema
from embedforge.platform.store import records, secret_store
from embedforge.platform.store.models import Job, utcnow

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


NIM_DEFAULTS = {"image_name": "embedforge", "image_tag": "onnx", "gpu": 0}  # what serves here: CPU, ONNX


def with_nim_defaults(config: dict) -> dict:
    """A deployment config with the fields NeMo always answers in ``nim_deployment`` filled in."""
    return {**config, "nim_deployment": {**NIM_DEFAULTS, **(config.get("nim_deployment") or {})}}


@router.post("/configs")
def create_config(body: DeploymentConfigCreate, db: DB, cfg: Config) -> dict:
    _model_folder(db, cfg, body.model, ["model"])
    data = with_nim_defaults(dump(body))
    return records.public(records.create(db, CONFIG, body.namespace, body.name, data, "deployment-config"))


def _config_update(db, cfg, merged: dict, changes: dict) -> dict:
    if "model" in changes:
        _model_folder(db, cfg, changes["model"], ["model"])
    return with_nim_defaults(changes) if "nim_deployment" in changes else changes


add_read_routes(router, "/configs", CONFIG)
add_update_route(router, "/configs", CONFIG, update_schema(DeploymentConfigCreate), _config_update)


def _public(row: Job) -> dict:
    return {
        **row.body,
        "id": row.id,
        "status_details": {"status": row.status, "description": row.details.get("description", "")},
        "url": row.details.get("url") or "",  # NeMo's url is a string; empty until the server is up
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
        config = with_nim_defaults(dump(body.config))
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


DeploymentUpdate = update_schema(ModelDeploymentCreate)


@router.patch("/model-deployments/{namespace}/{name}")
def update_deployment(namespace: str, name: str, body: DeploymentUpdate, db: DB) -> dict:
    """The deployment's own fields (description, custom fields, ...); what it serves is fixed while it
    runs: a different ``config`` is a 422 (delete the deployment and create it again)."""
    row = _find(db, namespace, name)
    if row is None:
        raise NotFound(f"model deployment '{namespace}/{name}' not found")
    changes = dump(body)
    same_identity(changes, namespace=namespace, name=name)
    if "config" in changes and changes["config"] != row.body.get("config"):
        raise Unprocessable(["config"], "a running deployment's config is fixed; delete and create it again")
    changes, hidden = secret_store.split(changes)
    secret_store.replace(db, row.id, hidden)
    row.body = {**row.body, **changes}
    row.updated_at = utcnow()
    db.commit()
    return _public(row)


@router.delete("/model-deployments/{namespace}/{name}")
def delete_deployment(namespace: str, name: str, db: DB) -> dict:
    row = _find(db, namespace, name)
    if row is None or row.status not in LIVE:
        raise NotFound(f"model deployment '{namespace}/{name}' not found")
    job_store.set_status(db, row, "deleting", "deleting", None, description="stopping the server")
    return {"id": row.id, "message": "Resource deletion started."}
