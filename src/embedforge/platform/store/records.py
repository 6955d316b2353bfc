"""Reading and writing entity rows as NVIDIA's JSON bodies: create (409 on a taken name), get, list, delete.

List queries follow the NeMo APIs: ``filter[field]=value``, ``sort=[-]field``, ``page`` / ``page_size``,
answered as ``{object, data, pagination, sort, filter}``.
"""

from __future__ import annotations

import secrets
import string
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from embedforge.platform.errors import Conflict, NotFound
from embedforge.platform.store import secret_store
from embedforge.platform.store.models import Entity, utcnow

ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """NVIDIA-style ids: a kind prefix and 22 random base-62 characters (``cust-MZopzmY1UjbPcM5oZAqTwc``)."""
    return f"{prefix}-" + "".join(secrets.choice(ALPHABET) for _ in range(22))


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment.tzinfo else moment.isoformat() + "Z"


def public(row: Entity) -> dict[str, Any]:
    """The row as the API returns it: its body plus id and timestamps."""
    return {**row.body, "id": row.id, "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


def create(session: Session, kind: str, namespace: str, name: str, body: dict, id_prefix: str) -> Entity:
    """Store a new entity; its secret fields are kept apart and the body keeps them masked."""
    now = utcnow()
    body, hidden = secret_store.split(body)
    row = Entity(
        id=body.get("id") or new_id(id_prefix),
        kind=kind,
        namespace=namespace,
        name=name,
        body=body,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    secret_store.stage(session, row.id, hidden)
    try:
        session.commit()
    except IntegrityError as err:
        session.rollback()
        raise Conflict(f"{kind} '{namespace}/{name}' already exists".replace("'/", "'")) from err
    return row


def find(session: Session, kind: str, namespace: str, name: str) -> Entity | None:
    return session.scalar(
        select(Entity).where(Entity.kind == kind, Entity.namespace == namespace, Entity.name == name)
    )


def get(session: Session, kind: str, namespace: str, name: str) -> Entity:
    row = find(session, kind, namespace, name)
    if row is None:
        label = f"{namespace}/{name}" if namespace else name
        raise NotFound(f"{kind} '{label}' not found")
    return row


def get_by_id(session: Session, kind: str, entity_id: str) -> Entity:
    """An entity by its id (results are addressed by id, not namespace/name)."""
    row = session.get(Entity, entity_id)
    if row is None or row.kind != kind:
        raise NotFound(f"{kind} '{entity_id}' not found")
    return row


def update(session: Session, row: Entity, changes: dict) -> Entity:
    row.body = {**row.body, **changes}
    row.updated_at = utcnow()
    session.commit()
    return row


def delete(session: Session, row: Entity) -> None:
    secret_store.drop(session, row.id)
    session.delete(row)
    session.commit()


def list_query(params: dict[str, str]) -> tuple[dict[str, str], str, int, int]:
    """Split a NeMo list query string into (filters, sort, page, page_size)."""
    filters = {
        k[len("filter[") : -1]: v for k, v in params.items() if k.startswith("filter[") and k.endswith("]")
    }
    sort = params.get("sort") or "-created_at"
    try:
        page = max(1, int(params.get("page") or 1))
        page_size = min(1000, max(1, int(params.get("page_size") or 100)))
    except ValueError as err:
        from embedforge.platform.errors import BadRequest

        raise BadRequest(f"page and page_size must be integers: {err}") from err
    return filters, sort, page, page_size


def _sort_key(sort: str):
    field = sort.lstrip("-")
    return lambda item: (item.get(field) is None, str(item.get(field) or ""))


def paginate(items: list[dict], filters: dict, sort: str, page: int, page_size: int) -> dict[str, Any]:
    """Filter (exact match on top-level fields), sort and cut one page, in NeMo's list shape."""
    for field, value in filters.items():
        items = [i for i in items if str(i.get(field, "")) == value]
    items.sort(key=_sort_key(sort), reverse=sort.startswith("-"))
    total = len(items)
    data = items[(page - 1) * page_size : page * page_size]
    return {
        "object": "list",
        "data": data,
        "pagination": {
            "page": page,
            "page_size": page_size,
            "current_page_size": len(data),
            "total_pages": max(1, -(-total // page_size)),
            "total_results": total,
        },
        "sort": sort,
        "filter": filters,
    }


def list_public(session: Session, kind: str, params: dict[str, str], namespace: str | None = None) -> dict:
    filters, sort, page, page_size = list_query(params)
    query = select(Entity).where(Entity.kind == kind)
    ns = namespace or filters.get("namespace")
    if ns is not None:
        query = query.where(Entity.namespace == ns)
    items = [public(row) for row in session.scalars(query)]
    return paginate(items, filters, sort, page, page_size)


def count(session: Session, kind: str) -> int:
    return session.scalar(select(func.count()).select_from(Entity).where(Entity.kind == kind)) or 0
