"""Customization jobs: the list (status filter, search, sort), a job's page with its live loss curve and
log tail, cancel, and the form that starts a job."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request

from embedforge.platform.jobs.store import ACTIVE
from embedforge.platform.schemas import ConfigCreate, Hyperparameters
from embedforge.platform.studio.api import ApiError
from embedforge.platform.studio.charts import line_chart
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
JOBS = "/v1/customization/jobs"
STATUSES = ("created", "pending", "running", "cancelling", "completed", "failed", "cancelled")
SORTS = {"created": "created_at", "name": "name", "status": "status"}
PAGE = 50
LOG_LINES = 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def matches(job: dict, text: str) -> bool:
    """Search over what the list shows: name, id, output model, dataset and base model."""
    fields = (job.get("name"), job["id"], job.get("output_model"), job.get("dataset"), base_model(job))
    return text.lower() in " ".join(str(f or "") for f in fields).lower()


def base_model(job: dict) -> str:
    return (job.get("config_snapshot") or {}).get("base_model") or ""


async def api_page(api, params: dict, page: int) -> tuple[list[dict], int]:
    """One page as the API cuts it: only that page's jobs (and their loss curves) cross the wire."""
    answer = await api.get(JOBS, page=max(1, page), page_size=PAGE, **params)
    return answer["data"], answer["pagination"]["total_results"]


async def searched(api, params: dict, text: str, page: int) -> tuple[list[dict], int]:
    """The API filters by exact field values only, so a text search reads every job and cuts the page."""
    jobs = [j for j in await api.every(JOBS, **params) if matches(j, text)]
    start = (max(1, page) - 1) * PAGE
    return jobs[start : start + PAGE], len(jobs)


async def list_context(api, status: str, q: str, sort: str, page: int) -> dict:
    field = SORTS.get(sort.lstrip("-"), "created_at")
    params = {"sort": ("-" if sort.startswith("-") else "") + field}
    if status:
        params["filter[status]"] = status
    shown, total = await (searched(api, params, q, page) if q else api_page(api, params, page))
    pages = max(1, -(-total // PAGE))
    return {
        "jobs": shown,
        "total": total,
        "active": any(job["status"] in ACTIVE for job in shown),
        "statuses": STATUSES,
        "status": status,
        "q": q,
        "sort": sort,
        "page": min(max(1, page), pages),
        "pages": pages,
        "base_model": base_model,
    }


@router.get("/jobs")
async def job_list(
    request: Request, api: Api, status: str = "", q: str = "", sort: str = "-created", page: int = 1
):
    return render(request, "jobs.html", **await list_context(api, status, q, sort, page))


@router.get("/jobs/table")
async def job_table(
    request: Request, api: Api, status: str = "", q: str = "", sort: str = "-created", page: int = 1
):
    """The list's table alone, refreshed by the page's script while a job it shows is running."""
    return render(request, "jobs_table.html", **await list_context(api, status, q, sort, page))


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
    return render(request, "job.html", **await job_context(api, job_id))


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, api: Api, job_id: str):
    """The part of the job page that changes while it runs; the page's script swaps it in."""
    return render(request, "job_live.html", **await job_context(api, job_id))


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
