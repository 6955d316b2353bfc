"""The platform's guards: the optional API key, the body size limit, and checkpoints a killed worker left
half-written."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import httpx
import pytest
import requests
from huggingface_hub import HfApi, hf_hub_download
from nemo_microservices import AuthenticationError, NeMoMicroservices

from embedforge.platform.jobs.worker import drop_incomplete_checkpoints

KEY = "s3cret"


@pytest.fixture(scope="module")
def guarded(platform_factory):
    os.environ["EMBEDFORGE_MAX_BODY_BYTES"] = "100000"
    try:
        return platform_factory("sqlite", api_key=KEY).start()
    finally:
        del os.environ["EMBEDFORGE_MAX_BODY_BYTES"]


def test_every_call_but_health_needs_the_key(guarded):
    assert httpx.get(f"{guarded.url}/health").status_code == 200
    r = httpx.get(f"{guarded.url}/v1/namespaces")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert (
        httpx.get(f"{guarded.url}/v1/namespaces", headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    with pytest.raises(AuthenticationError):
        NeMoMicroservices(base_url=guarded.url).namespaces.list()
    NeMoMicroservices(
        base_url=guarded.url, default_headers={"Authorization": f"Bearer {KEY}"}
    ).namespaces.create(id="ns")
    assert (
        httpx.post(f"{guarded.url}/nim/v1/embeddings", json={"model": "x", "input": "y"}).status_code == 401
    )


def test_the_hub_client_passes_the_key_as_its_token(guarded, tmp_path):
    api = HfApi(endpoint=f"{guarded.url}/v1/hf", token=KEY)
    api.create_repo("ns/data", repo_type="dataset")
    (tmp_path / "a.jsonl").write_text("{}\n")
    api.upload_file(
        path_or_fileobj=str(tmp_path / "a.jsonl"),
        path_in_repo="a.jsonl",
        repo_id="ns/data",
        repo_type="dataset",
    )
    assert api.list_repo_files("ns/data", repo_type="dataset") == ["a.jsonl"]


def test_files_too_big_for_a_commit_body_go_through_git_lfs(guarded, tmp_path, monkeypatch):
    """Over the body limit a file cannot travel inline; a client without hf_xet sends it with git-lfs."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    api = HfApi(endpoint=f"{guarded.url}/v1/hf", token=KEY)
    api.create_repo("ns/big", repo_type="dataset")
    big = tmp_path / "corpus.bin"
    big.write_bytes(hashlib.sha256(b"seed").digest() * 8000)  # 256 kB against a 100 kB body limit
    api.upload_file(
        path_or_fileobj=str(big), path_in_repo="data/corpus.bin", repo_id="ns/big", repo_type="dataset"
    )
    oid = hashlib.sha256(big.read_bytes()).hexdigest()
    assert (guarded.data_dir / "datastore" / "lfs" / oid).exists()  # it came through the signed LFS PUT
    local = hf_hub_download(
        "ns/big",
        "data/corpus.bin",
        repo_type="dataset",
        endpoint=f"{guarded.url}/v1/hf",
        token=KEY,
        cache_dir=tmp_path / "c",
    )
    assert hashlib.sha256(open(local, "rb").read()).hexdigest() == oid
    r = httpx.put(f"{guarded.url}/v1/hf/lfs-objects/{oid}", content=b"x")  # no signature
    assert r.status_code == 401 and "signature" in r.json()["detail"]


def test_a_body_over_the_limit_is_413(guarded):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/x-ndjson"}
    r = httpx.post(
        f"{guarded.url}/v1/hf/api/datasets/ns/data/commit/main", content=b"x" * 100_001, headers=headers
    )
    assert r.status_code == 413 and "100000" in r.json()["detail"]


def _chunks(size: int, chunk: int = 8192):
    """A body sent with Transfer-Encoding: chunked (a generator has no length to declare)."""
    for start in range(0, size, chunk):
        yield b"x" * min(chunk, size - start)


def test_a_chunked_body_over_the_limit_is_cut_off_at_the_limit(guarded):
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/x-ndjson"}
    HfApi(endpoint=f"{guarded.url}/v1/hf", token=KEY).create_repo(
        "ns/chunked", repo_type="dataset", exist_ok=True
    )
    commit = f"{guarded.url}/v1/hf/api/datasets/ns/chunked/commit/main"
    r = requests.post(commit, data=_chunks(150_000), headers=headers, timeout=30)
    assert r.request.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert "exceeds the limit of 100000" in r.json()["detail"]
    # a body FastAPI parses itself (its own answer to a failed read would be a 400)
    body = json.dumps({"id": "n" * 120_000}).encode()
    r = requests.post(
        f"{guarded.url}/v1/namespaces",
        data=iter([body[:50_000], body[50_000:]]),
        headers={**headers, "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and "100000" in r.json()["detail"]
    # the server answers the next request, and a chunked body under the limit goes through
    content = base64.b64encode(b"y" * 30_000).decode()
    lines = [
        {"key": "header", "value": {"summary": "chunked", "description": ""}},
        {"key": "file", "value": {"path": "small.txt", "encoding": "base64", "content": content}},
    ]
    ndjson = "".join(json.dumps(line) + "\n" for line in lines).encode()
    r = requests.post(commit, data=iter([ndjson[:20_000], ndjson[20_000:]]), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    listed = HfApi(endpoint=f"{guarded.url}/v1/hf", token=KEY).list_repo_files(
        "ns/chunked", repo_type="dataset"
    )
    assert listed == ["small.txt"]


def test_half_saved_checkpoints_are_dropped_before_a_resume(tmp_path):
    for step, complete in ((10, True), (20, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert drop_incomplete_checkpoints(tmp_path) == ["checkpoint-20"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-10"]
