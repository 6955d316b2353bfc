"""The platform with ``--executor ray``: its jobs run as Ray jobs on a real two-node cluster on loopback.

The tutorial's flow through the real SDK, cancel and logs through Ray's Job Submission API, a platform
restarted mid-job that re-attaches to its running Ray job, a worker node killed mid-job (the job runs
again on a replacement node from its last checkpoint), and the bad inputs: an unreachable Ray address, a
job asking for a GPU the cluster does not have. The jobs train a tiny random BERT, one CPU each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from openai import OpenAI
from platform_proc import PlatformProcess
from ray.job_submission import JobStatus, JobSubmissionClient
from tutorial import (
    NS,
    client_for,
    create_config,
    deploy,
    evaluate,
    start_job,
    upload_dataset,
    wait_job,
)

from domain_fixture import make_domain_fixture
from ray_cluster import free_port

pytestmark = pytest.mark.slow
TINY = "local/tiny-bert"
PENDING_SECONDS = 30  # how long a job no node can take stays pending before it fails (the GPU test waits it)
REPLACEMENT_SECONDS = 300  # the dead-node test's retry waits this long for its replacement node to start


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return make_domain_fixture(
        tmp_path_factory.mktemp("domain"), train_pairs=64, val_pairs=8, test_queries=12
    )


def _ray_platform(
    platform_factory, ray_cluster, tiny_model, domain, data_dir=None, resources=None, pending=PENDING_SECONDS
):
    env = {"EMBEDFORGE_RAY_PENDING_SECONDS": str(pending)}
    if resources:
        env["EMBEDFORGE_RAY_RESOURCES"] = json.dumps(resources)
    proc = platform_factory(
        "sqlite",
        base_models=[tiny_model],
        data_dir=data_dir,
        extra_args=["--executor", "ray", "--ray-address", ray_cluster.address],
        extra_env=env,
    ).start()
    files = {"training/training.jsonl": domain["train"], "validation/validation.jsonl": domain["val"]}
    upload_dataset(proc.url, "good", files)
    create_config(proc.url, "tiny@v1", target=TINY, num_gpus=0)
    create_config(proc.url, "tiny-gpu@v1", target=TINY, num_gpus=1)
    return proc


@pytest.fixture(scope="module")
def plat(platform_factory, ray_cluster, tiny_model, domain):
    return _ray_platform(platform_factory, ray_cluster, tiny_model, domain)


def _ray_job(ray_cluster, submission_id: str):
    return JobSubmissionClient(ray_cluster.address).get_job_info(submission_id)


def _entrypoint_resources(ray_cluster, submission_id: str) -> dict:
    """What the Ray job asked its node for: the resources of the actor that runs its entrypoint (Ray's
    ``JobDetails`` leaves out the ``entrypoint_num_*`` a job was submitted with)."""
    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE
    from ray.util.state import list_actors

    name = JOB_ACTOR_NAME_TEMPLATE.format(job_id=submission_id)
    actors = list_actors(address=ray_cluster.address, filters=[("name", "=", name)], detail=True)
    assert len(actors) == 1, actors
    return actors[0].required_resources


def test_the_cluster_listens_on_loopback_only(ray_cluster):
    listening = ray_cluster.listeners()
    assert listening, "no listening socket found for the cluster's processes"
    assert all(a.removeprefix("::ffff:").startswith("127.") for a in listening), listening


def test_tutorial_flow_runs_its_jobs_on_ray(plat, ray_cluster, domain):
    job = start_job(plat.url, f"{NS}/tiny@v1", "good", "on-ray", epochs=1, batch_size=16)
    done = wait_job(plat.url, job.id)
    assert done.status == "completed", done.status_details.status_logs
    log = plat.data_dir / "customization" / job.id / "train_log.jsonl"  # written on the Ray node
    last = json.loads(log.read_text().splitlines()[-1])
    assert done.status_details.steps_completed == last["step"] >= 1
    assert done.status_details.percentage_done == 100.0
    assert f"Ray job {job.id}" in [log.detail for log in done.status_details.status_logs]
    info = _ray_job(ray_cluster, job.id)  # the platform's job id is the Ray submission id
    assert info.status == JobStatus.SUCCEEDED
    assert _entrypoint_resources(ray_cluster, job.id) == {"CPU": 1.0}  # the config's num_gpus: 0, no GPU
    logs = httpx_get(f"{plat.url}/v1/customization/jobs/{job.id}/container-logs")["data"]
    assert any(f"Running entrypoint for job {job.id}" in line for line in logs)  # Ray's own line
    assert any(" INFO " in line for line in logs)  # the worker's own log lines

    deployment = deploy(plat.url, done.output_model, "ray-deploy")
    assert deployment.status_details.status == "ready", deployment.status_details
    texts = ["a brisk tavomir", "replace the intake filter"]
    served = OpenAI(base_url=plat.url + "/nim/v1", api_key="none").embeddings.create(
        input=texts, model=f"{NS}/on-ray"
    )
    assert np.array([d.embedding for d in served.data]).shape[0] == 2

    beir = domain["test_beir"]
    from huggingface_hub import HfApi

    HfApi(endpoint=f"{plat.url}/v1/hf").create_repo(f"{NS}/ray-beir", repo_type="dataset")
    HfApi(endpoint=f"{plat.url}/v1/hf").upload_folder(
        folder_path=str(beir), repo_id=f"{NS}/ray-beir", repo_type="dataset"
    )
    evaluation, results = evaluate(plat.url, f"{NS}/on-ray", f"hf://datasets/{NS}/ray-beir")
    assert evaluation.status == "completed", evaluation.status_details
    assert _ray_job(ray_cluster, evaluation.id).status == JobStatus.SUCCEEDED
    score = results.tasks["my-beir-task"].metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"].value
    assert 0.0 <= score <= 1.0


def httpx_get(url: str) -> dict:
    import httpx

    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_cancel_stops_the_ray_job(plat, ray_cluster):
    job = start_job(plat.url, f"{NS}/tiny@v1", "good", "ray-cancel", epochs=50, batch_size=8)
    wait_job(plat.url, job.id, until=lambda j: (j.status_details.steps_completed or 0) >= 1)
    client_for(plat.url).customization.jobs.cancel(job.id)
    done = wait_job(plat.url, job.id)
    assert done.status == "cancelled"
    assert done.status_details.percentage_done < 100
    stopped = wait_for(lambda: _ray_job(ray_cluster, job.id).status.is_terminal())
    assert stopped and _ray_job(ray_cluster, job.id).status == JobStatus.STOPPED


def wait_for(condition, timeout: float = 120) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def test_a_job_asking_for_a_gpu_the_cluster_lacks_fails_with_the_reason(plat):
    job = start_job(plat.url, f"{NS}/tiny-gpu@v1", "good", "needs-gpu")
    done = wait_job(plat.url, job.id, timeout=PENDING_SECONDS * 4)
    assert done.status == "failed"
    detail = done.status_details.status_logs[-1].detail
    assert f"took the job within {PENDING_SECONDS} s" in detail and "1 GPU" in detail, detail


def test_the_local_executor_does_not_import_ray(tmp_path):
    code = (
        "import sys; from embedforge.platform.settings import Settings; "
        "from embedforge.platform.app import create_app; "
        "from embedforge.platform.jobs.executors import executor_for; "
        f"assert executor_for(Settings.from_env({str(tmp_path)!r})).name == 'local'; "
        "print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "False", result.stderr


def test_an_unreachable_ray_address_stops_the_platform_at_start(tmp_path):
    address = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "embedforge.cli", "platform", "serve", "--data-dir", str(tmp_path)]
        + ["--port", str(free_port()), "--executor", "ray", "--ray-address", address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: cannot reach the Ray cluster at {address}" in result.stderr


def test_a_restarted_platform_reattaches_to_its_running_ray_job(
    platform_factory, ray_cluster, tiny_model, domain, tmp_path
):
    first = _ray_platform(platform_factory, ray_cluster, tiny_model, domain, data_dir=tmp_path / "data")
    job = start_job(first.url, f"{NS}/tiny@v1", "good", "outlives", epochs=12, batch_size=8)
    wait_job(first.url, job.id, until=lambda j: (j.status_details.steps_completed or 0) >= 2)
    first.stop()
    assert _ray_job(ray_cluster, job.id).status == JobStatus.RUNNING  # the Ray job did not stop with it
    second = PlatformProcess(
        first.data_dir, base_models=[tiny_model], extra_args=first.extra_args, extra_env=first.extra_env
    ).start()
    try:
        done = wait_job(second.url, job.id)
        assert done.status == "completed", done.status_details.status_logs
        messages = [log.message for log in done.status_details.status_logs]
        assert "reattached" in messages and "resumed" not in messages
        assert _ray_job(ray_cluster, job.id).status == JobStatus.SUCCEEDED
        with pytest.raises(RuntimeError):  # submitted once: there is no second attempt
            _ray_job(ray_cluster, f"{job.id}-attempt2")
        log = first.data_dir / "customization" / job.id / "train_log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        steps = [r["step"] for r in records if "loss" in r]  # one training-loss record a logged step
        assert steps == list(range(1, len(steps) + 1))  # one run from step 1 to the end: never restarted
    finally:
        second.stop()


def test_a_dead_worker_node_is_replaced_and_the_job_resumes_from_its_checkpoint(
    platform_factory, ray_cluster, tiny_model, domain, tmp_path
):
    node = ray_cluster.add_node(resources={"spare": 1})
    proc = _ray_platform(
        platform_factory, ray_cluster, tiny_model, domain, resources={"spare": 1}, pending=REPLACEMENT_SECONDS
    )
    job = start_job(proc.url, f"{NS}/tiny@v1", "good", "survives-node", epochs=2, batch_size=8)
    workdir = proc.data_dir / "customization" / job.id
    saved = lambda j: any((workdir / "checkpoints").glob("checkpoint-*/trainer_state.json"))  # noqa: E731
    wait_job(proc.url, job.id, until=saved)
    ray_cluster.kill_node(node)
    checkpoint_step = max(
        int(p.parent.name.split("-")[1]) for p in workdir.glob("checkpoints/*/trainer_state.json")
    )
    retrying = wait_job(
        proc.url, job.id, until=lambda j: "retrying" in [log.message for log in j.status_details.status_logs]
    )
    assert retrying.status in ("created", "pending", "running")
    replacement = ray_cluster.add_node(resources={"spare": 1})
    try:
        done = wait_job(proc.url, job.id)
        assert done.status == "completed", done.status_details.status_logs
        assert _ray_job(ray_cluster, f"{job.id}-attempt2").status == JobStatus.SUCCEEDED
        steps = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
        assert steps.count(1) == 1  # the second attempt started from a checkpoint, not from step 0
        assert done.status_details.steps_completed == steps[-1] > checkpoint_step
    finally:
        ray_cluster.kill_node(replacement)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EMBEDFORGE_EXECUTOR", "kubernetes"),
        ("EMBEDFORGE_RAY_RESOURCES", "{trainer: 1"),
        ("EMBEDFORGE_RAY_CPUS", "two"),
        ("EMBEDFORGE_RAY_PENDING_SECONDS", "soon"),
    ],
)
def test_bad_executor_settings_name_the_variable(monkeypatch, tmp_path, name, value):
    from embedforge.platform.errors import BadRequest
    from embedforge.platform.settings import Settings

    monkeypatch.setenv("EMBEDFORGE_RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setenv("EMBEDFORGE_EXECUTOR", "ray")
    monkeypatch.setenv(name, value)
    with pytest.raises(BadRequest) as err:
        Settings.from_env(tmp_path)
    assert name in str(err.value)
