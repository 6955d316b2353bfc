"""Two platform processes on one PostgreSQL database and one data folder: a job runs once, on whichever
instance leases it first; when that instance is killed, its lease expires and the other takes the job
over and resumes it. Leases last 15 s here (``EMBEDFORGE_LEASE_SECONDS``) so the takeover is quick."""

from __future__ import annotations

import os
import signal
import time

import pytest
from platform_proc import PlatformProcess
from tutorial import NS, client_for, create_config, start_job, upload_dataset, wait_job

from domain_fixture import make_domain_fixture

TINY = "local/tiny-bert"


@pytest.fixture()
def pair(postgres, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_LEASE_SECONDS", "15")
    url = postgres.create_database(f"instances_{os.getpid()}_{time.monotonic_ns()}")
    data = tmp_path / "data"
    data.mkdir()
    procs = []
    for name in ("a", "b"):  # one after the other: each start runs the migrations
        proc = PlatformProcess(data, url, base_models=[tiny_model])
        proc.log = tmp_path / f"{name}.log"
        procs.append(proc.start())
    domain = make_domain_fixture(tmp_path / "domain", train_pairs=48, val_pairs=8, test_queries=8)
    upload_dataset(procs[0].url, "good", {"training/training.jsonl": domain["train"]})
    create_config(procs[0].url, "tiny@v1", target=TINY)
    yield procs
    for proc in procs:
        proc.stop()


def _runners(procs, job_id: str) -> list[int]:
    """Which instances' logs say they started the job's worker."""
    return [i for i, p in enumerate(procs) if f"job {job_id} started" in p.log_text()]


def _worker_starts(job) -> int:
    return sum(1 for log in job.status_details.status_logs if str(log.detail or "").startswith("worker pid "))


def test_a_job_runs_once_on_one_of_two_instances(pair):
    job = start_job(pair[1].url, f"{NS}/tiny@v1", "good", "once", batch_size=16)
    done = wait_job(pair[0].url, job.id, timeout=1800)  # a shared machine trains slowly
    assert done.status == "completed", done.status_details
    assert _worker_starts(done) == 1 and len(_runners(pair, job.id)) == 1
    assert "failed" not in {log.message for log in done.status_details.status_logs}


def test_a_killed_instances_job_is_taken_over_when_its_lease_expires(pair):
    job = start_job(pair[0].url, f"{NS}/tiny@v1", "good", "survivor", epochs=50, batch_size=8)
    running = wait_job(pair[0].url, job.id, until=lambda j: j.status == "running")
    (owner,) = _runners(pair, job.id)
    survivor = pair[1 - owner]
    pair[owner].stop(signal.SIGKILL)
    resumed = wait_job(survivor.url, job.id, until=lambda j: _worker_starts(j) == 2, timeout=300)
    assert _runners(pair, job.id) == [0, 1]  # the survivor started it too, once the lease expired
    messages = [log.message for log in resumed.status_details.status_logs]
    assert "resumed" in messages and "failed" not in messages and running.status == "running"
    client_for(survivor.url).customization.jobs.cancel(job.id)  # 50 epochs: no need to watch them all
    assert wait_job(survivor.url, job.id).status == "cancelled"
