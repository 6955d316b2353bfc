"""Keys in request bodies (``api_key``, ``hf_token``, ...): stored apart, answered masked, revealed only to
the worker that uses them.

Every entity and job body passes through ``split`` before it is stored: each secret field keeps a mask
("****" plus the last 4 characters of a long key) and the real value goes to the ``secrets`` table under
the row's id and the field's dotted path. ``reveal`` puts the values back into a copy for a worker.
"""

from __future__ import annotations

import copy

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from embedforge.platform.store.models import Secret

SECRET_FIELDS = frozenset({"api_key", "hf_token", "access_token", "password"})
MASK = "****"


def mask(value: str) -> str:
    """What a client reads back: enough to tell two keys apart, never enough to use one."""
    return MASK + value[-4:] if len(value) >= 16 else MASK


def split(body: dict) -> tuple[dict, dict[str, str]]:
    """(the body with every non-empty secret field masked, {dotted path: real value}); a field that is
    already masked (a stored body copied into another) stays as it is."""
    found: dict[str, str] = {}

    def walk(node, path: str):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key in SECRET_FIELDS and isinstance(value, str) and value and not value.startswith(MASK):
                    found[where] = value
                    out[key] = mask(value)
                else:
                    out[key] = walk(value, where)
            return out
        if isinstance(node, list):
            return [walk(item, f"{path}.{i}") for i, item in enumerate(node)]
        return node

    return walk(body, ""), found


def stage(session: Session, owner_id: str, found: dict[str, str]) -> None:
    """Add the values to the session; they commit (or roll back) with the owning row."""
    for path, value in found.items():
        session.add(Secret(owner_id=owner_id, path=path, value=value))


def replace(session: Session, owner_id: str, found: dict[str, str]) -> None:
    """New values for some of the owner's secret paths (an update): the old ones at those paths go."""
    if found:
        session.execute(delete(Secret).where(Secret.owner_id == owner_id, Secret.path.in_(list(found))))
        session.flush()
    stage(session, owner_id, found)


def reveal(session: Session, owner_id: str, body: dict) -> dict:
    """A copy of ``body`` (the owner's stored body or a part of it) with the real values put back; a
    masked field whose value is gone (its owner was deleted) becomes null rather than the mask."""
    values = {s.path: s.value for s in session.scalars(select(Secret).where(Secret.owner_id == owner_id))}
    out = copy.deepcopy(body)

    def walk(node, path: str):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            where = f"{path}.{key}" if path else str(key)
            if key in SECRET_FIELDS and isinstance(value, str) and value.startswith(MASK):
                node[key] = values.get(where)
            else:
                walk(value, where)

    walk(out, "")
    return out


def drop(session: Session, owner_id: str) -> None:
    session.execute(delete(Secret).where(Secret.owner_id == owner_id))
