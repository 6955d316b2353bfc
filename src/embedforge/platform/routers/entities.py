"""The entity store: namespaces, datasets and models (``/v1/namespaces``, ``/v1/datasets``, ``/v1/models``)."""

from __future__ import annotations

from fastapi import APIRouter

from embedforge.platform import paths
from embedforge.platform.deps import DB, Config, Params
from embedforge.platform.errors import BadRequest
from embedforge.platform.routers import add_read_routes
from embedforge.platform.schemas import DatasetCreate, ModelCreate, NamespaceCreate, dump
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


@router.post("/v1/datasets")
def create_dataset(body: DatasetCreate, db: DB) -> dict:
    if not body.files_url.startswith(("hf://", "file://", "nds://")):
        raise BadRequest(f"files_url '{body.files_url}' must be hf://datasets/ns/name or file://NAME/")
    data = {"format": None, "hf_endpoint": None, "split": None, "limit": None, **dump(body)}
    return records.public(records.create(db, "dataset", body.namespace, body.name, data, "dataset"))


@router.post("/v1/models")
def create_model(body: ModelCreate, db: DB, cfg: Config) -> dict:
    files_url = (body.artifact or {}).get("files_url")
    if isinstance(files_url, str) and files_url.startswith("file://"):
        paths.confined(cfg, files_url, "artifact.files_url")
    return records.public(records.create(db, "model", body.namespace, body.name, dump(body), "model"))


add_read_routes(router, "/v1/datasets", "dataset")
add_read_routes(router, "/v1/models", "model")
