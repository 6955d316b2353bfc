"""The job runner: a thread in the platform process that turns job rows into worker processes.

Each poll it (1) claims ``created`` jobs while a slot is free and starts a worker for each, (2) reads
each worker's progress into the database and logs one progress line per change, (3) stops workers of
jobs being cancelled, and (4) marks finished workers completed or failed (with the worker's error, or
the signal that killed it). Workers die with the platform (``lifeline``); on the next start
the jobs they left ``pending`` / ``running`` are queued again with ``resume`` (the finetune stage
continues from its last checkpoint), up to ``MAX_ATTEMPTS`` times. Several platforms may share one
database: a runner holds a lease on each job it runs (``leases``) and leaves alone a job whose lease
another one keeps renewing; a job whose lease expired is taken over like one left by a restart.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.orm import sessionmaker

from embedforge.atomic import write_json_atomic
from embedforge.platform.jobs import customization, evaluation, leases
from embedforge.platform.jobs import store as job_store
from embedforge.platform.jobs.deployments import Deployments
from embedforge.platform.jobs.lifeline import platform_lifeline
from embedforge.platform.jobs.worker import failure_reason
from embedforge.platform.settings import Settings

logger = logging.getLogger("embedforge.platform.jobs")
MAX_ATTEMPTS = 3
KINDS = {"customization": customization, "evaluation": evaluation}  # jobs that run one worker to its end
SLOTS = {"customization": 1, "evaluation": 1}


def spawn(module: str, workdir: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m module WORKDIR`` logging to WORKDIR/worker.log, without the platform's API key (a child
    server must not demand it) but with ``extra_env`` (a job's secrets); it holds the platform's lifeline,
    so it exits when the platform dies."""
    line = platform_lifeline()
    env = {k: v for k, v in os.environ.items() if k != "EMBEDFORGE_API_KEY"} | line.child_env()
    with open(workdir / "worker.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, str(workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=(line.read_fd,),
            env={**env, "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})},
        )


@dataclass
class Worker:
    process: subprocess.Popen
    workdir: Path
    last_line: str = ""


class JobRunner:
    def __init__(self, sessions: sessionmaker, settings: Settings):
        self.sessions, self.settings = sessions, settings
        self.workers: dict[str, Worker] = {}
        self.owner = leases.new_owner()  # this process's name on the job leases it holds
        self.deployments = Deployments(settings, spawn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="embedforge-job-runner", daemon=True)
        self._lock = threading.Lock()

    def workdir(self, kind: str, job_id: str) -> Path:
        return self.settings.data_dir / kind / job_id

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and stop the workers; their jobs stay active and resume on the next start."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for worker in self.workers.values():
            _terminate(worker.process)
        with self.sessions() as db:  # another platform may take the jobs over at once
            for job_id in self.workers:
                leases.release(db, job_id, self.owner)
        self.workers.clear()
        self.deployments.stop_all()

    def recover(self) -> None:
        """Requeue the jobs a previous platform process left running (its workers died with it)."""
        with self.sessions() as db:
            self.deployments.recover(db)
            for row in job_store.active(db):
                if row.kind in KINDS and not leases.held_elsewhere(db, row.id, self.owner):
                    self._take_over(db, row)

    def _take_over(self, db, row) -> None:
        """A job whose runner is gone (this platform before a restart, or another whose lease expired):
        queued again to resume, unless it was being cancelled or has been interrupted too often."""
        worker = _our_worker(row, self.workdir(row.kind, row.id))
        if worker is not None:  # it outlived its platform (it should not: see lifeline)
            worker.kill()
        if row.status == "cancelling":
            job_store.set_status(db, row, "cancelled", "cancelled", "the platform stopped while cancelling")
        elif row.status in ("pending", "running") and row.attempts >= MAX_ATTEMPTS:
            reason = f"interrupted {row.attempts} times by platform restarts"
            job_store.set_status(db, row, "failed", "failed", reason)
        elif row.status in ("pending", "running"):
            row.status = "created"
            reason = "the platform running it stopped; continuing from the last checkpoint"
            job_store.set_status(db, row, "created", "resumed", reason, resume=True)

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
            for job_id in leases.renew(db, self.owner, list(self.workers)):
                logger.warning(
                    "job %s: another platform took it over (this one stalled); worker stopped", job_id
                )
                _terminate(self.workers.pop(job_id).process)
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
                        _terminate(worker.process)
                        self.workers.pop(row.id)
                    job_store.set_status(db, row, "cancelled", "cancelled", "the worker was stopped")
                    logger.info("job %s cancelled", row.id)
                elif worker is not None:
                    self._watch(db, row, worker)
                elif row.status == "created" and self._free_slot(row.kind):
                    self._start(db, row)
                elif row.status in ("pending", "running"):  # its runner is gone: its lease expired
                    self._take_over(db, row)

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
        write_json_atomic(workdir / "spec.json", kind.worker_spec(self.settings, row, workdir))
        process = spawn("embedforge.platform.jobs.worker", workdir, kind.worker_env(db, row))
        self.workers[row.id] = Worker(process, workdir)
        row.worker_pid = process.pid
        row.attempts += 1
        message = "TrainingJobRunning" if row.kind == "customization" else "running"
        started = _create_time(process.pid)
        job_store.set_status(db, row, "running", message, f"worker pid {process.pid}", worker_started=started)
        logger.info("job %s started: worker pid %d, attempt %d", row.id, process.pid, row.attempts)

    def _watch(self, db, row, worker: Worker) -> None:
        kind = KINDS[row.kind]
        code = worker.process.poll()
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
        leases.release(db, row.id, self.owner)
        db.refresh(row)
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
        reason = failure_reason(code, worker.workdir)
        job_store.set_status(db, row, "failed", "failed", reason)
        logger.error("job %s failed: %s", row.id, reason)


def _done_message(kind: str) -> str:
    return "TrainingJobCompleted" if kind == "customization" else "completed"


def _progress_line(job_id: str, fields: dict) -> str:
    parts = [f"job {job_id}: {fields.get('percentage_done', fields.get('progress', 0)):.0f}%"]
    if fields.get("steps_completed") is not None:
        parts.append(f"step {fields['steps_completed']}")
    if fields.get("train_loss") is not None:
        parts.append(f"train_loss {fields['train_loss']:.4f}")
    return ", ".join(parts)


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


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
