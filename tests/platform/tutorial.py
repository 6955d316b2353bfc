"""The tutorial's steps as functions the platform tests share: upload, register, configure, train, poll."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import requests
from huggingface_hub import HfApi
from nemo_microservices import NeMoMicroservices

NS = "embed-sft-ns"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ACTIVE = ("created", "pending", "running", "cancelling")


def client_for(url: str, key: str | None = None) -> NeMoMicroservices:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return NeMoMicroservices(base_url=url, inference_base_url=url + "/nim", default_headers=headers)


def upload_dataset(
    url: str, name: str, files: dict[str, Path], namespace: str = NS, key: str | None = None
) -> None:
    """Notebook 2, steps 1-4: both namespaces, a dataset repo, its files, the dataset entity."""
    client = client_for(url, key)
    if not client.namespaces.list(filter={"id": namespace}).data:
        client.namespaces.create(id=namespace)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        requests.post(
            f"{url}/v1/datastore/namespaces", data={"namespace": namespace}, headers=headers, timeout=30
        )
    api = HfApi(endpoint=f"{url}/v1/hf", token=key)
    api.create_repo(f"{namespace}/{name}", repo_type="dataset", exist_ok=True)
    for path_in_repo, local in files.items():
        api.upload_file(
            path_or_fileobj=str(local),
            path_in_repo=path_in_repo,
            repo_id=f"{namespace}/{name}",
            repo_type="dataset",
        )
    client.datasets.create(name=name, namespace=namespace, files_url=f"hf://datasets/{namespace}/{name}")


def create_config(
    url: str,
    name: str = "minilm-embed-sft@v1",
    max_seq_length: int = 32,
    target: str = MINILM,
    num_gpus: int = 1,
    namespace: str = NS,
    key: str | None = None,
) -> str:
    client_for(url, key).customization.configs.create(
        name=name,
        namespace=namespace,
        target=target,
        training_options=[
            {
                "training_type": "sft",
                "finetuning_type": "all_weights",
                "num_gpus": num_gpus,
                "micro_batch_size": 8,
            },
            {
                "training_type": "sft",
                "finetuning_type": "lora_merged",
                "num_gpus": num_gpus,
                "micro_batch_size": 8,
            },
        ],
        training_precision="fp32",
        max_seq_length=max_seq_length,
    )
    return f"{namespace}/{name}"


def start_job(
    url: str,
    config: str,
    dataset: str,
    output: str,
    namespace: str = NS,
    key: str | None = None,
    **hyperparameters,
):
    hp = {"training_type": "sft", "finetuning_type": "all_weights", "epochs": 1, "batch_size": 16}
    hp.update(learning_rate=1e-4, **hyperparameters)
    return client_for(url, key).customization.jobs.create(
        name=output,
        config=config,
        dataset={"namespace": namespace, "name": dataset},
        hyperparameters=hp,
        output_model=f"{namespace}/{output}",
    )


def wait_job(
    url: str,
    job_id: str,
    until=lambda job: job.status not in ACTIVE,
    timeout: float = 600,
    key: str | None = None,
):
    client = client_for(url, key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.customization.jobs.retrieve(job_id)
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s: {job.status_details}")


def worker_pid(job) -> int:
    for log in job.status_details.status_logs:
        if log.detail and str(log.detail).startswith("worker pid "):
            pid = int(str(log.detail).split()[-1])
    return pid


def deploy(url: str, model: str, name: str, timeout: float = 900, namespace: str = NS):
    """Notebook 2, steps 9-10: a deployment config, a model deployment, polled until it is not pending."""
    client = client_for(url)
    client.deployment.configs.create(
        name=f"{name}-config",
        namespace=namespace,
        model=model,
        nim_deployment={
            "image_name": "nvcr.io/nim/nvidia/llama-3.2-nv-embedqa-1b-v2",
            "image_tag": "1.6.0",
            "gpu": 1,
        },
    )
    client.deployment.model_deployments.create(
        name=name, namespace=namespace, config=f"{namespace}/{name}-config"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = client.deployment.model_deployments.retrieve(deployment_name=name, namespace=namespace)
        if deployment.status_details.status not in ("created", "pending"):
            return deployment
        time.sleep(1)
    raise AssertionError(f"deployment {name} still pending after {timeout} s")


def wait_deployment(url: str, name: str, timeout: float = 900, headers=None) -> dict:
    """Poll a model deployment (raw HTTP) until it is neither created nor pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = httpx.get(f"{url}/v1/deployment/model-deployments/{NS}/{name}", headers=headers).json()
        if d["status_details"]["status"] not in ("created", "pending"):
            return d
        time.sleep(1)
    raise AssertionError(f"deployment {name} still pending")


def retriever_target(url: str, model_id: str, api_key: str = "") -> dict:
    """The notebook's retriever target: the same embeddings endpoint for queries and the index."""
    endpoint = {"url": f"{url}/nim/v1/embeddings", "model_id": model_id, "api_key": api_key}
    pipeline = {
        "query_embedding_model": {"api_endpoint": endpoint},
        "index_embedding_model": {"api_endpoint": dict(endpoint)},
        "top_k": 10,
    }
    return {"type": "retriever", "retriever": {"pipeline": pipeline}}


def wait_evaluation(
    client: NeMoMicroservices, job_id: str, timeout: float = 900, until=lambda job: job.status not in ACTIVE
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.evaluation.jobs.retrieve(job_id)
        if until(job):
            return job
        time.sleep(1)
    raise AssertionError(f"evaluation job {job_id} still {job.status} after {timeout} s")


def evaluate(url: str, model_id: str, files_url: str, timeout: float = 900, namespace: str = NS):
    """Notebook 3: an inline retriever config and target, the job polled to the end, then its results."""
    client = client_for(url)
    names = ("recall_5", "ndcg_cut_5", "recall_10", "ndcg_cut_10")
    job = client.evaluation.jobs.create(
        namespace=namespace,
        config={
            "type": "retriever",
            "namespace": namespace,
            "tasks": {
                "my-beir-task": {
                    "type": "beir",
                    "dataset": {"files_url": files_url},
                    "metrics": {name: {"type": name} for name in names},
                }
            },
        },
        target=retriever_target(url, model_id),
    )
    job = wait_evaluation(client, job.id, timeout)
    return job, (client.evaluation.jobs.results(job.id) if job.status == "completed" else None)
