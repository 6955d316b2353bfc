"""Self-contained workers: a job's worker gets its data from the platform's data store over HTTP (with the
platform's key), not from the platform's disk, so it runs wherever the platform's URL answers; a store the
worker cannot reach, or a repo it does not have, fails the job with a reason naming the URL and the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import HfApi
from pg_server import free_port
from tutorial import NS, client_for, create_config, start_job, upload_dataset, wait_job

from domain_fixture import make_domain_fixture
from embedforge.platform.jobs.store_client import TOKEN_ENV

pytestmark = pytest.mark.slow
TINY = "local/tiny-bert"
KEY = "worker-s3cret"


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return make_domain_fixture(
        tmp_path_factory.mktemp("domain"), train_pairs=16, val_pairs=8, test_queries=10
    )


@pytest.fixture(scope="module")
def keyed(platform_factory, tiny_model, domain):
    """A platform with an API key: the worker must send it to read the dataset."""
    proc = platform_factory("sqlite", api_key=KEY, base_models=[tiny_model]).start()
    files = {"training/training.jsonl": domain["train"], "validation/validation.jsonl": domain["val"]}
    upload_dataset(proc.url, "good", files, key=KEY)
    create_config(proc.url, "tiny@v1", target=TINY, key=KEY)
    return proc


@pytest.fixture(scope="module")
def finished(keyed):
    job = start_job(keyed.url, f"{NS}/tiny@v1", "good", "from-the-store", key=KEY, batch_size=8)
    return wait_job(keyed.url, job.id, key=KEY)


def test_the_worker_reads_its_dataset_from_the_store_not_the_platforms_disk(keyed, finished, domain):
    assert finished.status == "completed", finished.status_details.status_logs
    workdir = keyed.data_dir / "customization" / finished.id
    text = (workdir / "spec.json").read_text()
    spec = json.loads(text)
    assert spec["data_store"] == {"endpoint": f"{keyed.url}/v1/hf"}
    assert spec["dataset"] == f"hf://datasets/{NS}/good"
    assert str(keyed.data_dir / "datastore") not in text and KEY not in text  # no server path, no secret
    fetched = workdir / "dataset"
    assert (fetched / "training/training.jsonl").read_bytes() == domain["train"].read_bytes()
    assert (fetched / "validation/validation.jsonl").read_bytes() == domain["val"].read_bytes()
    sha = HfApi(endpoint=f"{keyed.url}/v1/hf", token=KEY).repo_info(f"{NS}/good", repo_type="dataset").sha
    log = (workdir / "worker.log").read_text()
    assert f"dataset repo {NS}/good from the data store at {keyed.url}/v1/hf at revision {sha}" in log


def _worker(spec: dict, workdir, key: str | None) -> subprocess.CompletedProcess:
    """The worker run by hand, as a node with nothing but the platform's URL (and key) would run it."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | ({TOKEN_ENV: key} if key else {})
    cmd = [sys.executable, "-m", "embedforge.platform.jobs.worker", str(workdir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_worker_outside_the_platforms_folder_trains_from_the_url_alone(keyed, finished, tmp_path):
    spec = json.loads((keyed.data_dir / "customization" / finished.id / "spec.json").read_text())
    workdir = tmp_path / "elsewhere"
    spec["finetune"]["output_dir"] = str(workdir)
    done = _worker(spec, workdir, KEY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((workdir / "result.json").read_text())["steps"] == 2  # 16 pairs, batches of 8
    assert (workdir / "model" / "config.json").exists()


def test_a_worker_without_the_key_is_refused_naming_the_store(keyed, finished, tmp_path):
    spec = json.loads((keyed.data_dir / "customization" / finished.id / "spec.json").read_text())
    spec["finetune"]["output_dir"] = str(tmp_path / "nokey")
    done = _worker(spec, tmp_path / "nokey", None)
    assert done.returncode == 2
    message = json.loads((tmp_path / "nokey" / "error.json").read_text())["message"]
    assert message.startswith(
        f"cannot fetch the dataset repo {NS}/good from the data store at {keyed.url}/v1/hf"
    )
    assert "401" in message
    assert not (tmp_path / "nokey" / "model").exists()


def test_a_dataset_whose_repo_is_missing_fails_the_job_naming_the_repo(keyed):
    client_for(keyed.url, KEY).datasets.create(
        name="no-repo", namespace=NS, files_url=f"hf://datasets/{NS}/never-uploaded"
    )
    job = start_job(keyed.url, f"{NS}/tiny@v1", "no-repo", "from-nothing", key=KEY)
    done = wait_job(keyed.url, job.id, key=KEY)
    assert done.status == "failed"
    detail = done.status_details.status_logs[-1].detail
    assert detail.startswith(
        f"cannot fetch the dataset repo {NS}/never-uploaded from the data store at {keyed.url}/v1/hf: "
    )
    assert "404" in detail


def test_a_store_the_worker_cannot_reach_fails_the_job_naming_the_url(platform_factory, tiny_model, domain):
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = platform_factory("sqlite", base_models=[tiny_model], extra_args=["--public-url", nowhere]).start()
    upload_dataset(proc.url, "good", {"training/training.jsonl": domain["train"]})
    create_config(proc.url, "tiny@v1", target=TINY)
    job = start_job(proc.url, f"{NS}/tiny@v1", "good", "unreachable")
    done = wait_job(proc.url, job.id)
    assert done.status == "failed"
    detail = done.status_details.status_logs[-1].detail
    assert detail.startswith(
        f"cannot fetch the dataset repo {NS}/good from the data store at {nowhere}/v1/hf: "
    )
