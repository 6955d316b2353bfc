"""The ray executor: each job's worker is a Ray job, submitted with Ray's Job Submission API.

The platform job id is the submission id of the first attempt (``<id>-attempt<N>`` for a retry), so a
restarted platform finds its jobs on the cluster again instead of submitting them twice. The job asks
for the node resources of ``Resources`` (NeMo's ``num_gpus`` -> ``entrypoint_num_gpus``) plus the
operator's custom resources. Ray keeps a job that no node can take ``PENDING``; the platform stops it
after ``ray_pending_seconds`` with a message naming what it asked for, and likewise gives up on a
cluster that stops answering for that long. See https://docs.ray.io/en/latest/cluster/running-applications/job-submission/
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from embedforge.errors import EmbedforgeError
from embedforge.platform.jobs.resources import Resources
from embedforge.platform.settings import Settings

NODE_DIED = "JOB_SUPERVISOR_ACTOR_DIED"  # Ray's error_type when the node running the job went away


class RayUnreachable(EmbedforgeError):
    pass


class RayHandle:
    def __init__(self, executor: RayExecutor, sid: str, workdir: Path, asked: str):
        self.executor, self.sid, self.workdir, self.asked = executor, sid, workdir, asked
        self.label = f"Ray job {sid}"
        self.details = {"submission_id": sid}
        self.info = None
        self.why: str | None = None  # set when the platform itself gave up on the job
        self.unreachable_since: float | None = None

    def started(self) -> float | None:
        return None

    def running(self) -> bool:
        return self.info is not None and self.info.status == JobStatus.RUNNING

    def poll(self) -> int | None:
        limit = self.executor.settings.ray_pending_seconds
        try:
            self.info = self.executor.client.get_job_info(self.sid)
            self.unreachable_since = None
        except (RuntimeError, ConnectionError, OSError) as err:  # the dashboard is down or gone
            self.unreachable_since = self.unreachable_since or time.monotonic()
            if time.monotonic() - self.unreachable_since < limit:
                return None
            self.why = f"lost the Ray cluster at {self.executor.address} for {limit:.0f} s: {err}"
            return 1
        status = self.info.status
        waited = time.time() - (self.info.start_time or 0) / 1000
        if status == JobStatus.PENDING and waited > limit:
            self.stop()
            self.why = (
                f"no node of the Ray cluster at {self.executor.address} took the job within {limit:.0f} s: "
                f"it asks for {self.asked} (Ray: {self.info.message})"
            )
            return 1
        if not status.is_terminal():
            return None
        if status == JobStatus.SUCCEEDED:
            return 0
        if status == JobStatus.STOPPED:
            return -signal.SIGTERM
        return self.info.driver_exit_code or 1

    def reason(self, _code: int) -> str:
        if self.why:
            return self.why
        error = self.workdir / "error.json"
        if error.exists():
            return json.loads(error.read_text())["message"]
        info = self.info
        errors = [line for line in (self.executor.logs_of(self.sid) or []) if " ERROR " in line]
        said = f"; its last error: {errors[-1].split(' ERROR ', 1)[1]}" if errors else ""
        return f"Ray job {self.sid} {info.status.value.lower()}: {info.message}{said}"

    def retryable(self, _code: int) -> bool:
        """The node running the job died (the job did not fail by itself): run it again elsewhere."""
        return self.why is None and self.info is not None and str(self.info.error_type or "") == NODE_DIED

    def stop(self) -> None:
        try:
            self.executor.client.stop_job(self.sid)
        except (RuntimeError, ConnectionError, OSError):
            pass  # already finished, or the cluster is gone: nothing runs there to stop


class RayExecutor:
    name = "ray"

    def __init__(self, settings: Settings):
        self.settings, self.address = settings, settings.ray_address
        try:
            self.client = JobSubmissionClient(self.address)
        except (RuntimeError, ConnectionError, OSError, ValueError) as err:
            raise RayUnreachable(f"cannot reach the Ray cluster at {self.address}: {err}") from err

    def start(self, module: str, workdir: Path, env: dict, resources: Resources, sid: str) -> RayHandle:
        custom = self.settings.ray_resources
        asked = f"{resources.num_cpus:g} CPU, {resources.num_gpus:g} GPU" + (
            f", {json.dumps(custom)}" if custom else ""
        )
        try:
            self.client.submit_job(
                entrypoint=f"python -m {module} {shlex.quote(str(workdir))}",
                submission_id=sid,
                entrypoint_num_cpus=resources.num_cpus,
                entrypoint_num_gpus=resources.num_gpus or None,
                entrypoint_resources=custom or None,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", **env}},
                metadata={"embedforge_workdir": str(workdir)},
            )
        except (RuntimeError, ConnectionError, OSError) as err:
            raise RayUnreachable(f"submitting to the Ray cluster at {self.address} failed: {err}") from err
        return RayHandle(self, sid, workdir, asked)

    def attach(self, row, workdir: Path) -> RayHandle | None:
        """The Ray job a previous platform process submitted for ``row``, if the cluster still knows it."""
        sid = row.details.get("submission_id")
        if not sid:
            return None
        try:
            self.client.get_job_info(sid)
        except (RuntimeError, ConnectionError, OSError):
            return None
        return RayHandle(self, sid, workdir, "its original resources")

    def logs_of(self, sid: str) -> list[str] | None:
        try:
            return self.client.get_job_logs(sid).splitlines()
        except (RuntimeError, ConnectionError, OSError):
            return None

    def logs(self, row, _workdir: Path) -> list[str] | None:
        sid = row.details.get("submission_id")
        return self.logs_of(sid) if sid else None

    def keep_logs(self, row, workdir: Path) -> None:
        """Copy a finished job's Ray logs to WORKDIR/worker.log, where the log downloads read them."""
        lines = self.logs(row, workdir)
        if lines is not None:
            from embedforge.atomic import atomic_write

            with atomic_write(workdir / "worker.log") as tmp:
                Path(tmp).write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        pass
