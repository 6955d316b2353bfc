"""NVIDIA's embedding fine-tuning tutorial, step by step, against a local ``embedforge platform``.

The calls are the tutorial's own (the ``nemo-microservices`` SDK, ``huggingface_hub``, ``requests``, ``openai``);
only the three base URLs point at this machine. The data comes from the demo's run (``make demo`` writes
``runs/demo/prep/train.jsonl`` and the held-out BEIR folder ``runs/demo/prep/test_beir``); the target is
MiniLM, so the whole tour takes minutes on a CPU::

    python examples/platform_tutorial.py                      # starts a platform in runs/platform-tour
    python examples/platform_tutorial.py --url http://127.0.0.1:8080 --train my.jsonl --beir my_beir/

It prints the Evaluator's recall@5 and nDCG@10 for the base model and the fine-tuned one.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from huggingface_hub import HfApi
from nemo_microservices import NeMoMicroservices
from openai import OpenAI

NS, DATASET, BASE = "embed-sft-ns", "embed-sft-data", "sentence-transformers/all-MiniLM-L6-v2"


def start_platform(data_dir: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "embedforge.cli",
        "platform",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return url, process
        except requests.ConnectionError:
            time.sleep(0.5)
    raise SystemExit("the platform did not start")


def split_rows(train: Path, folder: Path) -> dict[str, Path]:
    """The tutorial's layout: training/training.jsonl and validation/validation.jsonl (5% held out, seed 42)."""
    rows = [line for line in train.read_text().splitlines() if line.strip()]
    random.Random(42).shuffle(rows)
    n_val = max(1, len(rows) // 20)
    out = {"training/training.jsonl": rows[n_val:], "validation/validation.jsonl": rows[:n_val]}
    paths = {}
    for name, part in out.items():
        paths[name] = folder / name.replace("/", "_")
        paths[name].write_text("\n".join(part) + "\n")
    return paths


def wait(fetch, active=("created", "pending", "running"), field=lambda x: x.status, every: float = 5):
    while True:
        item = fetch()
        if field(item) not in active:
            return item
        time.sleep(every)


def deploy(client: NeMoMicroservices, model: str, name: str) -> str:
    client.deployment.model_deployments.create(name=name, namespace=NS, config={"model": model})
    deployment = wait(
        lambda: client.deployment.model_deployments.retrieve(deployment_name=name, namespace=NS),
        field=lambda d: d.status_details.status,
    )
    if deployment.status_details.status != "ready":
        raise SystemExit(f"deployment {name} failed: {deployment.status_details.description}")
    return deployment.models[0]


def evaluate(client: NeMoMicroservices, nim_url: str, model_id: str, files_url: str) -> dict[str, float]:
    endpoint = {"api_endpoint": {"url": f"{nim_url}/v1/embeddings", "model_id": model_id, "api_key": ""}}
    metrics = ("recall_5", "ndcg_cut_10")
    job = client.evaluation.jobs.create(
        config={
            "type": "retriever",
            "namespace": NS,
            "tasks": {
                "my-beir-task": {
                    "type": "beir",
                    "dataset": {"files_url": files_url},
                    "metrics": {m: {"type": m} for m in metrics},
                }
            },
        },
        target={
            "type": "retriever",
            "retriever": {
                "pipeline": {
                    "query_embedding_model": endpoint,
                    "index_embedding_model": endpoint,
                    "top_k": 10,
                }
            },
        },
    )
    job = wait(lambda: client.evaluation.jobs.retrieve(job.id))
    if job.status != "completed":
        raise SystemExit(f"evaluation {job.id} {job.status}: {job.status_details}")
    tasks = client.evaluation.jobs.results(job.id).tasks
    return {m: tasks["my-beir-task"].metrics[f"retriever.{m}"].scores[m].value for m in metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running platform; default: start one")
    parser.add_argument(
        "--data-dir", default="runs/platform-tour", help="data dir of the platform started here"
    )
    parser.add_argument("--train", default="runs/demo/prep/train.jsonl", help="inline JSONL training rows")
    parser.add_argument("--beir", default="runs/demo/prep/test_beir", help="BEIR folder to evaluate on")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    train, beir = Path(args.train), Path(args.beir)
    if not train.exists() or not beir.is_dir():
        raise SystemExit(f"{train} or {beir} is missing: run `make demo` first, or pass --train and --beir")

    process = None
    url = args.url
    if url is None:
        url, process = start_platform(Path(args.data_dir))
    NDS_URL = NEMO_URL = url
    NIM_URL = url + "/nim"
    if url.startswith(("http://127.0.0.1", "http://localhost")):
        # HF_HUB_OFFLINE (set by the Makefile) would also stop the hub client talking to our local data store
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = False
    try:
        client = NeMoMicroservices(base_url=NEMO_URL, inference_base_url=NIM_URL)
        client.namespaces.create(id=NS)
        requests.post(f"{NDS_URL}/v1/datastore/namespaces", data={"namespace": NS}, timeout=30)
        hf = HfApi(endpoint=f"{NDS_URL}/v1/hf", token=None)
        hf.create_repo(f"{NS}/{DATASET}", repo_type="dataset")
        with tempfile.TemporaryDirectory() as tmp:
            for path_in_repo, local in split_rows(train, Path(tmp)).items():
                hf.upload_file(
                    path_or_fileobj=str(local),
                    path_in_repo=path_in_repo,
                    repo_id=f"{NS}/{DATASET}",
                    repo_type="dataset",
                )
        hf.create_repo(f"{NS}/test-beir", repo_type="dataset")
        hf.upload_folder(folder_path=str(beir), repo_id=f"{NS}/test-beir", repo_type="dataset")
        client.datasets.create(
            name=DATASET, namespace=NS, files_url=f"hf://datasets/{NS}/{DATASET}", project="embedding_sft"
        )

        client.customization.configs.create(
            name="minilm-embed-sft@v1",
            namespace=NS,
            target=BASE,
            training_options=[
                {
                    "training_type": "sft",
                    "finetuning_type": "all_weights",
                    "num_gpus": 1,
                    "micro_batch_size": 16,
                }
            ],
            training_precision="bf16",
            max_seq_length=256,
        )
        job = client.customization.jobs.create(
            name="minilm-embed-sft",
            config=f"{NS}/minilm-embed-sft@v1",
            dataset={"namespace": NS, "name": DATASET},
            hyperparameters={
                "training_type": "sft",
                "finetuning_type": "all_weights",
                "epochs": args.epochs,
                "batch_size": 64,
                "learning_rate": 5e-5,
            },
            output_model=f"{NS}/fullweight_sft_embedding",
        )
        print(f"customization job {job.id} -> {job.output_model}", flush=True)

        def progress():
            status = client.customization.jobs.status(job.id)
            print(
                f"  {status.status}: {status.percentage_done or 0:.0f}%, step {status.steps_completed}, train_loss {status.train_loss}",
                flush=True,
            )
            return status

        status = wait(progress)
        if status.status != "completed":
            raise SystemExit(f"customization failed: {status.status_logs[-1].detail}")
        models = client.models.list(filter={"namespace": NS}, sort="-created_at").data
        print("models:", [m.name for m in models])

        tuned = deploy(client, job.output_model, "fullweight-sft-deploy")
        base = deploy(client, BASE, "base-deploy")
        print(
            "NIM models:", [m.id for m in OpenAI(base_url=NIM_URL + "/v1", api_key="none").models.list().data]
        )
        vector = OpenAI(base_url=NIM_URL + "/v1", api_key="none").embeddings.create(
            input=["What is a tablespace?"], model=tuned, extra_body={"input_type": "query"}
        )
        print(f"embedding dimension: {len(vector.data[0].embedding)}")

        rows = {
            name: evaluate(client, NIM_URL, model, f"hf://datasets/{NS}/test-beir")
            for name, model in (("base", base), ("fine-tuned", tuned))
        }
        print(json.dumps(rows, indent=2))
        for metric in ("recall_5", "ndcg_cut_10"):
            print(f"{metric}: base {rows['base'][metric]:.4f} -> fine-tuned {rows['fine-tuned'][metric]:.4f}")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
