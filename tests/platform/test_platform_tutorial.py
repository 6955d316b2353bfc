"""The tutorial's customization sequence against a real platform on SQLite and PostgreSQL: namespace,
upload, dataset, config, job, status polling, the registered model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openai
import pytest
from huggingface_hub import HfApi
from openai import OpenAI
from sentence_transformers import SentenceTransformer
from tutorial import (
    MINILM,
    NS,
    client_for,
    create_config,
    deploy,
    evaluate,
    start_job,
    upload_dataset,
    wait_job,
)

from domain_fixture import make_domain_fixture
from embedforge.data.formats import read_beir
from embedforge.evaluate.retrieval import evaluate_dataset
from embedforge.models.bi_encoder import BiEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_job(platform, tmp_path_factory):
    data = make_domain_fixture(
        tmp_path_factory.mktemp("domain"), train_pairs=16, val_pairs=8, test_queries=20
    )
    upload_dataset(
        platform.url,
        "embed-sft-data",
        {"training/training.jsonl": data["train"], "validation/validation.jsonl": data["val"]},
    )
    config = create_config(platform.url)
    job = start_job(platform.url, config, "embed-sft-data", "fullweight_sft_embedding", batch_size=8)
    assert job.status == "created"
    seen = {job.status}
    finished = wait_job(
        platform.url,
        job.id,
        until=lambda j: seen.add(j.status) or j.status not in ("created", "pending", "running"),
    )
    return {"created": job, "finished": finished, "seen": seen, "data": data}


def test_job_response_has_nvidias_fields(finished_job):
    job = finished_job["created"]
    assert job.id.startswith("cust-") and len(job.id) == 27
    assert job.output_model == f"{NS}/fullweight_sft_embedding@{job.id}"
    assert job.config == f"{NS}/minilm-embed-sft@v1"
    assert job.dataset == f"{NS}/embed-sft-data"
    assert job.config_snapshot.base_model == MINILM
    assert job.hyperparameters.epochs == 1 and job.hyperparameters.batch_size == 8


def test_job_completes_with_progress_and_losses(platform, finished_job):
    job = finished_job["finished"]
    assert job.status == "completed", job.status_details.status_logs
    assert "running" in finished_job["seen"]
    status = client_for(platform.url).customization.jobs.status(job.id)
    assert status.status == "completed"
    assert status.percentage_done == 100.0 and status.epochs_completed == 1
    # 16 rows, batch 8: 2 optimizer steps in one epoch, each logged
    assert status.steps_completed == 2 and status.steps_per_epoch == 2
    losses = status.metrics.metrics.train_loss
    assert [p.step for p in losses] == [1, 2]
    assert all(p.value > 0 for p in losses) and status.train_loss == losses[-1].value
    # the validation/ rows: the training loss at each validation point (one per step here)
    val_losses = status.metrics.metrics.val_loss
    assert [p.step for p in val_losses] == [1, 2]
    assert all(0 < p.value < 10 for p in val_losses) and status.val_loss == val_losses[-1].value
    log = platform.data_dir / "customization" / job.id / "train_log.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [p.value for p in val_losses] == [r["val_loss"] for r in logged if "val_loss" in r]
    # best_epoch: epochs completed at the checkpoint finetune kept (the best validation nDCG@10)
    summary = json.loads((log.parent / "train_summary.json").read_text())
    kept_step = int(summary["best_checkpoint"].rsplit("-", 1)[-1])
    assert kept_step in (1, 2)
    assert status.best_epoch == (0 if kept_step == 1 else 1)  # step 1 of 2 is half an epoch
    messages = [log.message for log in status.status_logs]
    assert (
        messages[0] == "created"
        and "TrainingJobRunning" in messages
        and messages[-1] == "TrainingJobCompleted"
    )
    assert f"job {job.id}: 100%" in platform.log_text()


def test_output_model_is_registered_and_loads(platform, finished_job):
    job = finished_job["finished"]
    models = client_for(platform.url).models.list(filter={"namespace": NS}, sort="-created_at")
    names = [m.name for m in models.data]
    assert names == [f"fullweight_sft_embedding@{job.id}"]
    model = models.data[0]
    assert model.base_model == MINILM and model.peft.finetuning_type == "all_weights"
    assert model.spec.is_embedding_model and model.spec.dims == 384 and model.spec.layers == 6
    folder = model.artifact.files_url.removeprefix("file://")
    assert folder.startswith(str(platform.data_dir))
    vector = SentenceTransformer(folder, device="cpu").encode(["a brisk tavomir"], normalize_embeddings=True)
    assert vector.shape == (1, 384)
    summary = json.loads((platform.data_dir / "customization" / job.id / "train_summary.json").read_text())
    assert summary["config"]["max_seq_length"] == 32 and summary["config"]["learning_rate"] == 1e-4
    assert summary["steps"] == 2


@pytest.fixture(scope="module")
def deployed(platform, finished_job):
    job = finished_job["finished"]
    deployment = deploy(platform.url, job.output_model, "sft-deploy")
    return {"deployment": deployment, "model": job.output_model}


def test_deployment_becomes_ready_and_serves_the_tuned_model(platform, deployed):
    deployment = deployed["deployment"]
    assert deployment.status_details.status == "ready", deployment.status_details
    assert deployment.models == [f"{NS}/fullweight_sft_embedding"]
    listed = OpenAI(base_url=platform.url + "/nim/v1", api_key="none").models.list()
    assert f"{NS}/fullweight_sft_embedding" in [m.id for m in listed.data]
    texts = ["a brisk tavomir on Ridge pump RX-41", "replace the intake filter"]
    response = OpenAI(base_url=platform.url + "/nim/v1", api_key="none").embeddings.create(
        input=texts, model=f"{NS}/fullweight_sft_embedding", extra_body={"input_type": "query"}
    )
    assert response.model == f"{NS}/fullweight_sft_embedding"
    served = np.array([d.embedding for d in response.data])
    folder = (
        client_for(platform.url)
        .models.retrieve(model_name=deployed["model"].split("/", 1)[1], namespace=NS)
        .artifact.files_url.removeprefix("file://")
    )
    offline = SentenceTransformer(folder, device="cpu").encode(texts, normalize_embeddings=True)
    assert served.shape == (2, 384)
    assert np.min(np.sum(served * offline, axis=1)) > 0.999  # the export matches the checkpoint


def test_unknown_model_is_an_openai_shaped_404(platform, deployed):
    with pytest.raises(openai.NotFoundError) as err:
        OpenAI(base_url=platform.url + "/nim/v1", api_key="none").embeddings.create(
            input=["x"], model=f"{NS}/nope"
        )
    assert err.value.body["code"] == "model_not_found"
    assert "nope" in err.value.body["message"]


def test_evaluator_scores_the_deployment_like_the_offline_eval(platform, finished_job, deployed):
    beir = finished_job["data"]["test_beir"]
    HfApi(endpoint=f"{platform.url}/v1/hf").create_repo(f"{NS}/domain-beir", repo_type="dataset")
    HfApi(endpoint=f"{platform.url}/v1/hf").upload_folder(
        folder_path=str(beir), repo_id=f"{NS}/domain-beir", repo_type="dataset"
    )
    job, results = evaluate(platform.url, f"{NS}/fullweight_sft_embedding", f"hf://datasets/{NS}/domain-beir")
    assert job.id.startswith("eval-") and job.status == "completed", job.status_details
    assert job.status_details.progress == 100.0
    metrics = results.tasks["my-beir-task"].metrics
    assert sorted(metrics) == [
        f"retriever.{m}" for m in ("ndcg_cut_10", "ndcg_cut_5", "recall_10", "recall_5")
    ]
    served = {m: metrics[f"retriever.{m}"].scores[m].value for m in ("ndcg_cut_10", "recall_5")}

    folder = (
        client_for(platform.url)
        .models.retrieve(model_name=deployed["model"].split("/", 1)[1], namespace=NS)
        .artifact.files_url.removeprefix("file://")
    )
    offline = evaluate_dataset(BiEncoder.load(folder), read_beir(beir), ks=(5, 10), progress=False)["metrics"]
    assert served["ndcg_cut_10"] == pytest.approx(offline["ndcg@10"], abs=0.01)  # NVIDIA's deploy tolerance
    assert served["recall_5"] == pytest.approx(offline["recall@5"], abs=0.01)


def test_evaluator_reads_an_operators_beir_folder(platform, finished_job, deployed):
    shutil.copytree(finished_job["data"]["test_beir"], platform.data_dir / "beir" / "domain")
    job, results = evaluate(platform.url, f"{NS}/fullweight_sft_embedding", "file://domain/")
    assert job.status == "completed", job.status_details
    value = results.tasks["my-beir-task"].metrics["retriever.ndcg_cut_10"].scores["ndcg_cut_10"].value
    assert 0.0 < value <= 1.0
