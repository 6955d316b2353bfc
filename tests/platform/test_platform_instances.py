"""Two platform processes on one PostgreSQL database and one data folder: a job runs once, on whichever
instance leases it first; when that instance is killed, its lease expires and the other takes the job
over and resumes it. A deployment is served by one instance and reached through either; the other
relaunches it once its instance dies. Two teams run NVIDIA's tutorial at once, one through each instance:
every job runs once, nothing is failed, resumed or taken over, and both instances list every row.
Leases last 15 s here (``EMBEDFORGE_LEASE_SECONDS``) so the takeover is quick."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from platform_proc import PlatformProcess
from sqlalchemy import select
from tutorial import (
    NS,
    client_for,
    create_config,
    deploy,
    evaluate,
    start_job,
    upload_dataset,
    wait_deployment,
    wait_job,
)

from domain_fixture import make_domain_fixture
from embedforge.data.formats import read_beir
from embedforge.evaluate.retrieval import evaluate_dataset
from embedforge.models.bi_encoder import BiEncoder
from embedforge.platform.store import make_engine
from embedforge.platform.store.models import JobLease

TINY = "local/tiny-bert"


@pytest.fixture()
def instances(postgres, tiny_model, tmp_path, monkeypatch):
    """Two platforms on one fresh PostgreSQL database and one data folder."""
    monkeypatch.setenv("EMBEDFORGE_LEASE_SECONDS", "15")
    url = postgres.create_database(f"instances_{os.getpid()}_{time.monotonic_ns()}")
    data = tmp_path / "data"
    data.mkdir()
    procs = []
    for name in ("a", "b"):  # one after the other: each start runs the migrations
        proc = PlatformProcess(data, url, base_models=[tiny_model])
        proc.log = tmp_path / f"{name}.log"
        procs.append(proc.start())
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture()
def pair(instances, tmp_path):
    """The two platforms with a training dataset and a config of the tiny model."""
    domain = make_domain_fixture(tmp_path / "domain", train_pairs=48, val_pairs=8, test_queries=8)
    upload_dataset(instances[0].url, "good", {"training/training.jsonl": domain["train"]})
    create_config(instances[0].url, "tiny@v1", target=TINY)
    return instances


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


def _embed(proc, texts: list[str], model: str = TINY) -> httpx.Response:
    return httpx.post(f"{proc.url}/nim/v1/embeddings", json={"model": model, "input": texts}, timeout=60)


def _lease(proc, job_id: str) -> tuple[int, object] | None:
    """The pid of the instance holding the job's lease, and when the lease expires."""
    engine = make_engine(proc.database_url)
    try:
        with engine.connect() as db:
            lease = db.execute(select(JobLease).where(JobLease.job_id == job_id)).first()
    finally:
        engine.dispose()
    return None if lease is None else (int(lease.owner.split(":")[1]), lease.expires_at)


def _deployment(proc) -> dict:
    return httpx.get(f"{proc.url}/v1/deployment/model-deployments/{NS}/shared", timeout=30).json()


