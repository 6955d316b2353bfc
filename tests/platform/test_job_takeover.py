"""Two job runners on one database, as two platforms hold them, on SQLite and PostgreSQL. A runner takes
over a job (or relaunches a deployment) only under its lease and after reading the row again: the owner
may have written its end, and let the lease go, between the other's poll reading the row and the
take-over."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import func, select

from embedforge.platform import store
from embedforge.platform.jobs import leases
from embedforge.platform.jobs import store as job_store
from embedforge.platform.jobs.deployments import KIND as DEPLOYMENT
from embedforge.platform.jobs.runner import JobRunner
from embedforge.platform.settings import Settings
from embedforge.platform.store.models import JobLease

JOB = "eval-takeover"


@pytest.fixture(params=["sqlite", "postgresql"])
def runners(request, tmp_path):
    """A session factory and two runners on one fresh database (their threads are not started)."""
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    if request.param == "postgresql":
        name = f"takeover_{os.getpid()}_{time.monotonic_ns()}"
        url = request.getfixturevalue("postgres").create_database(name)
    engine = store.make_engine(url)
    store.migrate(engine)
    sessions = store.session_factory(engine)
    settings = Settings(data_dir=tmp_path, database_url=url)
    yield sessions, JobRunner(sessions, settings), JobRunner(sessions, settings)
    engine.dispose()


def _running_job(sessions, owner: str, kind: str = "evaluation", status: str = "running") -> None:
    with sessions() as db:
        row = job_store.create(db, kind, JOB, "team", "takeover", {"namespace": "team"})
        assert leases.acquire(db, row.id, owner)
        job_store.set_status(db, row, status, status, "worker pid 1")


def _end_state(sessions, kind: str = "evaluation") -> tuple[str, list[str], int]:
    """The job's status, its status log messages, and how many leases are left."""
    with sessions() as db:
        row = job_store.get(db, kind, JOB)
        messages = [log["message"] for log in row.details["status_logs"]]
        return row.status, messages, db.scalar(select(func.count()).select_from(JobLease))


def test_a_job_finished_after_another_runner_read_it_stays_finished(runners):
    sessions, first, second = runners
    _running_job(sessions, first.owner)
    with sessions() as polled, sessions() as db:
        (stale,) = job_store.active(polled)  # the second runner's poll reads the job running ...
        row = job_store.get(db, "evaluation", JOB)
        job_store.set_status(db, row, "completed", "completed")  # ... then the first writes its end
        leases.release(db, JOB, first.owner)  # and lets the lease go
        assert stale.status == "running" and not leases.held_elsewhere(polled, JOB, second.owner)
        second._take_over(polled, stale)
    assert _end_state(sessions) == ("completed", ["created", "running", "completed"], 0)


def test_a_job_whose_runner_is_gone_is_queued_again_once(runners):
    sessions, first, second = runners
    gone = leases.new_owner()
    _running_job(sessions, gone)
    with sessions() as db:
        leases.release(db, JOB, gone)  # as if its lease had expired: its platform is gone
    with sessions() as one, sessions() as two:
        (seen_by_first,), (seen_by_second,) = job_store.active(one), job_store.active(two)
        second._take_over(two, seen_by_second)  # both polls found it orphaned; one queues it
        first._take_over(one, seen_by_first)
    assert _end_state(sessions) == ("created", ["created", "running", "resumed"], 0)
    with sessions() as db:
        assert job_store.get(db, "evaluation", JOB).details["resume"] is True  # from its last checkpoint


def test_a_deployment_that_failed_after_another_platform_read_it_is_not_relaunched(runners):
    sessions, first, second = runners
    _running_job(sessions, first.owner, DEPLOYMENT, "ready")
    with sessions() as polled, sessions() as db:
        (stale,) = second.deployments.rows(polled)  # the second platform's poll reads it ready ...
        row = job_store.get(db, DEPLOYMENT, JOB)
        job_store.set_status(db, row, "failed", "failed", "exit 1")  # ... then its server dies
        leases.release(db, JOB, first.owner)
        second.deployments._take_over(polled, stale, "its platform stopped")
    assert _end_state(sessions, DEPLOYMENT) == ("failed", ["created", "ready", "failed"], 0)


def test_a_deployment_deleted_after_another_platform_read_it_stays_deleted(runners):
    sessions, first, second = runners
    _running_job(sessions, first.owner, DEPLOYMENT, "ready")
    with sessions() as polled, sessions() as db:
        (stale,) = second.deployments.rows(polled)
        job_store.delete(db, job_store.get(db, DEPLOYMENT, JOB))
        leases.release(db, JOB, first.owner)
        second.deployments._take_over(polled, stale, "its platform stopped")
    with sessions() as db:
        assert db.scalar(select(func.count()).select_from(JobLease)) == 0
        assert second.deployments.rows(db) == []
