"""The evaluator through the real SDK: targets whose API keys are kept apart and answered masked (yet
reach the worker), on SQLite and PostgreSQL, and a keyed evaluation of a deployed model."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from tutorial import NS, client_for, retriever_target, wait_deployment, wait_evaluation

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


def test_the_job_uses_the_stored_key_and_never_shows_it(keyed):
    client, job = _evaluate(keyed, "keyed", KEY)
    assert job.status == "completed", job.status_details  # the gateway refuses a call without KEY
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
