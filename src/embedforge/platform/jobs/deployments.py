"""Deployments: a child process per deployment (export once, then ``embedforge serve`` on a free loopback
port), watched by the job runner: created -> pending -> ready | failed; ``deleting`` stops it.

The routing table (served model name -> server URL) lives here, so the NIM gateway answers from memory.
On start-up, deployments that were pending or ready are launched again from their kept export.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from embedforge.atomic import write_json_atomic
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


class Deployments:
    def __init__(self, settings: Settings, spawn):
        self.settings, self.spawn = settings, spawn
        self.processes: dict[str, subprocess.Popen] = {}
        self.routes: dict[str, str] = {}  # served model name -> server URL, only while ready
        self._route_of: dict[str, str] = {}  # deployment id -> served model name

    def workdir(self, job_id: str) -> Path:
        return self.settings.data_dir / KIND / job_id

    def rows(self, db: Session) -> list[Job]:
        return list(db.scalars(select(Job).where(Job.kind == KIND, Job.status.in_(LIVE))))

    def recover(self, db: Session) -> None:
        for row in self.rows(db):
            if row.status == "deleting":
                db.delete(row)
                db.commit()
            elif row.status in ("pending", "ready"):
                job_store.set_status(
                    db, row, "created", "restarting", "the platform restarted", description="restarting"
                )

    def tick(self, db: Session) -> None:
        for row in self.rows(db):
            process = self.processes.get(row.id)
            if row.status == "deleting":
                self._stop(row.id)
                db.delete(row)
                db.commit()
                logger.info("deployment %s/%s deleted", row.namespace, row.name)
            elif row.status == "created":
                self._launch(db, row)
            elif process is None:
                job_store.set_status(
                    db, row, "failed", "failed", "its server is gone", description="its server is gone"
                )
            elif process.poll() is not None:
                self._stop(row.id)
                reason = _reason(process.returncode, self.workdir(row.id))
                job_store.set_status(db, row, "failed", "failed", reason, description=reason)
                logger.error("deployment %s/%s failed: %s", row.namespace, row.name, reason)
            elif row.status == "pending" and _ready(row.details["url"]):
                self.routes[row.details["served_model_name"]] = row.details["url"]
                self._route_of[row.id] = row.details["served_model_name"]
                job_store.set_status(db, row, "ready", "ready", None, description="the model is served")
                logger.info("deployment %s/%s ready at %s", row.namespace, row.name, row.details["url"])

    def _launch(self, db: Session, row: Job) -> None:
        from embedforge.serve.server import free_port

        if not job_store.claim(db, row):
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

    def _stop(self, job_id: str) -> None:
        process = self.processes.pop(job_id, None)
        name = self._route_of.pop(job_id, None)
        if name is not None:
            self.routes.pop(name, None)
        if process is not None:
            terminate(process, timeout=30)

    def stop_all(self) -> None:
        for job_id in list(self.processes):
            self._stop(job_id)
        self.routes.clear()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _reason(code: int, workdir: Path) -> str:
    return failure_reason(code, workdir, "the server process")
