"""Evaluations: the list, a job's metrics as a table and a bar chart, and models compared on one task.

The compare view lines up completed jobs whose task reads the same dataset and gives each metric's
difference to the first job with its paired 95% bootstrap interval and sign-flip p-value
(``embedforge.measures.significance``) over the per-query scores the evaluator keeps; a job without them (run by
an older platform) gets the difference of means alone.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.concurrency import run_in_threadpool

from embedforge.platform.jobs.store import ACTIVE
from embedforge.platform.studio.charts import bar_chart
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
JOBS = "/v1/evaluation/jobs"
DEPLOYMENTS = "/v1/deployment/model-deployments"
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
    ready = await api.every(DEPLOYMENTS, **{"filter[status]": "ready"})
    deployed = sorted({model for d in ready for model in d["models"]})
    return render(
        request,
        "evaluations.html",
        jobs=jobs,
        deployed=deployed,
        model_of=model_of,
        task_datasets=task_datasets,
    )


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
    per_query = {j["id"]: await per_query_scores(api, j["id"]) for j in done}
    groups = await run_in_threadpool(comparison, done, scores, per_query)  # the bootstrap takes a moment
    return render(request, "compare.html", jobs=done, groups=groups, model_of=model_of)


async def per_query_scores(api, job_id: str) -> dict:
    """``{task: {metric: {query_id: score}}}``, or {} for a job that kept none."""
    answer = await api.find(f"{JOBS}/{job_id}/per-query-scores")
    return (answer or {}).get("tasks", {})


def comparison(jobs: list[dict], scores: dict[str, list[dict]], per_query: dict[str, dict]) -> list[dict]:
    """Per task dataset: the metrics of every job that ran it, and each one's difference to the first."""
    groups: dict[str, dict] = {}
    for job in jobs:
        for task, files_url in task_datasets(job).items():
            group = groups.setdefault(
                files_url, {"dataset": files_url, "jobs": [], "metrics": {}, "queries": {}}
            )
            group["jobs"].append(job)
            for row in (r for r in scores[job["id"]] if r["task"] == task):
                group["metrics"].setdefault(row["metric"], {})[job["id"]] = row["value"]
            group["queries"][job["id"]] = per_query.get(job["id"], {}).get(task, {})
    for group in groups.values():
        first = group["jobs"][0]["id"]
        group["diffs"] = {
            metric: {j: difference(group, metric, first, j) for j in values if j != first and first in values}
            for metric, values in group["metrics"].items()
        }
    return list(groups.values())


def difference(group: dict, metric: str, base: str, other: str) -> dict:
    """``other`` minus ``base`` on ``metric``, with the paired test when both kept per-query scores."""
    from embedforge.measures.significance import paired_comparison

    values = group["metrics"][metric]
    out = {"diff": values[other] - values[base]}
    base_queries = group["queries"][base].get(metric)
    other_queries = group["queries"][other].get(metric)
    if base_queries and other_queries:
        test = paired_comparison(base_queries, other_queries)
        out.update(ci95=test["ci95"], p=test["p"], n=test["n"], significant=test["significant"])
    return out


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


@router.post("/evaluations/{job_id}/delete")
async def delete_evaluation(api: Api, job_id: str):
    """The job (refused while it runs) and then its result entity, which the API keeps apart."""
    job = await api.get(f"{JOBS}/{job_id}")
    await api.delete(f"{JOBS}/{job_id}")
    if job.get("result") and await api.find(f"/v1/evaluation/results/{job['result']}") is not None:
        await api.delete(f"/v1/evaluation/results/{job['result']}")
    return go("/evaluations")


@router.get("/evaluations/{job_id}")
async def evaluation_page(request: Request, api: Api, job_id: str):
    return render(request, "evaluation.html", **await evaluation_context(api, job_id))


@router.get("/evaluations/{job_id}/live")
async def evaluation_live(request: Request, api: Api, job_id: str):
    return render(request, "evaluation_live.html", **await evaluation_context(api, job_id))
