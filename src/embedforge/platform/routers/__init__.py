"""One router per resource family, as NVIDIA splits its services; ``add_read_routes`` gives each named
resource its list / get / delete endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from embedforge.platform.deps import DB, Params
from embedforge.platform.store import records


def add_read_routes(router: APIRouter, path: str, kind: str) -> None:
    """``GET path`` (NeMo's filtered, sorted, paged list), ``GET`` and ``DELETE path/{namespace}/{name}``."""

    def list_all(params: Params, db: DB) -> dict:
        return records.list_public(db, kind, params)

    def get_one(namespace: str, name: str, db: DB) -> dict:
        return records.public(records.get(db, kind, namespace, name))

    def delete_one(namespace: str, name: str, db: DB) -> dict:
        records.delete(db, records.get(db, kind, namespace, name))
        return {"id": f"{namespace}/{name}", "object": kind, "message": "Resource deleted successfully."}

    router.add_api_route(path, list_all, methods=["GET"], name=f"list_{kind}")
    router.add_api_route(f"{path}/{{namespace}}/{{name}}", get_one, methods=["GET"], name=f"get_{kind}")
    router.add_api_route(
        f"{path}/{{namespace}}/{{name}}", delete_one, methods=["DELETE"], name=f"delete_{kind}"
    )
