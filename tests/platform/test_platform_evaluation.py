"""The evaluator through the real SDK: targets whose API keys are kept apart and answered masked (yet
reach the worker), on SQLite and PostgreSQL; a keyed evaluation of a deployed model, its result entity,
archives and deletion, read with pydantic's serializer warnings turned into errors."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import warnings
import zipfile
from datetime import datetime, timezone

import httpx
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from huggingface_hub import HfApi
from nemo_microservices import ConflictError, NotFoundError, UnprocessableEntityError
from tutorial import NS, client_for, retriever_target, wait_deployment, wait_evaluation

from embedforge.platform.store import MIGRATIONS, make_engine
from embedforge.platform.store.models import Entity

TINY = "local/tiny-bert"
KEY = "platform-key-0123456789"  # the platform's own API key, which its /nim gateway demands
TARGET_KEY = "endpoint-key-abcdefgh-7f3e"


def _masked(target: dict) -> list[str]:
    pipeline = target["retriever"]["pipeline"]
    return [
        pipeline[m]["api_endpoint"]["api_key"] for m in ("query_embedding_model", "index_embedding_model")
    ]


def test_a_targets_api_key_is_answered_masked(platform):
    client = client_for(platform.url)
    body = retriever_target(platform.url, f"{NS}/any", api_key=TARGET_KEY)
    created = client.evaluation.targets.create(**body, namespace=NS, name="masked")
    endpoint = created.retriever.pipeline.query_embedding_model.api_endpoint
    assert endpoint.api_key == "****" + TARGET_KEY[-4:]
    for answer in (
        httpx.get(f"{platform.url}/v1/evaluation/targets/{NS}/masked"),
        httpx.get(f"{platform.url}/v1/evaluation/targets", params={"filter[namespace]": NS}),
    ):
        assert answer.status_code == 200 and TARGET_KEY not in answer.text and "****7f3e" in answer.text
    assert _masked(httpx.get(f"{platform.url}/v1/evaluation/targets/{NS}/masked").json()) == ["****7f3e"] * 2
    short = client.evaluation.targets.create(
        **retriever_target(platform.url, f"{NS}/any", api_key="abc123"), namespace=NS, name="short"
    )
    assert (
        short.retriever.pipeline.query_embedding_model.api_endpoint.api_key == "****"
    )  # no tail of a short key
    empty = client.evaluation.targets.create(
        **retriever_target(platform.url, f"{NS}/any"), namespace=NS, name="open"
    )
    assert empty.retriever.pipeline.query_embedding_model.api_endpoint.api_key == ""  # nothing to hide


def test_keys_stored_before_the_upgrade_are_moved_apart(platform_factory, tmp_path):
    """A database at revision 0001 (keys inside bodies): the platform's start migrates them out."""
    data = tmp_path / "data"
    data.mkdir()
    engine = make_engine(f"sqlite:///{data / 'platform.db'}")
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    body = {
        **retriever_target("http://127.0.0.1:9", TINY, api_key=TARGET_KEY),
        "name": "old",
        "namespace": NS,
    }
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0001")
        now = datetime.now(timezone.utc)
        row = {"kind": "evaluation_target", "namespace": NS, "name": "old", "body": body}
        connection.execute(
            Entity.__table__.insert().values(id="eval-target-old", created_at=now, updated_at=now, **row)
        )
    engine.dispose()
    plat = platform_factory("sqlite", data_dir=data).start()
    target = httpx.get(f"{plat.url}/v1/evaluation/targets/{NS}/old").json()
    assert _masked(target) == ["****" + TARGET_KEY[-4:]] * 2
    with sqlite3.connect(data / "platform.db") as db:
        (stored,) = db.execute("SELECT body FROM entities WHERE id = 'eval-target-old'").fetchone()
        kept = db.execute("SELECT owner_id, value FROM secrets").fetchall()
    assert TARGET_KEY not in stored and kept == [("eval-target-old", TARGET_KEY)] * 2


@pytest.fixture(scope="module")
def keyed(platform_factory, tiny_model):
    """A platform that demands KEY, serving the tiny model, with a one-query BEIR folder."""
    plat = platform_factory("sqlite", api_key=KEY, base_models=[tiny_model]).start()
    auth = {"Authorization": f"Bearer {KEY}"}
    client_for(plat.url, KEY).deployment.model_deployments.create(
        name="tiny", namespace=NS, config={"model": TINY}
    )
    assert wait_deployment(plat.url, "tiny", headers=auth)["status_details"]["status"] == "ready"
    beir = plat.data_dir / "beir" / "tiny"
    (beir / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "text": text} for i, text in enumerate(["the cat", "a dog", "the bird"])]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "cat"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    return plat


