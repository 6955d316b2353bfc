"""Models with their lineage, one-click deployment, and a deployment's page with a "try it" search.

"Try it" embeds a dataset's passages (every positive and negative of its JSONL files, read back from the
data store) and the typed query through the platform's NIM gateway, and ranks the passages by cosine.
The passage vectors are kept per (deployment, dataset commit), so only the query is embedded again.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, Request

from embedforge.platform.jobs.deployments import LIVE, served_name
from embedforge.platform.studio.api import ApiError
from embedforge.platform.studio.datasets import repo_path
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
DEPLOYMENTS = "/v1/deployment/model-deployments"
MAX_PASSAGES = 5000  # "try it" is a quick look, not an evaluation
TOP = 5
PAGE = 50
CACHED_CORPORA = 4
_vectors: OrderedDict[tuple, np.ndarray] = OrderedDict()


def lineage(model: dict, job: dict | None) -> dict:
    """Where a model came from: its base model, and the job and dataset that made it (if one did)."""
    return {"base": model.get("base_model"), "job": job, "dataset": job.get("dataset") if job else None}


@router.get("/models")
async def model_list(request: Request, api: Api, page: int = 1):
    answer = await api.get("/v1/models", page=max(1, page), page_size=PAGE)
    models = answer["data"]
    jobs = await makers(api, models)
    deployed = {d["models"][0]: d for d in await deployments(api)}
    rows = [
        {
            "model": m,
            "lineage": lineage(m, jobs.get(job_of(m))),
            "deployment": deployed.get(served_name(ref(m))),
        }
        for m in models
    ]
    pages = answer["pagination"]["total_pages"]
    return render(request, "models.html", rows=rows, page=min(max(1, page), pages), pages=pages)


def job_of(model: dict) -> str | None:
    """The id of the customization job that made ``model`` (in its custom fields), if a job did."""
    return (model.get("custom_fields") or {}).get("customization_job")


async def makers(api, models: list[dict]) -> dict[str, dict]:
    """The jobs that made ``models``, by id: one list call (by their ids, loss curves left out)."""
    ids = sorted({job_id for job_id in map(job_of, models) if job_id})
    if not ids:
        return {}
    params = {"filter[id]": ids, "metrics": "false", "page_size": len(ids)}
    return {job["id"]: job for job in (await api.get("/v1/customization/jobs", **params))["data"]}


def ref(model: dict) -> str:
    return f"{model['namespace']}/{model['name']}"


async def deployments(api) -> list[dict]:
    return [d for d in await api.every(DEPLOYMENTS) if d["status_details"]["status"] in LIVE]


def deployment_name(model_ref: str) -> str:
    """A deployment's name for a model: the model's name without the ``@cust-...`` job suffix."""
    return served_name(model_ref).rsplit("/", 1)[-1]


@router.post("/models/deploy")
async def deploy(api: Api, model: Annotated[str, Form()]):
    namespace = model.split("/", 1)[0]
    name = deployment_name(model)
    body = {"name": name, "namespace": namespace, "config": {"model": model}}
    await api.post(DEPLOYMENTS, json=body)  # a name taken by another model's deployment: the 409 shown
    return go(f"/deployments/{namespace}/{name}")


@router.post("/models/{namespace}/{name}/delete")
async def delete_model(api: Api, namespace: str, name: str):
    await api.delete(f"/v1/models/{namespace}/{name}")
    return go("/models")


@router.post("/deployments/{namespace}/{name}/delete")
async def delete_deployment(api: Api, namespace: str, name: str):
    """Stop the deployment's server; the list shows it "deleting" until it is gone."""
    await api.delete(f"{DEPLOYMENTS}/{namespace}/{name}")
    return go("/deployments")


@router.get("/deployments")
async def deployment_list(request: Request, api: Api):
    return render(request, "deployments.html", deployments=await api.every(DEPLOYMENTS))


async def deployment_context(api, namespace: str, name: str) -> dict:
    deployment = await api.get(f"{DEPLOYMENTS}/{namespace}/{name}")
    status = deployment["status_details"]["status"]
    return {"deployment": deployment, "active": status in ("created", "pending")}


@router.get("/deployments/{namespace}/{name}")
async def deployment_page(
    request: Request, api: Api, namespace: str, name: str, q: str = "", dataset: str = ""
):
    context = await deployment_context(api, namespace, name)
    datasets = [f"{d['namespace']}/{d['name']}" for d in await api.every("/v1/datasets")]
    results, error = [], None
    if q and dataset:
        try:
            results = await search(api, context["deployment"], dataset, q)
        except ApiError as err:
            error = "; ".join(err.messages())
    return render(
        request,
        "deployment.html",
        **context,
        datasets=datasets,
        q=q,
        dataset=dataset,
        results=results,
        error=error,
    )


@router.get("/deployments/{namespace}/{name}/live")
async def deployment_live(request: Request, api: Api, namespace: str, name: str):
    return render(request, "deployment_live.html", **await deployment_context(api, namespace, name))


async def corpus(api, dataset: str) -> tuple[str, list[str]]:
    """The dataset's commit id and its distinct passages (positives then negatives, in file order)."""
    namespace, name = dataset.split("/", 1)
    repo = await api.get(repo_path(namespace, name))
    passages: dict[str, None] = {}
    for sibling in repo["siblings"]:
        if not sibling["rfilename"].endswith(".jsonl"):
            continue
        url = f"/v1/hf/datasets/{namespace}/{name}/resolve/main/{sibling['rfilename']}"
        text = (await api.call("GET", url)).text
        for line in filter(str.strip, text.splitlines()):
            passages.update(dict.fromkeys(row_passages(json.loads(line))))
    return repo["sha"], list(passages)[:MAX_PASSAGES]


def row_passages(row: dict) -> list[str]:
    """A training row's passages: ``pos_doc`` and ``neg_doc``, each a string or a list."""
    found = []
    for key in ("pos_doc", "neg_doc"):
        value = row.get(key) or []
        for item in [value] if isinstance(value, str | dict) else value:
            text = item.get("text") if isinstance(item, dict) else item
            if isinstance(text, str) and text.strip():
                found.append(text)
    return found


async def embed(api, model: str, texts: list[str], input_type: str) -> np.ndarray:
    body = {"model": model, "input": texts, "input_type": input_type, "truncate": "END"}
    data = (await api.post("/nim/v1/embeddings", json=body))["data"]
    vectors = np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


async def passage_vectors(api, deployment: dict, sha: str, passages: list[str]) -> np.ndarray:
    """The passages' vectors, embedded once per deployment (its id: a redeployed name is a new model)
    and dataset commit."""
    model = deployment["models"][0]
    key = (deployment["id"], sha)
    if key not in _vectors:
        batches = [passages[i : i + 64] for i in range(0, len(passages), 64)]
        _vectors[key] = np.concatenate([await embed(api, model, b, "passage") for b in batches])
        while len(_vectors) > CACHED_CORPORA:
            _vectors.popitem(last=False)
    return _vectors[key]


async def search(api, deployment: dict, dataset: str, query: str) -> list[dict]:
    """The top passages of ``dataset`` for ``query`` under the ``deployment``'s model, with cosine scores."""
    from embedforge.measures.search import top_k

    sha, passages = await corpus(api, dataset)
    if not passages:
        return []
    vectors = await passage_vectors(api, deployment, sha, passages)
    query_vector = await embed(api, deployment["models"][0], [query], "query")
    scores, rows = top_k(query_vector, vectors, TOP)
    return [{"passage": passages[r], "score": float(s)} for s, r in zip(scores[0], rows[0], strict=True)]
