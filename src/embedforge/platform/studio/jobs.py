"""Customization jobs: the list (status filter, search, sort), a job's page with its live loss curve and
log tail, cancel, and the form that starts a job."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request

from embedforge.platform.jobs.deployments import served_name
from embedforge.platform.jobs.store import ACTIVE
from embedforge.platform.schemas import ConfigCreate, Hyperparameters
from embedforge.platform.studio.api import ApiError
from embedforge.platform.studio.charts import line_chart
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
JOBS = "/v1/customization/jobs"
DEPLOYMENTS = "/v1/deployment/model-deployments"
STATUSES = ("created", "pending", "running", "cancelling", "completed", "failed", "cancelled")
SORTS = {"created": "created_at", "name": "name", "status": "status"}
SEARCHABLE = {  # the search box's "in" choices: API field -> label
    "name": "name",
    "id": "id",
    "dataset": "dataset",
    "config_snapshot.base_model": "base model",
    "output_model": "output model",
}
PAGE = 50
LOG_LINES = 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def base_model(job: dict) -> str:
    return (job.get("config_snapshot") or {}).get("base_model") or ""


@dataclass
class ListQuery:
    """The list page's query string: status filter, search text and the field it searches, sort, page."""

    status: str = ""
    q: str = ""
    field: str = "name"
    sort: str = "-created"
    page: int = 1

    def api_params(self) -> dict:
        """The API's list query: filtered, searched, sorted and paged in the database, and without the
        loss curves the table does not show."""
        key = SORTS.get(self.sort.lstrip("-"), "created_at")
        params = {"sort": ("-" if self.sort.startswith("-") else "") + key, "metrics": "false"}
        if self.status:
            params["filter[status]"] = self.status
        if self.q:
            params[f"search[{self.field if self.field in SEARCHABLE else 'name'}]"] = self.q
        return {**params, "page": max(1, self.page), "page_size": PAGE}


async def list_context(api, query: ListQuery) -> dict:
    answer = await api.get(JOBS, **query.api_params())
    shown, total = answer["data"], answer["pagination"]["total_results"]
    pages = max(1, -(-total // PAGE))
    return {
        "jobs": shown,
        "total": total,
        "active": any(job["status"] in ACTIVE for job in shown),
        "statuses": STATUSES,
        "searchable": SEARCHABLE,
        "query": query,
        "where": urlencode({"status": query.status, "q": query.q, "field": query.field}),
        "page": min(max(1, query.page), pages),
        "pages": pages,
        "base_model": base_model,
    }


@router.get("/jobs")
async def job_list(request: Request, api: Api, query: Annotated[ListQuery, Depends()]):
    return render(request, "jobs.html", **await list_context(api, query))


@router.get("/jobs/table")
async def job_table(request: Request, api: Api, query: Annotated[ListQuery, Depends()]):
    """The list's table alone, refreshed by the page's script while a job it shows is running."""
    return render(request, "jobs_table.html", **await list_context(api, query))


def loss_chart(job: dict):
    metrics = (job["status_details"].get("metrics") or {}).get("metrics") or {}
    series = {
        name: [(p["step"], p["value"]) for p in metrics.get(name) or []]
        for name in ("train_loss", "val_loss")
        if metrics.get(name)
    }
    return line_chart(series, f"Loss of job {job['id']}")


def readable(line: str) -> str:
    """A log line as a terminal would leave it: a progress bar's redraws (``\\r``) and colour codes gone."""
    return ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip()


async def log_tail(api, job_id: str) -> list[str]:
    logs = await api.find(f"{JOBS}/{job_id}/container-logs")
    lines = (readable(line) for line in (logs or {}).get("data", []))
    return [line for line in lines if line][-LOG_LINES:]


async def served_model(api, job: dict) -> str | None:
    """The name a completed job's model is served under, if a deployment of it is ready."""
    if job["status"] != "completed" or not job.get("output_model"):
        return None
    name = served_name(job["output_model"])
    ready = await api.every(DEPLOYMENTS, **{"filter[status]": "ready"})
    return name if any(name in d["models"] for d in ready) else None


async def job_context(api, job_id: str) -> dict:
    job = await api.get(f"{JOBS}/{job_id}")
    return {
        "job": job,
        "active": job["status"] in ACTIVE,
        "chart": loss_chart(job),
        "log": await log_tail(api, job_id),
    }


@router.get("/jobs/new")
async def new_job(request: Request, api: Api):
    return await job_form(request, api, {}, [])


@router.get("/jobs/{job_id}")
async def job_page(request: Request, api: Api, job_id: str):
    context = await job_context(api, job_id)
    return render(request, "job.html", **context, served=await served_model(api, context["job"]))


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, api: Api, job_id: str):
    """The part of the job page that changes while it runs; the page's script swaps it in."""
    return render(request, "job_live.html", **await job_context(api, job_id))


@router.post("/jobs/{job_id}/delete")
async def delete_job(api: Api, job_id: str):
    await api.delete(f"{JOBS}/{job_id}")  # a 409 (running, or its model still registered) is shown
    return go("/jobs")


@router.post("/jobs/{job_id}/cancel")
async def cancel(api: Api, job_id: str):
    await api.post(f"{JOBS}/{job_id}/cancel")
    return go(f"/jobs/{job_id}")


def form_defaults() -> dict:
    """The form's starting values: the API's own defaults for a job request."""
    fields = Hyperparameters.model_fields
    return {
        "finetuning_type": "all_weights",
        "epochs": fields["epochs"].default,
        "batch_size": fields["batch_size"].default,
        "learning_rate": fields["learning_rate"].default,
        "max_seq_length": ConfigCreate.model_fields["max_seq_length"].default,
        "namespace": "default",
    }


async def job_form(request: Request, api, values: dict, errors: list[str], status_code: int = 200):
    targets = await api.every("/v1/customization/targets")
    datasets = await api.every("/v1/datasets")
    return render(
        request,
        "job_new.html",
        status_code,
        values={**form_defaults(), **values},
        errors=errors,
        targets=[f"{t['namespace']}/{t['name']}" for t in targets if t.get("enabled", True)],
        datasets=[f"{d['namespace']}/{d['name']}" for d in datasets],
    )


def job_request(form: dict) -> dict:
    """The form as NeMo's job request: an inline config for the chosen target, the hyperparameters."""
    target, finetuning = form["target"], form["finetuning_type"]
    batch = int(form["batch_size"])
    name = form.get("name") or None
    namespace = form.get("namespace") or "default"
    return {
        "name": name,
        "namespace": namespace,
        "config": {
            "name": f"{target.rsplit('/', 1)[-1]}-studio",
            "namespace": namespace,
            "target": target,
            "training_options": [{"finetuning_type": finetuning, "micro_batch_size": batch}],
            "max_seq_length": int(form["max_seq_length"]),
        },
        "dataset": form["dataset"],
        "hyperparameters": {
            "finetuning_type": finetuning,
            "epochs": int(form["epochs"]),
            "batch_size": batch,
            "learning_rate": float(form["learning_rate"]),
        },
        "output_model": f"{namespace}/{name}" if name else None,
    }


@router.post("/jobs")
async def start_job(request: Request, api: Api):
    form = dict(await request.form())
    try:
        job = await api.post(JOBS, json=job_request(form))
    except ValueError as err:  # a number field that is not a number
        return await job_form(request, api, form, [f"not a number: {err}"], 422)
    except ApiError as err:
        return await job_form(request, api, form, err.messages(), err.status)
    return go(f"/jobs/{job['id']}")