CONFIG = {
    "type": "retriever",
    "namespace": NS,
    "tasks": {
        "tiny": {
            "type": "beir",
            "dataset": {"files_url": "file://tiny/"},
            "metrics": {"recall_5": {"type": "recall_5"}, "ndcg_cut_5": {"type": "ndcg_cut_5"}},
        }
    },
}


def _evaluate(plat, target_name: str, key: str):
    client = client_for(plat.url, KEY)
    client.evaluation.targets.create(
        **retriever_target(plat.url, TINY, api_key=key), namespace=NS, name=target_name
    )
    job = client.evaluation.jobs.create(namespace=NS, config=CONFIG, target=f"{NS}/{target_name}")
    return client, wait_evaluation(client, job.id)


@pytest.fixture(scope="module")
def finished(keyed):
    """An evaluation of the tiny deployment through the keyed gateway, run to its end."""
    client, job = _evaluate(keyed, "keyed", KEY)
    assert job.status == "completed", job.status_details  # the gateway refuses a call without KEY
    return client, job


def test_the_job_uses_the_stored_key_and_never_shows_it(keyed, finished):
    _, job = finished
    auth = {"Authorization": f"Bearer {KEY}"}
    shown = httpx.get(f"{keyed.url}/v1/evaluation/jobs/{job.id}", headers=auth).text
    assert KEY not in shown and "****" in shown
    workdir = keyed.data_dir / "evaluation" / job.id
    for written in workdir.iterdir():
        assert KEY not in written.read_text(errors="replace"), written.name
    with sqlite3.connect(keyed.data_dir / "platform.db") as db:
        bodies = " ".join(
            str(b) for (b,) in db.execute("SELECT body FROM entities UNION ALL SELECT body FROM jobs")
        )
        kept = db.execute("SELECT path, value FROM secrets WHERE value = ?", (KEY,)).fetchall()
    assert KEY not in bodies
    assert sorted(path for path, _ in kept) == [
        f"retriever.pipeline.{m}.api_endpoint.api_key"
        for m in ("index_embedding_model", "query_embedding_model")
    ]


def test_a_wrong_stored_key_fails_the_job_with_the_gateways_401(keyed):
    _, job = _evaluate(keyed, "wrong-key", "not-the-key-at-all")
    assert job.status == "failed"
    assert "401" in job.status_details.to_dict()["status_logs"][-1]["detail"]


def _in_the_store(plat, name: str) -> dict:
    """The config with its task's BEIR folder uploaded to the data store as dataset repo NS/name."""
    api = HfApi(endpoint=f"{plat.url}/v1/hf", token=KEY)
    api.create_repo(f"{NS}/{name}", repo_type="dataset", exist_ok=True)
    api.upload_folder(
        folder_path=str(plat.data_dir / "beir" / "tiny"), repo_id=f"{NS}/{name}", repo_type="dataset"
    )
    task = {**CONFIG["tasks"]["tiny"], "dataset": {"files_url": f"hf://datasets/{NS}/{name}"}}
    return {**CONFIG, "tasks": {"tiny": task}}


def test_a_data_store_dataset_is_fetched_by_the_worker_and_scores_as_the_folder(keyed, finished):
    client, by_folder = finished
    job = client.evaluation.jobs.create(
        namespace=NS, config=_in_the_store(keyed, "tiny-beir"), target=f"{NS}/keyed"
    )
    done = wait_evaluation(client, job.id)
    assert done.status == "completed", done.status_details
    assert (
        client.evaluation.jobs.results(job.id).to_dict()["tasks"]
        == client.evaluation.jobs.results(by_folder.id).to_dict()["tasks"]
    )
    workdir = keyed.data_dir / "evaluation" / job.id
    spec = (workdir / "spec.json").read_text()
    assert json.loads(spec)["tasks"]["tiny"]["dataset"] == f"hf://datasets/{NS}/tiny-beir"
    assert str(keyed.data_dir / "datastore") not in spec and "beir_dir" not in spec and KEY not in spec
    copied = workdir / "datasets" / "0" / "queries.jsonl"
    assert copied.read_bytes() == (keyed.data_dir / "beir" / "tiny" / "queries.jsonl").read_bytes()


def test_an_evaluation_dataset_missing_from_the_store_fails_naming_the_repo(keyed, finished):
    client, _ = finished
    config = _in_the_store(keyed, "tiny-beir")
    config["tasks"]["tiny"]["dataset"] = {"files_url": f"hf://datasets/{NS}/not-there"}
    done = wait_evaluation(
        client, client.evaluation.jobs.create(namespace=NS, config=config, target=f"{NS}/keyed").id
    )
    assert done.status == "failed"
    detail = done.status_details.to_dict()["status_logs"][-1]["detail"]
    assert detail.startswith(
        f"cannot fetch the dataset repo {NS}/not-there from the data store at {keyed.url}/v1/hf: "
    )


