"""Evaluations: the list, a job's metrics as a table and a bar chart, and models compared on one task.

The compare view lines up completed jobs whose task reads the same dataset. A paired 95% interval and
p-value of a difference need per-query scores (``embedforge.significance``); the evaluator's results
carry means only, so the view shows the differences of means and says that no interval is possible.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request

from embedforge.platform.jobs.store import ACTIVE
from embedforge.platform.studio.charts import bar_chart
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
JOBS = "/v1/evaluation/jobs"
METRICS = ("recall_5", "ndcg_cut_5", "recall_10", "ndcg_cut_10")  # the NeMo tutorial's


def model_of(job: dict) -> str:
    """The model an evaluation scored: its query embedding model's id."""
    pipeline = job["target"]["retriever"]["pipeline"]
    return pipeline["query_embedding_model"]["api_endpoint"]["model_id"]


def task_datasets(job: dict) -> dict[str, str]:
    return {name: task["dataset"]["files_url"] for name, task in job["config"]["tasks"].items()}


@router.get("/evaluations")
async def evaluation_list(request: Request, api: Api):
    jobs = await api.every(JOBS)
    return render(request, "evaluations.html", jobs=jobs, model_of=model_of, task_datasets=task_datasets)


def metric_rows(results: dict) -> list[dict]:
    """NeMo's nested results as rows of (task, metric, value), in name order (stored JSON may reorder)."""
    rows = []
    for task, result in results["tasks"].items():
        for group in result["metrics"].values():
            for metric, score in group["scores"].items():
                rows.append({"task": task, "metric": metric, "value": score["value"]})
    return sorted(rows, key=lambda row: (row["task"], row["metric"]))


@router.get("/evaluations/compare")
async def compare(request: Request, api: Api, ids: Annotated[list[str], Query()] = ()):
    jobs = [await api.get(f"{JOBS}/{job_id}") for job_id in ids]
    done = [j for j in jobs if j["status"] == "completed"]
    scores = {j["id"]: metric_rows(await api.get(f"{JOBS}/{j['id']}/results")) for j in done}
    return render(request, "compare.html", jobs=done, groups=comparison(done, scores), model_of=model_of)


def comparison(jobs: list[dict], scores: dict[str, list[dict]]) -> list[dict]:
    """Per task dataset: the metrics of every job that ran it, and each one's difference to the first."""
    groups: dict[str, dict] = {}
    for job in jobs:
        for task, files_url in task_datasets(job).items():
            group = groups.setdefault(files_url, {"dataset": files_url, "jobs": [], "metrics": {}})
            group["jobs"].append(job)
            for row in (r for r in scores[job["id"]] if r["task"] == task):
                group["metrics"].setdefault(row["metric"], {})[job["id"]] = row["value"]
    for group in groups.values():
        first = group["jobs"][0]["id"]
        group["diffs"] = {
            metric: {j: v - values[first] for j, v in values.items() if first in values}
            for metric, values in group["metrics"].items()
        }
    return list(groups.values())


def evaluation_request(model: str, files_url: str, endpoint_url: str, api_key: str | None) -> dict:
    """A retriever evaluation of a served ``model`` on one BEIR task, as the NeMo tutorial sends it."""
    endpoint = {"api_endpoint": {"url": endpoint_url, "model_id": model, "api_key": api_key or ""}}
    task = {
        "type": "beir",
        "dataset": {"files_url": files_url},
        "metrics": {name: {"type": name} for name in METRICS},
    }
    pipeline = {"query_embedding_model": endpoint, "index_embedding_model": endpoint, "top_k": 10}
    return {
        "namespace": model.split("/", 1)[0],
        "config": {"type": "retriever", "tasks": {task_name(files_url): task}},
        "target": {"type": "retriever", "retriever": {"pipeline": pipeline}},
    }


def task_name(files_url: str) -> str:
    """``file://scidocs/`` -> ``scidocs``, ``hf://datasets/ns/name`` -> ``name``."""
    return files_url.rstrip("/").rsplit("/", 1)[-1] or "task"


@router.post("/evaluations")
async def start_evaluation(
    request: Request, api: Api, model: Annotated[str, Form()], files_url: Annotated[str, Form()]
):
    """Evaluate a deployed model through the platform's own NIM gateway, as a client outside would."""
    settings = request.app.state.settings
    base = settings.public_url or str(request.base_url).rstrip("/")
    body = evaluation_request(model, files_url.strip(), f"{base}/nim/v1/embeddings", settings.api_key)
    job = await api.post(JOBS, json=body)
    return go(f"/evaluations/{job['id']}")


async def evaluation_context(api, job_id: str) -> dict:
    job = await api.get(f"{JOBS}/{job_id}")
    rows = metric_rows(await api.get(f"{JOBS}/{job_id}/results")) if job["status"] == "completed" else []
    tasks = sorted({r["task"] for r in rows})
    charts = {
        t: bar_chart([(r["metric"], r["value"]) for r in rows if r["task"] == t], f"Metrics of task {t}")
        for t in tasks
    }
    return {
        "job": job,
        "rows": rows,
        "charts": charts,
        "active": job["status"] in ACTIVE,
        "model": model_of(job),
        "datasets": task_datasets(job),
    }


@router.get("/evaluations/{job_id}")
async def evaluation_page(request: Request, api: Api, job_id: str):
    return render(request, "evaluation.html", **await evaluation_context(api, job_id))


@router.get("/evaluations/{job_id}/live")
async def evaluation_live(request: Request, api: Api, job_id: str):
    return render(request, "evaluation_live.html", **await evaluation_context(api, job_id))
