"""Job leases: several platform processes on one database run each job (and each deployment's server)
once.

A runner that starts a job's worker takes the job's lease (its owner id and an expiry ``ttl`` seconds
ahead) and renews the leases of its workers on every poll. Another runner leaves a job alone while its
lease is alive; once the lease has expired (its platform died or hung) the job is taken over like one
left by a restart. Taking a lease is one conditional statement, so two runners never both get it. A
runner writes a job's end before it lets the lease go, and a take-over reads the row again once it holds
the lease (``take_current``), so a job finished meanwhile is never taken over.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session

from embedforge.platform.store.models import JobLease, utcnow

TTL_ENV = "EMBEDFORGE_LEASE_SECONDS"
DEFAULT_TTL = 30.0


def ttl() -> float:
    """How long a lease lasts without renewal (``EMBEDFORGE_LEASE_SECONDS``, default 30 s)."""
    return float(os.environ.get(TTL_ENV) or DEFAULT_TTL)


def new_owner() -> str:
    """This platform process's owner id: host, pid and a random part (pids repeat across hosts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def acquire(db: Session, job_id: str, owner: str) -> bool:
    """Take the job's lease if nobody holds it, we do, or it has expired; commit; True if ours."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl())
    taken = db.execute(
        update(JobLease)
        .where(JobLease.job_id == job_id, or_(JobLease.owner == owner, JobLease.expires_at < now))
        .values(owner=owner, expires_at=expires)
    ).rowcount
    if not taken:
        try:
            db.execute(insert(JobLease).values(job_id=job_id, owner=owner, expires_at=expires))
        except IntegrityError:  # someone else's live lease
            db.rollback()
            return False
    db.commit()
    return True


def renew(db: Session, owner: str, job_ids: list[str]) -> list[str]:
    """Push our leases on ``job_ids`` ``ttl`` seconds ahead; returns the ones another platform took over
    (ours expired first: this process stalled), whose workers must stop."""
    if not job_ids:
        return []
    expires = utcnow() + timedelta(seconds=ttl())
    db.execute(
        update(JobLease)
        .where(JobLease.owner == owner, JobLease.job_id.in_(job_ids))
        .values(expires_at=expires)
    )
    db.commit()
    held = set(
        db.scalars(select(JobLease.job_id).where(JobLease.owner == owner, JobLease.job_id.in_(job_ids)))
    )
    return [job_id for job_id in job_ids if job_id not in held]


def release(db: Session, job_id: str, owner: str) -> None:
    db.execute(delete(JobLease).where(JobLease.job_id == job_id, JobLease.owner == owner))
    db.commit()


def take_current(db: Session, row, owner: str, statuses: tuple[str, ...]) -> bool:
    """Take ROW's lease, then read the row again: True if the lease is ours and the row is still in one of
    STATUSES. Whoever held the lease may have written the row's end (or deleted it), and let the lease go,
    since the caller read it; then the lease is given back."""
    job_id = row.id  # read now: a deleted row's attributes cannot be read after the refresh
    if not acquire(db, job_id, owner):
        return False
    try:
        db.refresh(row)
    except InvalidRequestError:  # deleted meanwhile
        db.rollback()
    else:
        if row.status in statuses:
            return True
    release(db, job_id, owner)
    return False


def held_elsewhere(db: Session, job_id: str, owner: str) -> bool:
    """Another platform holds a live lease on the job: its worker is running there."""
    lease = db.scalar(select(JobLease).where(JobLease.job_id == job_id))
    return lease is not None and lease.owner != owner and _aware(lease.expires_at) >= utcnow()


def _aware(moment):
    """SQLite hands times back without their zone; they were written in UTC."""
    from datetime import timezone

    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
