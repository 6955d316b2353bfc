"""Where a job's worker runs: a child process of the platform (``local``) or a job on a Ray cluster (``ray``).

The runner sees one interface. ``start`` runs ``python -m MODULE WORKDIR`` and returns a handle;
``attach`` finds the worker a previous platform process started (a Ray job outlives its platform, a
child process does not); ``logs`` reads what the worker printed. A handle answers ``poll`` (None while
running, else an exit code), ``reason`` (why it failed), ``stop``, and ``retryable`` (the worker's node
died rather than the worker failing). Ray is imported only when the ray executor is chosen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from embedforge.errors import EmbedforgeError
from embedforge.platform.jobs.lifeline import platform_lifeline
from embedforge.platform.jobs.resources import Resources
from embedforge.platform.jobs.worker import failure_reason
from embedforge.platform.settings import Settings


def submission_id(job_id: str, attempt: int) -> str:
    """The executor's id for one attempt: the job id, then ``<id>-attempt<N>`` for each retry."""
    return job_id if attempt <= 1 else f"{job_id}-attempt{attempt}"


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


def terminate(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LocalHandle:
    def __init__(self, process: subprocess.Popen, workdir: Path):
        self.process, self.workdir = process, workdir
        self.label = f"worker pid {process.pid}"
        self.details = {"worker_pid": process.pid}

    def started(self) -> float | None:
        try:
            return psutil.Process(self.process.pid).create_time()
        except psutil.Error:
            return None

    def running(self) -> bool:
        return True

    def poll(self) -> int | None:
        return self.process.poll()

    def reason(self, code: int) -> str:
        return failure_reason(code, self.workdir)

    def retryable(self, _code: int) -> bool:
        return False

    def stop(self) -> None:
        terminate(self.process)


class LocalExecutor:
    name = "local"

    def start(self, module: str, workdir: Path, env: dict, resources: Resources, submission_id: str):
        return LocalHandle(spawn(module, workdir, env), workdir)

    def attach(self, _row, _workdir: Path):
        """A child process dies with its platform: there is nothing to re-attach to."""
        return None

    def logs(self, _row, workdir: Path) -> list[str] | None:
        log = workdir / "worker.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else None

    def keep_logs(self, _row, _workdir: Path) -> None:
        """The log is in the job's folder already."""

    def close(self) -> None:
        pass


def executor_for(settings: Settings):
    """The settings' executor; the ray one checks at once that its cluster answers."""
    if settings.executor == "ray":
        try:
            from embedforge.platform.jobs.ray_executor import RayExecutor
        except ImportError as err:
            raise EmbedforgeError(f"--executor ray needs Ray: pip install 'embedforge[ray]' ({err})") from err
        return RayExecutor(settings)
    return LocalExecutor()