def test_a_files_url_the_platform_cannot_read_fails_the_job_at_once(keyed, finished):
    client, _ = finished
    task = {**CONFIG["tasks"]["tiny"], "dataset": {"files_url": "s3://bucket/beir"}}
    job = client.evaluation.jobs.create(
        namespace=NS, config={**CONFIG, "tasks": {"tiny": task}}, target=f"{NS}/keyed"
    )
    done = wait_evaluation(client, job.id)
    assert done.status == "failed"
    assert (
        "files_url 's3://bucket/beir' must start with hf:// or file://"
        in done.status_details.to_dict()["status_logs"][-1]["detail"]
    )


def test_a_finished_job_names_its_result_and_the_sdk_reads_it_without_warnings(finished):
    client, job = finished
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. pydantic's "Expected `str` but got `dict`" on a dump
        job = client.evaluation.jobs.retrieve(job.id)
        job.model_dump()
        job.to_json()
        assert isinstance(job.result, str) and job.result.startswith("evaluation_result-")
        by_job = client.evaluation.jobs.results(job.id)
        by_id = client.evaluation.results.retrieve(job.result)
        listed = client.evaluation.results.list(filter={"job_id": job.id})
        by_job.model_dump(), by_id.model_dump(), listed.to_dict()
        status = client.evaluation.jobs.status(job.id)
        status.model_dump()
    assert by_job.id == by_id.id == job.result and by_job.job == by_id.job == job.id
    assert [r.id for r in listed.data] == [job.result]
    scores = by_id.tasks["tiny"].metrics
    assert scores["retriever.recall_5"].scores["recall_5"].value == 1.0  # 3 passages: all in the top 5
    assert 0.0 < scores["retriever.ndcg_cut_5"].scores["ndcg_cut_5"].value <= 1.0
    assert by_job.tasks == by_id.tasks
    assert status.progress == 100.0 and status.task_status == {"tiny": "completed"}


def _unzip(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_results_and_logs_download_as_zips(finished):
    client, job = finished
    results = client.evaluation.jobs.download_results(job.id)
    assert results.headers["content-type"] == "application/zip"
    files = _unzip(results.read())
    assert sorted(files) == ["results.json", "spec.json", "worker.log"]
    assert (
        json.loads(files["results.json"])["tasks"]
        == client.evaluation.jobs.results(job.id).to_dict()["tasks"]
    )
    assert KEY.encode() not in files["spec.json"] and json.loads(files["spec.json"])["job_id"] == job.id
    logs = _unzip(client.evaluation.jobs.with_raw_response.download_logs(job.id).read())
    assert list(logs) == ["worker.log"] and logs["worker.log"] == files["worker.log"]


def test_results_of_an_unfinished_job_are_422(keyed):
    client = client_for(keyed.url, KEY)
    job = client.evaluation.jobs.create(
        namespace=NS, config=CONFIG, target=retriever_target("http://127.0.0.1:9", TINY)
    )
    done = wait_evaluation(client, job.id)
    assert done.status == "failed" and done.result is None
    with pytest.raises(UnprocessableEntityError):
        client.evaluation.jobs.results(job.id)


def test_deleting_a_job_keeps_its_result_until_that_is_deleted(keyed):
    client, job = _evaluate(keyed, "to-delete", KEY)
    assert job.status == "completed", job.status_details
    client.evaluation.jobs.delete(job.id)
    with pytest.raises(NotFoundError):
        client.evaluation.jobs.retrieve(job.id)
    assert not (keyed.data_dir / "evaluation" / job.id).exists()
    assert client.evaluation.results.retrieve(job.result).job == job.id
    client.evaluation.results.delete(job.result)
    with pytest.raises(NotFoundError):
        client.evaluation.results.retrieve(job.result)
    assert not client.evaluation.results.list(filter={"job_id": job.id}).data


def test_a_running_job_is_not_deleted_until_cancelled(keyed):
    """The target's endpoint accepts connections and never answers, so the worker stays running."""
    client = client_for(keyed.url, KEY)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        job = client.evaluation.jobs.create(
            namespace=NS, config=CONFIG, target=retriever_target(endpoint, TINY)
        )
        running = wait_evaluation(client, job.id, until=lambda j: j.status == "running")
        assert running.status == "running"
        with pytest.raises(ConflictError):
            client.evaluation.jobs.delete(job.id)
        client.evaluation.jobs.cancel(job.id)
        assert wait_evaluation(client, job.id).status == "cancelled"
    client.evaluation.jobs.delete(job.id)
    with pytest.raises(NotFoundError):
        client.evaluation.jobs.retrieve(job.id)
