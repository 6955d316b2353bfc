"""Job rows: create, read, list and move through NeMo's statuses, each move logged in ``status_logs``.

Statuses: created -> pending -> running -> completed | failed | cancelled (``cancelling`` while a
worker is being stopped). Terminal statuses never change again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from embedforge.platform.errors import NotFound
from embedforge.platform.store import listing, records, secret_store
from embedforge.platform.store.models import Job, utcnow

ACTIVE = ("created", "pending", "running", "cancelling")
TERMINAL = ("completed", "failed", "cancelled", "ready")
INTERNAL = (
    "work",
    "resume",
    "worker_started",
    "submission_id",
)  # details the runner keeps for itself, never shown


def create(
    db: Session, kind: str, job_id: str, namespace: str, name: str, body: dict, details: dict | None = None
) -> Job:
    now = utcnow()
    stamp = records.iso(now)
    details = {"created_at": stamp, "updated_at": stamp, "status": "created", **(details or {})}
    details["status_logs"] = [{"updated_at": stamp, "message": "created", "detail": None}]
    body, hidden = secret_store.split(body)
    row = Job(
        id=job_id,
        kind=kind,
        namespace=namespace,
        name=name,
        status="created",
        body=body,
        details=details,
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    db.add(row)
    secret_store.stage(db, job_id, hidden)
    db.commit()
    return row


def get(db: Session, kind: str, job_id: str) -> Job:
    row = db.get(Job, job_id)
    if row is None or row.kind != kind:
        raise NotFound(f"{kind} job '{job_id}' not found")
    return row


def public(row: Job) -> dict[str, Any]:
    return {
        **row.body,
        "id": row.id,
        "status": row.status,
        "status_details": {
            **{k: v for k, v in row.details.items() if k not in INTERNAL},
            "status": row.status,
        },
        "created_at": records.iso(row.created_at),
        "updated_at": records.iso(row.updated_at),
    }


def list_public(db: Session, kind: str, params: dict[str, str], shown=public) -> dict:
    """NeMo's filtered, sorted, paged list of one kind of job (``status`` is the column)."""
    query = select(Job).where(Job.kind == kind)
    return listing.page(db, query, Job, params, shown, {"status": Job.status})


def delete(db: Session, row: Job) -> None:
    secret_store.drop(db, row.id)
    db.delete(row)
    db.commit()


def active(db: Session, kind: str | None = None) -> list[Job]:
    query = select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.created_at)
    if kind:
        query = query.where(Job.kind == kind)
    return list(db.scalars(query))


def set_status(
    db: Session, row: Job, status: str | None = None, log: str | None = None, detail: Any = None, **fields
) -> Job:
    """Move ``row`` to ``status``, append ``log`` (+ ``detail``) to its status_logs, merge ``fields``, commit."""
    now = utcnow()
    details = {**row.details, **fields, "updated_at": records.iso(now)}
    logs = list(details.get("status_logs") or [])
    if log is not None:
        logs.append({"updated_at": records.iso(now), "message": log, "detail": detail})
    details["status_logs"] = logs
    if status is not None:
        row.status = status
        details["status"] = status
    row.details = details
    row.updated_at = now
    db.commit()
    return row


def claim(db: Session, row: Job, status: str = "pending") -> bool:
    """Move a created job to ``status`` unless another runner got there first (one UPDATE ... WHERE)."""
    from sqlalchemy import update

    result = db.execute(
        update(Job)
        .where(Job.id == row.id, Job.status == "created")
        .values(status=status, updated_at=utcnow())
    )
    db.commit()
    if result.rowcount != 1:
        return False
    db.refresh(row)
    set_status(db, row, status, "TrainingJobPending" if row.kind == "customization" else status)
    return True


def request_cancel(db: Session, kind: str, job_id: str) -> Job:
    row = get(db, kind, job_id)
    if row.status == "created":
        return set_status(db, row, "cancelled", "cancelled", "cancelled before it started")
    if row.status in ("pending", "running"):
        return set_status(db, row, "cancelling", "cancelling")
    return row
