"""The data store and entity store through the tutorial's real clients: huggingface_hub, requests, the SDK."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import requests
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from nemo_microservices import NeMoMicroservices

ROWS = [{"query": f"question {i}", "pos_doc": f"answer {i}", "neg_doc": [f"other {i}"]} for i in range(3)]


@pytest.fixture(scope="module")
def uploaded(platform, tmp_path_factory):
    """The tutorial's notebook 2, steps 1-4: namespaces, a dataset repo with two files, the dataset entity."""
    client = NeMoMicroservices(base_url=platform.url, inference_base_url=platform.url + "/nim")
    client.namespaces.create(id="embed-sft-ns")
    r = requests.post(f"{platform.url}/v1/datastore/namespaces", data={"namespace": "embed-sft-ns"})
    assert r.status_code == 201, r.text
    api = HfApi(endpoint=f"{platform.url}/v1/hf", token=None)
    repo = api.create_repo("embed-sft-ns/embed-sft-data", repo_type="dataset")
    folder = tmp_path_factory.mktemp("upload")
    (folder / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for split in ("training", "validation"):
        api.upload_file(
            path_or_fileobj=str(folder / "training.jsonl"),
            path_in_repo=f"{split}/{split}.jsonl",
            repo_id="embed-sft-ns/embed-sft-data",
            repo_type="dataset",
        )
    dataset = client.datasets.create(
        name="embed-sft-data",
        namespace="embed-sft-ns",
        description="Embedding SFT Dataset",
        files_url="hf://datasets/embed-sft-ns/embed-sft-data",
        project="embedding_sft",
    )
    return {"client": client, "api": api, "repo": repo, "dataset": dataset, "folder": folder}


def test_upload_list_and_download_round_trip(platform, uploaded, tmp_path):
    api = uploaded["api"]
    files = api.list_repo_files("embed-sft-ns/embed-sft-data", repo_type="dataset")
    assert sorted(files) == ["training/training.jsonl", "validation/validation.jsonl"]
    local = hf_hub_download(
        "embed-sft-ns/embed-sft-data",
        "validation/validation.jsonl",
        repo_type="dataset",
        endpoint=f"{platform.url}/v1/hf",
        cache_dir=tmp_path,
    )
    assert [json.loads(line) for line in open(local)] == ROWS
    stored = platform.data_dir / "datastore/datasets/embed-sft-ns/embed-sft-data/training/training.jsonl"
    assert stored.read_text() == (uploaded["folder"] / "training.jsonl").read_text()


def test_upload_folder_and_a_second_commit_replaces_files(platform, uploaded, tmp_path):
    api = uploaded["api"]
    api.create_repo("embed-sft-ns/beir-small", repo_type="dataset")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    api.upload_folder(folder_path=str(tmp_path), repo_id="embed-sft-ns/beir-small", repo_type="dataset")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d2", "text": "two"}\n')
    api.upload_file(
        path_or_fileobj=str(tmp_path / "corpus.jsonl"),
        path_in_repo="corpus.jsonl",
        repo_id="embed-sft-ns/beir-small",
        repo_type="dataset",
    )
    assert sorted(api.list_repo_files("embed-sft-ns/beir-small", repo_type="dataset")) == [
        "corpus.jsonl",
        "qrels/test.tsv",
    ]
    stored = platform.data_dir / "datastore/datasets/embed-sft-ns/beir-small/corpus.jsonl"
    assert stored.read_text() == '{"_id": "d2", "text": "two"}\n'


def test_create_repo_twice_is_a_conflict(platform, uploaded):
    with pytest.raises(HfHubHTTPError) as err:
        uploaded["api"].create_repo("embed-sft-ns/embed-sft-data", repo_type="dataset")
    assert err.value.response.status_code == 409
    uploaded["api"].create_repo("embed-sft-ns/embed-sft-data", repo_type="dataset", exist_ok=True)


@pytest.mark.parametrize("path", ["../escape.jsonl", "training/../../escape.jsonl", "/etc/escape.jsonl"])
def test_upload_paths_cannot_leave_the_repo(platform, uploaded, path):
    line = json.dumps({"key": "file", "value": {"path": path, "content": "aGk=", "encoding": "base64"}})
    header = json.dumps({"key": "header", "value": {"summary": "x"}})
    r = httpx.post(
        f"{platform.url}/v1/hf/api/datasets/embed-sft-ns/embed-sft-data/commit/main",
        content=f"{header}\n{line}\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 400, r.text
    assert "repo" in r.json()["detail"]
    assert not (platform.data_dir / "escape.jsonl").exists()
    assert not list(platform.data_dir.parent.glob("escape.jsonl"))


def test_datastore_namespace_and_entities(platform, uploaded):
    client = uploaded["client"]
    r = requests.post(f"{platform.url}/v1/datastore/namespaces", data={"namespace": "embed-sft-ns"})
    assert r.status_code == 409
    r = requests.get(f"{platform.url}/v1/datastore/namespaces/embed-sft-ns")
    assert r.status_code == 200 and r.json()["namespace"] == "embed-sft-ns"
    assert client.namespaces.retrieve("embed-sft-ns").id == "embed-sft-ns"
    dataset = client.datasets.retrieve(dataset_name="embed-sft-data", namespace="embed-sft-ns")
    assert dataset.files_url == "hf://datasets/embed-sft-ns/embed-sft-data"
    assert uploaded["dataset"].id.startswith("dataset-")
    listed = client.datasets.list(filter={"namespace": "embed-sft-ns"})
    assert [d.name for d in listed.data] == ["embed-sft-data"]


def test_unknown_fields_are_422_with_their_path(platform):
    r = httpx.post(
        f"{platform.url}/v1/datasets", json={"name": "x", "files_url": "hf://datasets/a/b", "colour": 1}
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "colour"]


def test_minilm_is_a_target_and_a_model_at_start(platform, uploaded):
    client = uploaded["client"]
    target = client.customization.targets.retrieve(
        target_name="all-MiniLM-L6-v2", namespace="sentence-transformers"
    )
    assert target.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert target.num_parameters == 22713728 and target.enabled
    model = client.models.retrieve(model_name="all-MiniLM-L6-v2", namespace="sentence-transformers")
    assert model.spec.is_embedding_model and model.spec.dims == 384


def lfs_upload_url(url: str, repo: str, oid: str, size: int, headers=None) -> str:
    """The signed upload URL the git-lfs batch call hands out for one object."""
    body = {"operation": "upload", "objects": [{"oid": oid, "size": size}], "transfers": ["basic"]}
    r = httpx.post(f"{url}/v1/hf/datasets/{repo}.git/info/lfs/objects/batch", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["objects"][0]["actions"]["upload"]["href"]


def test_an_lfs_upload_with_the_wrong_content_is_refused(platform, uploaded):
    oid = hashlib.sha256(b"promised").hexdigest()
    href = lfs_upload_url(platform.url, "embed-sft-ns/embed-sft-data", oid, 8)
    r = httpx.put(href, content=b"delivered")
    assert r.status_code == 400 and "sha256" in r.json()["detail"]
    assert not (platform.data_dir / "datastore" / "lfs" / oid).exists()
