"""One router per resource family, as NVIDIA splits its services; ``add_read_routes`` gives each named
resource its list / get / delete endpoints and ``add_update_route`` its PATCH."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.orm import Session

from embedforge.platform.deps import DB, Config, Params
from embedforge.platform.errors import Unprocessable
from embedforge.platform.schemas import dump
from embedforge.platform.settings import Settings
from embedforge.platform.store import records

# check(db, settings, merged body, changes) -> the changes to store (it may rewrite or refuse them)
UpdateCheck = Callable[[Session, Settings, dict, dict], dict]


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


def same_identity(changes: dict, **identity: str) -> None:
    """A PATCH may repeat the resource's name or namespace but not change them (422 naming the field)."""
    for field, value in identity.items():
        if field in changes and changes[field] != value:
            raise Unprocessable([field], f"'{changes[field]}' differs from the path's '{value}' (no renames)")


def add_update_route(
    router: APIRouter, path: str, kind: str, schema: type[BaseModel], check: UpdateCheck | None = None
) -> None:
    """``PATCH path/{namespace}/{name}``: the body's fields replace the stored ones (NeMo's update)."""

    def update_one(namespace: str, name: str, body, db: DB, cfg: Config) -> dict:
        row = records.get(db, kind, namespace, name)
        changes = dump(body)
        same_identity(changes, namespace=namespace, name=name)
        if check is not None:
            changes = check(db, cfg, {**row.body, **changes}, changes)
        return records.public(records.patch(db, row, changes))

    update_one.__annotations__["body"] = schema
    router.add_api_route(
        f"{path}/{{namespace}}/{{name}}", update_one, methods=["PATCH"], name=f"update_{kind}"
    )
