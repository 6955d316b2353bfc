"""The entity store: namespaces, projects, datasets and models (``/v1/namespaces``, ``/v1/projects``,
``/v1/datasets``, ``/v1/models``): create, retrieve, list, update (PATCH) and delete."""

from __future__ import annotations

from fastapi import APIRouter

from embedforge.platform import paths
from embedforge.platform.deps import DB, Config, Params
from embedforge.platform.errors import BadRequest
from embedforge.platform.routers import add_read_routes, add_update_route, same_identity
from embedforge.platform.schemas import (
    DatasetCreate,
    ModelCreate,
    NamespaceCreate,
    ProjectCreate,
    dump,
    update_schema,
)
from embedforge.platform.store import records

router = APIRouter(tags=["entities"])


@router.post("/v1/namespaces", status_code=200)
def create_namespace(body: NamespaceCreate, db: DB) -> dict:
    data = dump(body)
    row = records.create(db, "namespace", "", body.id, {**data, "id": body.id}, "namespace")
    return records.public(row)


@router.get("/v1/namespaces")
def list_namespaces(params: Params, db: DB) -> dict:
    return records.list_public(db, "namespace", {k: v for k, v in params.items() if k != "filter[namespace]"})


@router.get("/v1/namespaces/{namespace_id}")
def get_namespace(namespace_id: str, db: DB) -> dict:
    return records.public(records.get(db, "namespace", "", namespace_id))


NamespaceUpdate = update_schema(NamespaceCreate, namespace=str)


@router.patch("/v1/namespaces/{namespace_id}")
def update_namespace(namespace_id: str, body: NamespaceUpdate, db: DB) -> dict:
    changes = dump(body)
    same_identity(changes, id=namespace_id, namespace=namespace_id)
    return records.public(records.patch(db, records.get(db, "namespace", "", namespace_id), changes))


@router.delete("/v1/namespaces/{namespace_id}")
def delete_namespace(namespace_id: str, db: DB) -> dict:
    row = records.get(db, "namespace", "", namespace_id)
    records.delete(db, row)
    return {
        "id": namespace_id,
        "object": "namespace",
        "message": "Resource deleted successfully.",
        "deleted_at": None,
    }


@router.post("/v1/projects")
def create_project(body: ProjectCreate, db: DB) -> dict:
    return records.public(records.create(db, "project", body.namespace, body.name, dump(body), "project"))


def _check_files_url(files_url: str) -> None:
    if not files_url.startswith(("hf://", "file://", "nds://")):
        raise BadRequest(f"files_url '{files_url}' must be hf://datasets/ns/name or file://NAME/")


@router.post("/v1/datasets")
def create_dataset(body: DatasetCreate, db: DB) -> dict:
    _check_files_url(body.files_url)
    data = {"format": None, "hf_endpoint": None, "split": None, "limit": None, **dump(body)}
    return records.public(records.create(db, "dataset", body.namespace, body.name, data, "dataset"))


def _check_artifact(cfg, artifact: dict | None) -> None:
    files_url = (artifact or {}).get("files_url")
    if isinstance(files_url, str) and files_url.startswith("file://"):
        paths.confined(cfg, files_url, "artifact.files_url")


@router.post("/v1/models")
def create_model(body: ModelCreate, db: DB, cfg: Config) -> dict:
    _check_artifact(cfg, body.artifact)
    return records.public(records.create(db, "model", body.namespace, body.name, dump(body), "model"))


def _dataset_update(_db, _cfg, merged: dict, changes: dict) -> dict:
    _check_files_url(merged["files_url"])
    return changes


def _model_update(_db, cfg, merged: dict, changes: dict) -> dict:
    _check_artifact(cfg, merged.get("artifact"))
    return changes


for _path, _kind, _schema, _check in (
    ("/v1/projects", "project", ProjectCreate, None),
    ("/v1/datasets", "dataset", DatasetCreate, _dataset_update),
    ("/v1/models", "model", ModelCreate, _model_update),
):
    add_read_routes(router, _path, _kind)
    add_update_route(router, _path, _kind, update_schema(_schema), _check)
