"""Fifty SDK clients at once, on SQLite and PostgreSQL: each creates, lists, retrieves, updates and deletes
entities and uploads a file into one shared dataset repo, all released together by a barrier. No call
may fail (the clients do not retry, so a 5xx or a "database is locked" would surface), no write may be
lost, and every list must agree with what was written."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from huggingface_hub import HfApi
from nemo_microservices import NeMoMicroservices

CLIENTS = 50
NS = "crowd"
REPO = f"{NS}/shared"


def _client(url: str) -> NeMoMicroservices:
    return NeMoMicroservices(base_url=url, max_retries=0, timeout=120)


def _one_client(url: str, i: int, start: threading.Barrier) -> dict:
    """One client's session; returns what it saw so the test can check it against the store."""
    client, hub = _client(url), HfApi(endpoint=f"{url}/v1/hf", token=None)
    start.wait()
    names = [f"c{i:02d}-{k}" for k in range(3)]
    for name in names:
        client.datasets.create(name=name, namespace=NS, files_url=f"hf://datasets/{REPO}", limit=i)
    client.models.create(name=f"m{i:02d}", namespace=NS, base_model="local/any", description=f"client {i}")
    mine = client.datasets.list(filter={"namespace": NS, "limit": str(i)}, page_size=10)
    got = [client.datasets.retrieve(name, namespace=NS).limit for name in names]
    client.datasets.update(names[1], namespace=NS, description=f"updated by {i}")
    client.datasets.delete(names[2], namespace=NS)
    hub.upload_file(
        path_or_fileobj=f"client {i}\n".encode(),
        path_in_repo=f"parts/{i:02d}.txt",
        repo_id=REPO,
        repo_type="dataset",
    )
    listed = client.datasets.list(filter={"namespace": NS}, page_size=1000)
    return {
        "mine": sorted(d.name for d in mine.data),
        "got": got,
        "listed": {d.name for d in listed.data},
        "total": listed.pagination.total_results,
    }


@pytest.fixture(scope="module")
def crowd(platform):
    client = _client(platform.url)
    client.namespaces.create(id=NS)
    HfApi(endpoint=f"{platform.url}/v1/hf", token=None).create_repo(REPO, repo_type="dataset")
    start = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_one_client, platform.url, i, start) for i in range(CLIENTS)]
        errors = [repr(f.exception()) for f in futures if f.exception() is not None]
        seen = [f.result() for f in futures if f.exception() is None]
    return {"platform": platform, "client": client, "errors": errors, "seen": seen}


def test_no_call_fails(crowd):
    assert crowd["errors"] == []
    log = crowd["platform"].log_text()
    assert "database is locked" not in log and "Traceback" not in log


def test_every_client_read_its_own_writes(crowd):
    for i, seen in enumerate(crowd["seen"]):
        assert seen["mine"] == [f"c{i:02d}-{k}" for k in range(3)]  # listed before its own delete
        assert seen["got"] == [i, i, i]
        own = {f"c{i:02d}-0", f"c{i:02d}-1"}
        assert own <= seen["listed"] and f"c{i:02d}-2" not in seen["listed"]
        assert seen["total"] == len(seen["listed"])


def test_no_write_is_lost(crowd):
    client = crowd["client"]
    listed = client.datasets.list(filter={"namespace": NS}, page_size=1000)
    expected = {f"c{i:02d}-{k}" for i in range(CLIENTS) for k in (0, 1)}
    assert {d.name for d in listed.data} == expected and listed.pagination.total_results == 2 * CLIENTS
    updated = {d.name: d.description for d in listed.data if d.name.endswith("-1")}
    assert updated == {f"c{i:02d}-1": f"updated by {i}" for i in range(CLIENTS)}
    models = client.models.list(filter={"namespace": NS}, page_size=1000)
    assert sorted(m.description for m in models.data) == sorted(f"client {i}" for i in range(CLIENTS))


def test_every_upload_is_in_the_shared_repo(crowd):
    url = crowd["platform"].url
    hub = HfApi(endpoint=f"{url}/v1/hf", token=None)
    files = sorted(hub.list_repo_files(REPO, repo_type="dataset"))
    assert files == [f"parts/{i:02d}.txt" for i in range(CLIENTS)]
    for i in (0, CLIENTS // 2, CLIENTS - 1):
        raw = httpx.get(f"{url}/v1/hf/datasets/{REPO}/resolve/main/parts/{i:02d}.txt")
        assert raw.status_code == 200 and raw.text == f"client {i}\n"
