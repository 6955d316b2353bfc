"""The tables: entities (named, namespaced records in NVIDIA's JSON shapes), jobs (work with a status) and
the secrets their bodies carried.

Resources are stored as their public JSON body plus the columns the platform queries by; the body
keeps NVIDIA's field names, so a new optional field needs no migration.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Entity(Base):
    """A namespace, dataset, model, target, config or datastore repo, unique by (kind, namespace, name)."""

    __tablename__ = "entities"
    __table_args__ = (
        UniqueConstraint("kind", "namespace", "name", name="uq_entities_kind_ns_name"),
        Index("ix_entities_kind_created_at", "kind", "created_at"),  # a list page sorts by time
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    namespace: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    body: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Job(Base):
    """A customization, evaluation or deployment: its request, its status and the worker running it."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_kind_created_at", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    namespace: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), index=True)
    body: Mapped[dict] = mapped_column(JSON)
    details: Mapped[dict] = mapped_column(JSON)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # ``details`` less a heavy key, computed by the database when a list asks (listing.lighter)
    lighter_details: Mapped[dict | None] = query_expression()


class Secret(Base):
    """A key a client gave in a body (e.g. an evaluation target's ``api_key``), by the owning row's id and
    the key's dotted path in that body; the body itself keeps only a masked copy."""

    __tablename__ = "secrets"

    owner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class JobLease(Base):
    """The platform process (``owner``) running a job's worker, until ``expires_at`` unless it renews:
    another platform on the same database takes the job over only once the lease has expired."""

    __tablename__ = "job_leases"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
