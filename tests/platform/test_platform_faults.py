"""Customization faults on a real platform: a bad training row, malformed job bodies, cancel, a worker
killed from outside, and the platform killed mid-job and started again (on PostgreSQL: the killed
platform's connections die with it, the job's row still says "running").

The jobs train a tiny random BERT (offered to the platform as an operator's ``--base-model`` folder), so
they are long in steps but short in seconds.
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import psutil
import pytest
from nemo_microservices import UnprocessableEntityError
from platform_proc import PlatformProcess
from tutorial import NS, client_for, create_config, start_job, upload_dataset, wait_job, worker_pid

from domain_fixture import make_domain_fixture

pytestmark = pytest.mark.slow
TINY = "local/tiny-bert"


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    data = make_domain_fixture(
        tmp_path_factory.mktemp("domain"), train_pairs=300, val_pairs=24, test_queries=20
    )
    bad = data["root"] / "bad.jsonl"
    rows = data["train"].read_text().splitlines()[:5]
    broken = json.loads(rows[2])
    del broken["pos_doc"]
    rows[2] = json.dumps(broken)
    bad.write_text("\n".join(rows) + "\n")
    return {**data, "bad": bad}


@pytest.fixture(scope="module")
def plat(platform_factory, tiny_model, domain):
    proc = platform_factory("sqlite", base_models=[tiny_model]).start()
    files = {"training/training.jsonl": domain["train"], "validation/validation.jsonl": domain["val"]}
    upload_dataset(proc.url, "good", files)
    upload_dataset(
        proc.url, "bad", {"training/part-1.jsonl": domain["train"], "training/part-2.jsonl": domain["bad"]}
    )
    create_config(proc.url, "tiny@v1", target=TINY)
    return proc


def _alive(pid: int) -> bool:
    """A running process; a zombie (dead, not yet reaped by whoever inherited it) counts as dead."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def test_bad_training_row_fails_the_job_naming_file_line_and_field(plat):
    job = start_job(plat.url, f"{NS}/tiny@v1", "bad", "from-bad-data")
    done = wait_job(plat.url, job.id)
    assert done.status == "failed"
    last = done.status_details.status_logs[-1]
    assert last.message == "failed"
    assert last.detail.startswith('training/part-2.jsonl:3: field "pos_doc": ')
    assert not client_for(plat.url).models.list(filter={"namespace": NS}).data


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (
            {"hyperparameters": {"finetuning_type": "all_weights", "epochs": 1, "dropout": 0.1}},
            ["hyperparameters", "dropout"],
        ),
        (
            {"hyperparameters": {"finetuning_type": "lora_merged", "lora": {"rank": 8}}},
            ["hyperparameters", "lora", "rank"],
        ),
        (
            {"hyperparameters": {"finetuning_type": "all_weights", "epochs": "many"}},
            ["hyperparameters", "epochs"],
        ),
        ({"hyperparameters": {"finetuning_type": "lora"}}, ["hyperparameters", "finetuning_type"]),
        (
            {"hyperparameters": {"finetuning_type": "all_weights", "training_type": "dpo"}},
            ["hyperparameters", "training_type"],
        ),
        ({"dataset": {"namespace": NS, "name": "missing"}}, ["dataset"]),
        ({"config": f"{NS}/missing@v1"}, ["config"]),
        ({"colour": "red"}, ["colour"]),
    ],
)
def test_malformed_job_bodies_are_422_naming_the_field(plat, change, loc):
    body = {
        "config": f"{NS}/tiny@v1",
        "dataset": {"namespace": NS, "name": "good"},
        "hyperparameters": {"finetuning_type": "all_weights", "epochs": 1},
        **change,
    }
    r = httpx.post(f"{plat.url}/v1/customization/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][: len(loc) + 1] == ["body", *loc]


def test_the_sdk_sees_a_malformed_body_as_unprocessable(plat):
    with pytest.raises(UnprocessableEntityError):
        client_for(plat.url).customization.jobs.create(
            config=f"{NS}/tiny@v1",
            dataset={"namespace": NS, "name": "good"},
            hyperparameters={"finetuning_type": "all_weights", "lora": {"adapter_dim": 0}},
        )


def test_cancel_stops_the_worker(plat):
    job = start_job(plat.url, f"{NS}/tiny@v1", "good", "to-cancel", epochs=50, batch_size=8)
    running = wait_job(plat.url, job.id, until=lambda j: (j.status_details.steps_completed or 0) >= 1)
    pid = worker_pid(running)
    cancelled = client_for(plat.url).customization.jobs.cancel(job.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_job(plat.url, job.id)
    assert done.status == "cancelled"
    assert not _alive(pid)
    assert done.status_details.percentage_done < 100


def test_a_worker_killed_from_outside_fails_its_job_with_the_reason(plat):
    job = start_job(plat.url, f"{NS}/tiny@v1", "good", "to-kill", epochs=50, batch_size=8)
    running = wait_job(plat.url, job.id, until=lambda j: (j.status_details.steps_completed or 0) >= 1)
    os.kill(worker_pid(running), signal.SIGKILL)
    done = wait_job(plat.url, job.id)
    assert done.status == "failed"
    assert done.status_details.status_logs[-1].detail == "the worker process was killed by SIGKILL"


def test_restart_mid_job_resumes_from_the_last_checkpoint(platform_factory, tiny_model, domain, tmp_path):
    first = platform_factory("postgresql", base_models=[tiny_model], data_dir=tmp_path / "data").start()
    upload_dataset(
        first.url, "good", {"training/training.jsonl": domain["train"], "validation/v.jsonl": domain["val"]}
    )
    create_config(first.url, "tiny@v1", target=TINY)
    job = start_job(first.url, f"{NS}/tiny@v1", "good", "survivor", epochs=2, batch_size=16)
    workdir = first.data_dir / "customization" / job.id
    saved = lambda j: any((workdir / "checkpoints").glob("checkpoint-*/trainer_state.json"))  # noqa: E731
    running = wait_job(first.url, job.id, until=saved)
    pid = worker_pid(running)
    first.stop(signal.SIGKILL)
    checkpoint_step = max(
        int(p.parent.name.split("-")[1]) for p in workdir.glob("checkpoints/*/trainer_state.json")
    )  # no shutdown hook runs: the database still says "running"

    second = PlatformProcess(first.data_dir, first.database_url, base_models=[tiny_model]).start()
    try:
        assert not _alive(pid)  # the worker died with its platform
        done = wait_job(second.url, job.id)
        assert done.status == "completed", done.status_details.status_logs
        messages = [log.message for log in done.status_details.status_logs]
        assert "resumed" in messages and messages[-1] == "TrainingJobCompleted"
        steps = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
        assert steps.count(1) == 1  # the second worker started from a checkpoint, not from step 0
        assert done.status_details.steps_completed == steps[-1] > checkpoint_step
        assert (workdir / "model" / "config.json").exists()
    finally:
        second.stop()


def test_a_list_can_leave_out_loss_curves_and_only_a_finished_job_is_deleted_with_its_folder(plat):
    job = start_job(plat.url, f"{NS}/tiny@v1", "good", "to-delete", epochs=50, batch_size=8)
    wait_job(plat.url, job.id, until=lambda j: bool(_curve(j.status_details.metrics)))
    jobs_url = f"{plat.url}/v1/customization/jobs"
    listed = {"filter[id]": job.id, "search[config_snapshot.base_model]": "TINY-BERT"}
    (full,) = httpx.get(jobs_url, params=listed).json()["data"]
    (light,) = httpx.get(jobs_url, params={**listed, "metrics": "false"}).json()["data"]
    assert full["status_details"]["metrics"]["metrics"]["train_loss"]
    assert "metrics" not in light["status_details"]
    assert light["status_details"]["status_logs"][0]["message"] == "created"
    assert light["hyperparameters"] == full["hyperparameters"]

    refused = httpx.delete(f"{jobs_url}/{job.id}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    client_for(plat.url).customization.jobs.cancel(job.id)
    assert wait_job(plat.url, job.id).status == "cancelled"
    workdir = plat.data_dir / "customization" / job.id
    assert workdir.is_dir()
    assert httpx.delete(f"{jobs_url}/{job.id}").status_code == 204
    assert httpx.get(f"{jobs_url}/{job.id}").status_code == 404
    assert not workdir.exists()


def _curve(metrics) -> list:
    """The train loss points of a job's metrics as the SDK reads them (none before the first log)."""
    return ((metrics.model_dump() if metrics else {}).get("metrics") or {}).get("train_loss") or []
