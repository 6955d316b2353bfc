"""Deployments: a child process per deployment (export once, then ``embedforge serve`` on a free loopback
port), watched by the job runner: created -> pending -> ready | failed; ``deleting`` stops it.

A deployment's server runs on the platform that launched it, which holds the deployment's lease
(``leases``) and renews it every poll; its route (served model name -> server URL) lives in the row, so
every platform on the database proxies to it. A pending or ready deployment that no live platform holds
(its platform stopped or died) is launched again from its kept export, by whichever platform takes it.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from embedforge.atomic import write_json_atomic
from embedforge.platform.jobs import leases
from embedforge.platform.jobs import store as job_store
from embedforge.platform.jobs.executors import terminate
from embedforge.platform.jobs.worker import failure_reason
from embedforge.platform.settings import Settings
from embedforge.platform.store.models import Job

logger = logging.getLogger("embedforge.platform.jobs")
KIND = "deployment"
LIVE = ("created", "pending", "ready", "deleting")


def served_name(model_ref: str) -> str:
    """The name clients call a deployed model by: ``ns/name`` without the ``@cust-...`` suffix."""
    return model_ref.split("@", 1)[0]


def routes(db: Session) -> dict[str, str]:
    """Served model name -> server URL of every ready deployment, whichever platform runs it."""
    name = Job.details["served_model_name"].as_string()
    url = Job.details["url"].as_string()
    query = select(name, url).where(Job.kind == KIND, Job.status == "ready")
    return {served: base for served, base in db.execute(query) if served and base}


class Deployments:
    def __init__(self, settings: Settings, spawn, owner: str):
        self.settings, self.spawn, self.owner = settings, spawn, owner
        self.processes: dict[str, subprocess.Popen] = {}  # the servers this platform runs, by deployment id

    def workdir(self, job_id: str) -> Path:
        return self.settings.data_dir / KIND / job_id

    def rows(self, db: Session) -> list[Job]:
        return list(db.scalars(select(Job).where(Job.kind == KIND, Job.status.in_(LIVE))))

    def recover(self, db: Session) -> None:
        """At start: finish deletions and relaunch the deployments no live platform holds."""
        for row in self.rows(db):
            if row.status == "deleting":
                self._delete(db, row)
            elif row.status in ("pending", "ready"):
                self._take_over(db, row, "the platform restarted")

    def tick(self, db: Session) -> None:
        self._renew(db)
        for row in self.rows(db):
            process = self.processes.get(row.id)
            if row.status == "deleting":
                self._delete(db, row)
            elif row.status == "created":
                self._launch(db, row)
            elif process is None:  # another platform's server, or one whose platform is gone
                self._take_over(db, row, "its platform stopped")
            elif process.poll() is not None:  # failed is written before the lease goes: no one relaunches it
                reason = _reason(process.returncode, self.workdir(row.id))
                job_store.set_status(db, row, "failed", "failed", reason, description=reason)
                self._stop(db, row.id)
                logger.error("deployment %s/%s failed: %s", row.namespace, row.name, reason)
            elif row.status == "pending" and _ready(row.details["url"]):
                job_store.set_status(db, row, "ready", "ready", None, description="the model is served")
                logger.info("deployment %s/%s ready at %s", row.namespace, row.name, row.details["url"])

    def _renew(self, db: Session) -> None:
        """Keep our servers' leases alive; stop any server another platform took over (this one stalled
        past its lease and the other launched its own)."""
        for job_id in leases.renew(db, self.owner, list(self.processes)):
            logger.warning("deployment %s: another platform took it over; its server here stopped", job_id)
            terminate(self.processes.pop(job_id), timeout=30)

    def _take_over(self, db: Session, row: Job, why: str) -> None:
        """Queue a deployment whose server is gone to be launched again, unless a live platform holds it
        (taking its lease first, so two platforms never both relaunch it, and reading it again under the
        lease: its platform may have marked it failed or deleted it since this poll read it)."""
        if not leases.take_current(db, row, self.owner, ("pending", "ready")):
            return
        job_store.set_status(db, row, "created", "restarting", why, description="restarting")
        logger.warning("deployment %s/%s: %s; launching it again", row.namespace, row.name, why)

    def _delete(self, db: Session, row: Job) -> None:
        """Stop the server and drop the row, on the platform that runs it (or any, once none does)."""
        if row.id not in self.processes and not leases.acquire(db, row.id, self.owner):
            return
        self._stop(db, row.id)
        db.delete(row)
        db.commit()
        logger.info("deployment %s/%s deleted", row.namespace, row.name)

    def _launch(self, db: Session, row: Job) -> None:
        from embedforge.serve.server import free_port

        if not leases.acquire(db, row.id, self.owner):
            return
        if not job_store.claim(db, row):
            leases.release(db, row.id, self.owner)
            return
        workdir = self.workdir(row.id)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "error.json").unlink(missing_ok=True)
        port = free_port()
        spec = {**row.details["work"], "port": port}
        write_json_atomic(workdir / "spec.json", spec)
        self.processes[row.id] = self.spawn("embedforge.platform.jobs.deploy", workdir)
        url = f"http://127.0.0.1:{port}"
        job_store.set_status(
            db, row, "pending", None, None, url=url, description="exporting and starting the server"
        )
        logger.info("deployment %s/%s starting on %s", row.namespace, row.name, url)

    def _stop(self, db: Session, job_id: str) -> None:
        process = self.processes.pop(job_id, None)
        if process is not None:
            terminate(process, timeout=30)
        leases.release(db, job_id, self.owner)

    def stop_all(self, db: Session) -> None:
        """Stop our servers and release their leases: another platform relaunches them at once."""
        for job_id in list(self.processes):
            self._stop(db, job_id)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _reason(code: int, workdir: Path) -> str:
    return failure_reason(code, workdir, "the server process")