def _poll(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_deployment_is_served_through_both_instances_and_relaunched_when_its_instance_dies(pair):
    client_for(pair[0].url).deployment.model_deployments.create(
        name="shared", namespace=NS, config={"model": TINY}
    )
    deployment = wait_deployment(pair[0].url, "shared")
    assert deployment["status_details"]["status"] == "ready", deployment["status_details"]
    holder = _lease(pair[0], deployment["id"])[0]  # whichever instance polled first runs the server
    runs, other = pair if holder == pair[0].process.pid else pair[::-1]
    assert runs.process.pid == holder and f"{NS}/shared starting on" not in other.log_text()
    texts = ["vacuum pump", "the filter"]
    direct, proxied = _embed(runs, texts), _embed(other, texts)  # other has no server: it proxies
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert proxied.json()["data"] == direct.json()["data"]
    assert httpx.get(f"{other.url}/nim/v1/models").json()["data"][0]["id"] == TINY

    renewals = set()  # the server's instance renews its lease every poll; the other polls as often

    def polled_and_still_ready():
        holder, expires = _lease(runs, deployment["id"])
        assert holder == runs.process.pid and _deployment(other)["status_details"]["status"] == "ready"
        assert _embed(other, texts).status_code == 200
        renewals.add(expires)
        return len(renewals) >= 5

    _poll(polled_and_still_ready, "five renewals of the lease", timeout=120)
    assert f"{NS}/shared starting on" not in other.log_text()  # no second server

    runs.stop(signal.SIGKILL)  # its server dies with it (lifeline); the other relaunches it after the lease

    def relaunched():  # the takeover is logged once the row is back to created; then it must become ready
        taken = f"{NS}/shared: its platform stopped; launching it again" in other.log_text()
        return taken and _deployment(other)["status_details"]["status"] == "ready"

    _poll(relaunched, "the other instance to relaunch the deployment")
    assert _lease(other, deployment["id"])[0] == other.process.pid
    again = _embed(other, texts).json()["data"]
    for before, after in zip(direct.json()["data"], again, strict=True):
        assert after["embedding"] == pytest.approx(before["embedding"], abs=1e-6)
    log = (other.data_dir / "deployment" / deployment["id"] / "worker.log").read_text()
    assert log.count("to ONNX") == 1  # the kept export was served again


TEAMS = ("team-a", "team-b")
INTERRUPTED = {"failed", "resumed", "retrying", "reattached", "restarting"}  # status log messages
ALARMS = (" ERROR ", "Traceback", "took it over", "platform stopped", "platform running it stopped")  # logs


def _tutorial(proc, other, namespace: str, domain: dict) -> dict:
    """NVIDIA's tutorial in its own namespace: the data, a config, a customization and a deployment of its
    model sent to PROC, the training watched and the evaluation run through OTHER."""
    beir = domain["test_beir"]
    training = {"training/training.jsonl": domain["train"], "validation/validation.jsonl": domain["val"]}
    upload_dataset(proc.url, "sft-data", training, namespace)
    beir_files = {str(f.relative_to(beir)): f for f in sorted(beir.rglob("*")) if f.is_file()}
    upload_dataset(proc.url, "beir", beir_files, namespace)
    config = create_config(proc.url, "tiny@v1", target=TINY, namespace=namespace)
    job = start_job(proc.url, config, "sft-data", "tuned", namespace=namespace, batch_size=8)
    trained = wait_job(other.url, job.id, timeout=1800)  # a shared machine trains slowly
    assert trained.status == "completed", trained.status_details
    deployment = deploy(proc.url, trained.output_model, "tuned", namespace=namespace)
    assert deployment.status_details.status == "ready", deployment.status_details
    files = f"hf://datasets/{namespace}/beir"
    evaluation, results = evaluate(other.url, f"{namespace}/tuned", files, namespace=namespace)
    assert evaluation.status == "completed", evaluation.status_details
    return {"job": trained, "evaluation": evaluation, "results": results}


def _messages(proc, path: str) -> list[str]:
    """A job's status log, read through PROC as JSON (the SDK's evaluation job model has no such field)."""
    details = httpx.get(proc.url + path, timeout=30).raise_for_status().json()["status_details"]
    return [log["message"] for log in details["status_logs"]]


def _sees_everything(proc, runs: list[dict]) -> None:
    """PROC lists both teams' rows, each once, and the results either instance wrote."""
    client = client_for(proc.url)
    assert set(TEAMS) <= {n.id for n in client.namespaces.list(page_size=100).data}
    for team, run in zip(TEAMS, runs, strict=True):
        datasets = client.datasets.list(filter={"namespace": team}, page_size=100).data
        assert sorted(d.name for d in datasets) == ["beir", "sft-data"]
        models = client.models.list(filter={"namespace": team}, page_size=100).data
        assert [f"{team}/{m.name}" for m in models] == [run["job"].output_model]
        deployment = client.deployment.model_deployments.retrieve(deployment_name="tuned", namespace=team)
        assert deployment.status_details.status == "ready" and deployment.models == [f"{team}/tuned"]
        results = client.evaluation.jobs.results(run["evaluation"].id)
        assert results.model_dump() == run["results"].model_dump()
    jobs = client.customization.jobs.list(page_size=100).data
    assert sorted(j.id for j in jobs) == sorted(run["job"].id for run in runs)
    evaluations = client.evaluation.jobs.list(page_size=100).data
    assert sorted(j.id for j in evaluations) == sorted(run["evaluation"].id for run in runs)


def _offline_ndcg(proc, job, domain: dict) -> float:
    """nDCG@10 of the job's model folder on the test set, computed here without the platform."""
    namespace, name = job.output_model.split("/", 1)
    model = client_for(proc.url).models.retrieve(model_name=name, namespace=namespace)
    encoder = BiEncoder.load(model.artifact.files_url.removeprefix("file://"))
    scores = evaluate_dataset(encoder, read_beir(domain["test_beir"]), ks=(10,), progress=False)
    return scores["metrics"]["ndcg@10"]


def test_two_instances_run_the_tutorial_side_by_side(instances, tmp_path):
    domain = make_domain_fixture(tmp_path / "domain", train_pairs=16, val_pairs=8, test_queries=8)
    a, b = instances
    with ThreadPoolExecutor(2) as pool:  # both tutorials at once, their calls interleaved on both instances
        runs = list(pool.map(_tutorial, (a, b), (b, a), TEAMS, (domain, domain)))
    for run in runs:  # each job's worker started once, by one instance, and nothing failed or resumed
        assert _worker_starts(run["job"]) == 1
        for job_id, path in ((run["job"].id, "customization"), (run["evaluation"].id, "evaluation")):
            assert sum(p.log_text().count(f"job {job_id} started") for p in instances) == 1
            messages = [_messages(p, f"/v1/{path}/jobs/{job_id}") for p in instances]
            assert messages[0] == messages[1] and messages[0][-1] in ("TrainingJobCompleted", "completed")
            assert not INTERRUPTED & set(messages[0]), messages[0]
        ndcg = run["results"].tasks["my-beir-task"].metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"]
        assert ndcg.value == pytest.approx(_offline_ndcg(a, run["job"], domain), abs=0.01)  # its own model
    for team in TEAMS:  # one server per deployment, reached through either instance
        assert sum(f"deployment {team}/tuned starting on" in p.log_text() for p in instances) == 1
        texts = ["a brisk tavomir on Ridge pump RX-41", "replace the intake filter"]
        answers = [_embed(p, texts, f"{team}/tuned") for p in instances]
        assert [r.status_code for r in answers] == [200, 200], answers[1].text
        assert answers[0].json()["data"] == answers[1].json()["data"] and len(answers[0].json()["data"]) == 2
    for proc in instances:
        _sees_everything(proc, runs)
        log = proc.log_text()
        for alarm in ALARMS:
            assert alarm not in log, log
