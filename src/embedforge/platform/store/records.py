"""Reading and writing entity rows as NVIDIA's JSON bodies: create (409 on a taken name), get, list, patch,
delete."""

from __future__ import annotations

import secrets
import string
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from embedforge.platform.errors import Conflict, NotFound
from embedforge.platform.store import listing, secret_store
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


def patch(session: Session, row: Entity, changes: dict) -> Entity:
    """Merge a PATCH body's top-level fields into the row; a key it carries replaces the stored one."""
    changes, hidden = secret_store.split(changes)
    secret_store.replace(session, row.id, hidden)
    return update(session, row, changes)


def delete(session: Session, row: Entity) -> None:
    secret_store.drop(session, row.id)
    session.delete(row)
    session.commit()


def list_public(session: Session, kind: str, params: dict[str, str]) -> dict:
    """NeMo's filtered, sorted, paged list of one kind of entity (``listing.page``)."""
    return listing.page(session, select(Entity).where(Entity.kind == kind), Entity, params, public)


def count(session: Session, kind: str) -> int:
    return session.scalar(select(func.count()).select_from(Entity).where(Entity.kind == kind)) or 0
