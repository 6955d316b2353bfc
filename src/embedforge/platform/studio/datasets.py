"""Datasets: the list, each one's files, and uploading JSONL files from the browser.

An upload is read with the same reader a customization job uses (``read_inline_jsonl``) before anything
is stored, so a bad row is shown at once with its file, line and field instead of failing a job later.
Stored files go through the data store's Hub commit route and the entity store, as the SDK's would.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from embedforge.platform.studio.api import ApiError
from embedforge.platform.studio.web import Api, go, render

router = APIRouter()
SPLITS = ("training", "validation")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # what the upload form's fields accept, checked again here


def repo_path(namespace: str, name: str) -> str:
    return f"/v1/hf/api/datasets/{namespace}/{name}"


@router.get("/datasets")
async def dataset_list(request: Request, api: Api):
    datasets = await api.every("/v1/datasets")
    return render(request, "datasets.html", datasets=datasets, splits=SPLITS, errors=[], values={})


async def dataset_files(api, namespace: str, name: str) -> list[dict]:
    """The dataset's files as the data store lists them (an entity without a repo has none)."""
    repo = await api.find(repo_path(namespace, name))
    return (repo or {}).get("siblings", [])


@router.get("/datasets/{namespace}/{name}")
async def dataset_page(request: Request, api: Api, namespace: str, name: str):
    dataset = await api.get(f"/v1/datasets/{namespace}/{name}")
    files = await dataset_files(api, namespace, name)
    return render(request, "dataset.html", dataset=dataset, files=files, splits=SPLITS, errors=[])


@router.post("/datasets/{namespace}/{name}/delete")
async def delete_dataset(api: Api, namespace: str, name: str):
    """The dataset's entity, then its data store repo (its files) if it has one."""
    await api.delete(f"/v1/datasets/{namespace}/{name}")
    if await api.find(repo_path(namespace, name)) is not None:
        repo = {"type": "dataset", "organization": namespace, "name": name}
        await api.delete("/v1/hf/api/repos/delete", json=repo)
    return go("/datasets")


def check_jsonl(filename: str, content: bytes) -> dict | None:
    """The first bad row of an upload as {file, line, field, message}, or None when every row reads."""
    from embedforge.data.formats import DataFormatError, read_inline_jsonl

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(filename).name
        path.write_bytes(content)
        try:
            read_inline_jsonl(path)
        except DataFormatError as err:
            return {"file": filename, "line": err.line, "field": err.field, "message": err.message}
    return None


async def read_uploads(form) -> list[tuple[str, bytes]]:
    uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
    return [(Path(f.filename).name, await f.read()) for f in uploads]


def field_problems(namespace: str, name: str, split: str) -> list[dict]:
    """The form's own fields: a name that would not stay one path part is refused before any call."""
    problems = [
        {"file": "", "line": None, "field": field, "message": "letters, digits and . _ + - only"}
        for field, value in (("namespace", namespace), ("name", name))
        if not NAME.fullmatch(value)
    ]
    if split not in SPLITS:
        problems.append(
            {"file": "", "line": None, "field": "split", "message": f"one of {', '.join(SPLITS)}"}
        )
    return problems


def upload_problems(uploads: list[tuple[str, bytes]]) -> list[dict]:
    if not uploads:
        return [{"file": "", "line": None, "field": None, "message": "choose at least one .jsonl file"}]
    problems = []
    for filename, content in uploads:
        if not filename.endswith(".jsonl"):
            problems.append({"file": filename, "line": None, "field": None, "message": "not a .jsonl file"})
        elif problem := check_jsonl(filename, content):
            problems.append(problem)
    return problems


async def ensure_dataset(api, namespace: str, name: str) -> None:
    """The namespace (entity and data store), the Hub repo and the dataset entity, each once."""
    if await api.find(f"/v1/namespaces/{namespace}") is None:
        await api.post("/v1/namespaces", json={"id": namespace})
    if await api.find(f"/v1/datastore/namespaces/{namespace}") is None:
        await api.post("/v1/datastore/namespaces", data={"namespace": namespace})
    if await api.find(repo_path(namespace, name)) is None:
        repo = {"type": "dataset", "organization": namespace, "name": name}
        await api.post("/v1/hf/api/repos/create", json=repo)
    if await api.find(f"/v1/datasets/{namespace}/{name}") is None:
        files_url = f"hf://datasets/{namespace}/{name}"
        await api.post("/v1/datasets", json={"name": name, "namespace": namespace, "files_url": files_url})


def commit_body(split: str, uploads: list[tuple[str, bytes]]) -> bytes:
    """The Hub commit (NDJSON: a header, then each file inline as base64) that stores the uploads."""
    lines = [{"key": "header", "value": {"summary": f"studio upload to {split}/"}}]
    for filename, content in uploads:
        encoded = base64.b64encode(content).decode()
        lines.append({"key": "file", "value": {"path": f"{split}/{filename}", "content": encoded}})
    return "\n".join(json.dumps(line) for line in lines).encode()


@router.post("/datasets")
async def upload(request: Request, api: Api):
    form = await request.form()
    values = {k: str(form.get(k) or "") for k in ("namespace", "name", "split")}
    namespace, name, split = values["namespace"] or "default", values["name"], values["split"]
    uploads = await read_uploads(form)
    problems = field_problems(namespace, name, split) or upload_problems(uploads)
    if problems:
        return await show_problems(request, api, values, problems)
    try:
        await ensure_dataset(api, namespace, name)
        await api.post(f"{repo_path(namespace, name)}/commit/main", content=commit_body(split, uploads))
    except ApiError as err:
        messages = [{"file": "", "line": None, "field": None, "message": m} for m in err.messages()]
        return await show_problems(request, api, values, messages, err.status)
    return go(f"/datasets/{namespace}/{name}")


async def show_problems(request, api, values: dict, problems: list[dict], status: int = 422):
    datasets = await api.every("/v1/datasets")
    return render(
        request, "datasets.html", status, datasets=datasets, splits=SPLITS, errors=problems, values=values
    )
