"""The job runner: a thread in the platform process that turns job rows into worker processes.

Each poll it (1) claims ``created`` jobs while a slot is free and starts a worker for each, (2) reads
each worker's progress into the database and logs one progress line per change, (3) stops workers of
jobs being cancelled, and (4) marks finished workers completed or failed (with the worker's error, or
the signal that killed it). Each job it runs holds a lease (``leases``), so several platforms on one
database run it once. Local workers die with their platform (``lifeline``); a job left ``pending`` /
``running`` by a platform that stopped, or whose lease expired, is taken over: re-attached when it
still runs on a Ray cluster, else queued again with ``resume`` (the finetune stage continues from its
last checkpoint), up to ``MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.orm import sessionmaker

from embedforge.atomic import write_json_atomic
from embedforge.errors import EmbedforgeError
from embedforge.platform.jobs import customization, evaluation, leases
from embedforge.platform.jobs import store as job_store
from embedforge.platform.jobs.deployments import Deployments
from embedforge.platform.jobs.executors import LocalExecutor, executor_for, spawn, submission_id
from embedforge.platform.jobs.resources import Resources
from embedforge.platform.settings import Settings

logger = logging.getLogger("embedforge.platform.jobs")
MAX_ATTEMPTS = 3
KINDS = {"customization": customization, "evaluation": evaluation}  # jobs that run one worker to its end
SLOTS = {"customization": 1, "evaluation": 1}
ORPHANED = ("pending", "running", "cancelling")  # statuses a job whose runner is gone is taken over in


__all__ = ["JobRunner", "spawn"]


@dataclass
class Worker:
    handle: object  # an executor's handle (executors.LocalHandle, ray_executor.RayHandle)
    workdir: Path
    last_line: str = ""


class JobRunner:
    def __init__(self, sessions: sessionmaker, settings: Settings):
        self.sessions, self.settings = sessions, settings
        self.workers: dict[str, Worker] = {}
        self.executor = executor_for(settings)
        self.owner = leases.new_owner()  # this process's name on the job leases it holds
        self.deployments = Deployments(settings, spawn, self.owner)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="embedforge-job-runner", daemon=True)
        self._lock = threading.Lock()

    def workdir(self, kind: str, job_id: str) -> Path:
        return self.settings.data_dir / kind / job_id

    def logs(self, row) -> list[str] | None:
        """What the job's worker printed, or None before it has printed anything."""
        workdir = self.workdir(row.kind, row.id)
        return self.executor.logs(row, workdir) or LocalExecutor().logs(row, workdir)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and stop the workers; their jobs stay active and resume on the next start."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.executor.name == "local":  # a Ray job outlives its platform; the next one re-attaches
            for worker in self.workers.values():
                worker.handle.stop()
        with self.sessions() as db:  # another platform may take the jobs over at once
            for job_id in self.workers:
                leases.release(db, job_id, self.owner)
            self.deployments.stop_all(db)
        self.workers.clear()

    def recover(self) -> None:
        """Take over the jobs no live platform holds: re-attach to those still running on a Ray cluster
        (they outlive their platform), requeue the others (a child process dies with its platform)."""
        with self.sessions() as db:
            self.deployments.recover(db)
            for row in job_store.active(db):
                if row.kind in KINDS and not leases.held_elsewhere(db, row.id, self.owner):
                    self._take_over(db, row)

    def _take_over(self, db, row) -> None:
        """A job whose runner is gone (this platform before a restart, or another whose lease expired)."""
        if row.status == "created" or not leases.take_current(db, row, self.owner, ORPHANED):
            return
        workdir = self.workdir(row.kind, row.id)
        worker = _our_worker(row, workdir)
        if worker is not None:  # it outlived its platform (it should not: see lifeline)
            worker.kill()
        handle = self.executor.attach(row, workdir)
        if handle is not None:  # the tick watches it, under the lease just taken
            self.workers[row.id] = Worker(handle, workdir)
            job_store.set_status(db, row, None, "reattached", f"its platform stopped; {handle.label}")
            logger.info("job %s: re-attached to %s", row.id, handle.label)
            return
        if row.status == "cancelling":
            job_store.set_status(db, row, "cancelled", "cancelled", "the platform stopped while cancelling")
        else:
            self._requeue(db, row, "resumed", "the platform running it stopped")
        leases.release(db, row.id, self.owner)  # any platform may start the queued job

    def _requeue(self, db, row, log: str, why: str) -> None:
        """Queue an interrupted job again, to continue from its last checkpoint; fail it once it has used
        up its attempts."""
        if row.attempts >= MAX_ATTEMPTS:
            job_store.set_status(db, row, "failed", "failed", f"{why}; gave up after {row.attempts} attempts")
            return
        row.status = "created"
        detail = f"{why}; continuing from the last checkpoint"
        job_store.set_status(db, row, "created", log, detail, resume=True)
        logger.warning("job %s: %s", row.id, detail)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.tick()
            except Exception:  # a bad poll must not end the runner; the next one retries
                logger.exception("job runner poll failed")

    # --------------------------------------------------------------------------------------- a poll

    def tick(self) -> None:
        with self._lock, self.sessions() as db:
            self.deployments.tick(db)
            self._renew_leases(db)
            for row in job_store.active(db):
                if row.kind not in KINDS:
                    continue
                worker = self.workers.get(row.id)
                if (
                    worker is None
                    and row.status != "created"
                    and leases.held_elsewhere(db, row.id, self.owner)
                ):
                    continue  # another platform runs it (and cancels it)
                if row.status == "cancelling":
                    if worker:
                        worker.handle.stop()
                        self.workers.pop(row.id)
                    job_store.set_status(db, row, "cancelled", "cancelled", "the worker was stopped")
                    logger.info("job %s cancelled", row.id)
                elif worker is not None:
                    self._watch(db, row, worker)
                elif row.status == "created" and self._free_slot(row.kind):
                    self._start(db, row)
                elif row.status in ("pending", "running"):  # its runner is gone: its lease expired
                    self._take_over(db, row)

    def _renew_leases(self, db) -> None:
        """Keep our jobs' leases alive; stop the workers of any another platform took over (this one
        stalled past the lease)."""
        for job_id in leases.renew(db, self.owner, list(self.workers)):
            logger.warning("job %s: another platform took it over (this one stalled); worker stopped", job_id)
            self.workers.pop(job_id).handle.stop()

    def _free_slot(self, kind: str) -> bool:
        busy = sum(1 for job_id, w in self.workers.items() if w.workdir.parent.name == kind)
        return busy < SLOTS.get(kind, 1)

    def _start(self, db, row) -> None:
        if not leases.acquire(db, row.id, self.owner):
            return
        if not job_store.claim(db, row):
            leases.release(db, row.id, self.owner)
            return
        kind = KINDS[row.kind]
        workdir = self.workdir(row.kind, row.id)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "error.json").unlink(missing_ok=True)
        attempt = row.attempts + 1
        resources = Resources(float(row.details["work"].get("num_gpus") or 0), self.settings.ray_cpus)
        try:  # a spec the platform cannot write (e.g. a files_url it cannot read) fails the job
            write_json_atomic(workdir / "spec.json", kind.worker_spec(self.settings, row, workdir))
            handle = self.executor.start(
                "embedforge.platform.jobs.worker",
                workdir,
                kind.worker_env(self.settings, db, row),
                resources,
                submission_id(row.id, attempt),
            )
        except EmbedforgeError as err:  # or the Ray cluster stopped answering
            leases.release(db, row.id, self.owner)
            job_store.set_status(db, row, "failed", "failed", str(err))
            logger.error("job %s failed to start: %s", row.id, err)
            return
        self.workers[row.id] = Worker(handle, workdir)
        row.worker_pid = handle.details.get("worker_pid")
        row.attempts = attempt
        ids = {k: v for k, v in handle.details.items() if k != "worker_pid"}
        status, message = ("running", _running_message(row.kind)) if handle.running() else ("pending", None)
        job_store.set_status(db, row, status, message, handle.label, worker_started=handle.started(), **ids)
        logger.info("job %s started: %s, attempt %d", row.id, handle.label, row.attempts)

    def _watch(self, db, row, worker: Worker) -> None:
        kind = KINDS[row.kind]
        code = worker.handle.poll()
        if code is None and row.status == "pending" and worker.handle.running():
            job_store.set_status(db, row, "running", _running_message(row.kind), worker.handle.label)
        fields = kind.progress(row, worker.workdir)
        if fields:
            job_store.set_status(db, row, **fields)
            line = _progress_line(row.id, fields)
            if line != worker.last_line:
                logger.info("%s", line)
                worker.last_line = line
        if code is None:
            return
        self.workers.pop(row.id)
        self.executor.keep_logs(row, worker.workdir)
        db.refresh(row)
        try:
            self._finish(db, row, worker, code)
        finally:  # only once the job's end is written: another platform must not take it over before
            leases.release(db, row.id, self.owner)

    def _finish(self, db, row, worker: Worker, code: int) -> None:
        """Write the end of a job whose worker exited with CODE: cancelled, completed, queued or failed."""
        kind = KINDS[row.kind]
        if row.status == "cancelling":
            job_store.set_status(db, row, "cancelled", "cancelled", "the worker was stopped")
            return
        if code == 0:
            try:
                extra = kind.finish(db, row, worker.workdir)
            except Exception as err:  # e.g. a model folder the worker did not leave
                job_store.set_status(db, row, "failed", "failed", f"finishing the job: {err}")
                logger.error("job %s failed while finishing: %s", row.id, err)
                return
            done = {"percentage_done": 100.0} if row.kind == "customization" else {}
            job_store.set_status(db, row, "completed", _done_message(row.kind), None, **done, **extra)
            logger.info("job %s completed", row.id)
            return
        reason = worker.handle.reason(code)
        if worker.handle.retryable(code):
            self._requeue(db, row, "retrying", reason)
            return
        job_store.set_status(db, row, "failed", "failed", reason)
        logger.error("job %s failed: %s", row.id, reason)


def _running_message(kind: str) -> str:
    return "TrainingJobRunning" if kind == "customization" else "running"


def _done_message(kind: str) -> str:
    return "TrainingJobCompleted" if kind == "customization" else "completed"


def _progress_line(job_id: str, fields: dict) -> str:
    parts = [f"job {job_id}: {fields.get('percentage_done', fields.get('progress', 0)):.0f}%"]
    if fields.get("steps_completed") is not None:
        parts.append(f"step {fields['steps_completed']}")
    if fields.get("train_loss") is not None:
        parts.append(f"train_loss {fields['train_loss']:.4f}")
    return ", ".join(parts)


def _our_worker(row, workdir: Path) -> psutil.Process | None:
    """The job's worker process if it still runs: the recorded pid, started at the recorded time (a
    reused pid was started later) and with WORKDIR on its command line; None otherwise."""
    if not row.worker_pid:
        return None
    started = row.details.get("worker_started")
    try:
        process = psutil.Process(row.worker_pid)
        if started is not None and abs(process.create_time() - started) > 0.01:
            return None
        return process if str(workdir) in process.cmdline() else None
    except psutil.Error:
        return None
