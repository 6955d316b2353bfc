"""Deployments and the evaluator beyond the happy path: a model that cannot be exported, a ready deployment
brought back by a restarted platform, errors passed through the gateway, malformed evaluation requests and
an evaluation target that does not answer."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from nemo_microservices import NeMoMicroservices
from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI
from platform_proc import PlatformProcess
from tutorial import MINILM, NS, client_for, evaluate, wait_deployment

pytestmark = pytest.mark.slow
TINY = "local/tiny-bert"  # an operator's --base-model folder: exports and serves in seconds, unlike MiniLM


@pytest.fixture(scope="module")
def plat(platform_factory, tmp_path_factory, tiny_model):
    data_dir = tmp_path_factory.mktemp("deploy") / "data"
    return platform_factory("sqlite", data_dir=data_dir, base_models=[tiny_model]).start()


def test_a_model_that_cannot_be_exported_fails_its_deployment_with_the_reason(plat):
    empty = plat.data_dir / "not-a-model"
    empty.mkdir()
    client = client_for(plat.url)
    client.models.create(name="broken", namespace=NS, artifact={"files_url": f"file://{empty}"})
    client.deployment.model_deployments.create(name="broken", namespace=NS, config={"model": f"{NS}/broken"})
    deployment = wait_deployment(plat.url, "broken")
    assert deployment["status_details"]["status"] == "failed"
    assert deployment["status_details"]["description"].startswith("export failed: ")


def test_deployment_requests_name_their_bad_field(plat):
    r = httpx.post(
        f"{plat.url}/v1/deployment/model-deployments",
        json={"name": "x", "namespace": NS, "config": {"model": "nope/nope"}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "model"]
    r = httpx.post(
        f"{plat.url}/v1/deployment/configs",
        json={"name": "x", "model": MINILM, "nim_deployment": {"gpus": 1}},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "nim_deployment", "gpus"]


def test_evaluation_requests_name_their_bad_field(plat):
    endpoint = {"api_endpoint": {"url": "http://127.0.0.1:9/v1/embeddings", "model_id": "m"}}
    target = {"type": "retriever", "retriever": {"pipeline": {"query_embedding_model": endpoint}}}
    task = {"type": "beir", "dataset": {"files_url": "file://x/"}, "metrics": {"mrr": {"type": "reciprocal"}}}
    body = {"config": {"type": "retriever", "tasks": {"t": task}}, "target": target}
    r = httpx.post(f"{plat.url}/v1/evaluation/jobs", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "config", "tasks", "t", "metrics", "mrr", "type"]
    r = httpx.post(f"{plat.url}/v1/evaluation/jobs", json={**body, "target": {**target, "kind": "x"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "target", "kind"]


def test_an_evaluation_of_a_model_nobody_serves_fails_with_the_reason(plat):
    beir = plat.data_dir / "beir" / "tiny"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    job, results = evaluate(plat.url, f"{NS}/not-deployed", "file://tiny/")
    assert job.status == "failed" and results is None
    last = job.status_details.to_dict()["status_logs"][-1]
    assert "404" in last["detail"] and "not-deployed" in last["detail"]  # the gateway's answer, passed on


def test_a_ready_deployment_comes_back_after_a_restart_without_a_second_export(plat, tiny_model):
    client = client_for(plat.url)
    client.deployment.model_deployments.create(name="base", namespace=NS, config={"model": TINY})
    assert wait_deployment(plat.url, "base")["status_details"]["status"] == "ready"
    before = OpenAI(base_url=plat.url + "/nim/v1", api_key="none").embeddings.create(
        input=["vacuum"], model=TINY
    )
    plat.stop(signal.SIGTERM)

    again = PlatformProcess(plat.data_dir, base_models=[tiny_model]).start()
    try:
        deployment = wait_deployment(again.url, "base")
        assert deployment["status_details"]["status"] == "ready"
        gateway = OpenAI(base_url=again.url + "/nim/v1", api_key="none")
        after = gateway.embeddings.create(input=["vacuum"], model=TINY)
        assert after.data[0].embedding == pytest.approx(before.data[0].embedding, abs=1e-6)
        log = (again.data_dir / "deployment" / deployment["id"] / "worker.log").read_text()
        assert log.count("to ONNX") == 1  # the kept export was served again
        with pytest.raises(BadRequestError):  # the deployment's own 400 passes through the gateway
            gateway.embeddings.create(input=[], model=TINY)
        client_for(again.url).deployment.model_deployments.delete(deployment_name="base", namespace=NS)
        for _ in range(60):  # the runner stops the server at its next poll
            gone = httpx.post(f"{again.url}/nim/v1/embeddings", json={"model": TINY, "input": ["x"]})
            if gone.status_code == 404:
                break
            time.sleep(1)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    finally:
        again.stop()


def test_the_nim_port_is_the_same_gateway_at_v1(platform_factory, tmp_path_factory, tiny_model):
    """``--nim-port``: a tutorial's separate NIM_URL reaches the same deployments, under the same key."""
    key = "nim-key"
    plat = platform_factory(
        "sqlite",
        api_key=key,
        data_dir=tmp_path_factory.mktemp("nim") / "data",
        base_models=[tiny_model],
        nim_port=True,
    ).start()
    auth = {"Authorization": f"Bearer {key}"}
    client = NeMoMicroservices(base_url=plat.url, default_headers=auth)
    client.deployment.model_deployments.create(name="nim", namespace=NS, config={"model": TINY})
    assert wait_deployment(plat.url, "nim", headers=auth)["status_details"]["status"] == "ready"

    gateway = OpenAI(base_url=plat.url + "/nim/v1", api_key=key)
    nim = OpenAI(base_url=plat.nim_url, api_key=key)
    assert [m.id for m in nim.models.list().data] == [m.id for m in gateway.models.list().data] == [TINY]
    texts = ["vacuum pump", "the filter"]
    direct = gateway.embeddings.create(input=texts, model=TINY)
    served = nim.embeddings.create(input=texts, model=TINY)
    assert served.model == TINY and len(served.data) == 2
    for a, b in zip(served.data, direct.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)

    with pytest.raises(NotFoundError) as err:
        nim.embeddings.create(input=["x"], model=f"{NS}/nope")
    assert err.value.status_code == 404 and err.value.body["code"] == "model_not_found"
    assert TINY in err.value.body["message"]  # the ready models are named
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=plat.nim_url, api_key="wrong").models.list()
    root = plat.nim_url.removesuffix("/v1")
    assert httpx.get(root + "/v1/health/ready").status_code == 200  # open, as on the platform port
    assert httpx.get(root + "/v1/namespaces", headers=auth).status_code == 404  # only the NIM surface
