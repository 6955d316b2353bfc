"""The data store: huggingface_hub's repo API under ``/v1/hf`` and NeMo's ``/v1/datastore/namespaces``.

Enough of the Hub protocol for ``HfApi(endpoint=URL + "/v1/hf")``: ``create_repo``, ``upload_file`` /
``upload_folder`` (preupload + an NDJSON commit of base64 files sent inline, the protocol's "regular"
mode; a file too big for a commit body goes through git-lfs' basic transfer), ``list_repo_files`` /
``list_repo_tree``, ``repo_info`` and ``hf_hub_download``. Bodies are read (or streamed to disk) on the
event loop; the handlers' database and file work runs in FastAPI's thread pool.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from embedforge.platform import datastore as files
from embedforge.platform import uploads
from embedforge.platform.deps import DB, Config
from embedforge.platform.errors import BadRequest, NotFound, Unauthorized
from embedforge.platform.store import records

router = APIRouter(tags=["datastore"])
_commit_lock = threading.Lock()  # one commit at a time: each rewrites its repo's file index
REPO_KIND = "hf_repo"
LFS_URL_SECONDS = 3600  # how long an LFS upload URL stays valid
NS_KIND = "datastore_namespace"


# ------------------------------------------------------------------------------------------- namespaces


@router.post("/v1/datastore/namespaces", status_code=201)
def create_namespace(namespace: Annotated[str, Form()], db: DB) -> dict:
    files.safe_part(namespace, "namespace")
    row = records.create(db, NS_KIND, "", namespace, {"namespace": namespace}, "dsns")
    return _namespace(row)


@router.get("/v1/datastore/namespaces/{namespace}")
def get_namespace(namespace: str, db: DB) -> dict:
    return _namespace(records.get(db, NS_KIND, "", namespace))


@router.delete("/v1/datastore/namespaces/{namespace}", status_code=204)
def delete_namespace(namespace: str, db: DB) -> Response:
    records.delete(db, records.get(db, NS_KIND, "", namespace))
    return Response(status_code=204)


def _namespace(row) -> dict:
    return {
        "namespace": row.name,
        "created_at": records.iso(row.created_at),
        "updated_at": records.iso(row.updated_at),
    }


# ---------------------------------------------------------------------------------------------- repos


@router.post("/v1/hf/api/repos/create")
def create_repo(body: JsonBody, db: DB) -> JSONResponse:
    repo_type = body.get("type") or "model"
    if repo_type not in files.REPO_TYPES:
        raise BadRequest(f"repo type '{repo_type}' is not served here (dataset or model)")
    namespace, name = body.get("organization") or "default", body.get("name") or ""
    files.safe_part(namespace, "organization")
    files.safe_part(name, "name")
    repo_id = f"{namespace}/{name}"
    if records.find(db, REPO_KIND, repo_type, repo_id):
        return JSONResponse(
            {"error": f"You already created this {repo_type} repo", "url": _url(repo_type, repo_id)}, 409
        )
    records.create(db, REPO_KIND, repo_type, repo_id, {"files": {}, "sha": _sha()}, "repo")
    return JSONResponse({"url": _url(repo_type, repo_id), "name": repo_id, "id": repo_id})


@router.get("/v1/hf/api/{repo_type}s/{namespace}/{name}")
@router.get("/v1/hf/api/{repo_type}s/{namespace}/{name}/revision/{revision}")
def repo_info(repo_type: str, namespace: str, name: str, db: DB, revision: str = "main"):
    row = _repo(db, repo_type, namespace, name, revision)
    return {
        "id": row.name,
        "sha": row.body["sha"],
        "private": False,
        "siblings": [{"rfilename": p, "size": f["size"]} for p, f in sorted(row.body["files"].items())],
        "lastModified": records.iso(row.updated_at),
        "createdAt": records.iso(row.created_at),
    }


@router.delete("/v1/hf/api/repos/delete")
def delete_repo(body: JsonBody, db: DB, cfg: Config):
    repo_type = body.get("type") or "model"
    row = _repo(db, repo_type, body.get("organization") or "default", body.get("name") or "", "main")
    root = files.repo_dir(cfg.data_dir, repo_type, *row.name.split("/"))
    for path in list(row.body["files"]):
        (root / path).unlink(missing_ok=True)
    records.delete(db, row)
    return {}


@router.post("/v1/hf/api/{repo_type}s/{namespace}/{name}/preupload/{revision}")
def preupload(repo_type: str, namespace: str, name: str, revision: str, body: JsonBody, db: DB, cfg: Config):
    _repo(db, repo_type, namespace, name, revision)
    listed = body.get("files")
    if not isinstance(listed, list):
        raise BadRequest("preupload body needs 'files': a list of {path, size, sample}")
    for entry in listed:
        files.safe_path(files.repo_dir(cfg.data_dir, repo_type, namespace, name), str(entry.get("path", "")))
    return {
        "files": [
            {
                "path": f["path"],
                "uploadMode": files.upload_mode(int(f.get("size") or 0), cfg.max_body_bytes),
                "shouldIgnore": False,
            }
            for f in listed
        ]
    }


@router.post("/v1/hf/{repo_type}s/{namespace}/{repo_git}/info/lfs/objects/batch")
def lfs_batch(
    repo_type: str, namespace: str, repo_git: str, body: JsonBody, request: Request, db: DB, cfg: Config
):
    """git-lfs batch API (basic transfer): a signed, expiring upload URL for each object the store lacks."""
    _repo(db, repo_type, namespace, repo_git.removesuffix(".git"), "main")
    if body.get("operation") != "upload":
        raise BadRequest("only the LFS 'upload' operation is served")
    expires = int(time.time()) + LFS_URL_SECONDS
    objects = []
    for obj in body.get("objects") or []:
        oid, size = str(obj.get("oid", "")), int(obj.get("size") or 0)
        files.check_oid(oid)
        entry = {"oid": oid, "size": size, "authenticated": True}
        if not (files.lfs_dir(cfg.data_dir) / oid).exists():
            query = f"expires={expires}&sig={files.sign(cfg.upload_secret, oid, expires)}"
            href = f"{str(request.base_url).rstrip('/')}/v1/hf/lfs-objects/{oid}?{query}"
            entry["actions"] = {"upload": {"href": href, "expires_in": LFS_URL_SECONDS}}
        objects.append(entry)
    return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}


@router.put("/v1/hf/lfs-objects/{oid}")
async def lfs_put(oid: str, request: Request, cfg: Config):
    """The upload URL the batch call hands out. LFS clients send no credentials here, so the URL's
    signature (made only for a caller the batch call let in) stands for the API key; the API key itself
    is accepted too. The body limit is ``max_lfs_bytes``."""
    files.check_oid(oid)
    params = request.query_params
    keyed = cfg.api_key and hmac.compare_digest(
        request.headers.get("authorization", ""), f"Bearer {cfg.api_key}"
    )
    if not keyed and not files.signed(
        cfg.upload_secret, oid, params.get("expires", ""), params.get("sig", "")
    ):
        raise Unauthorized("bad, expired or missing upload signature (get the URL from the LFS batch call)")
    await files.receive_lfs_object(cfg.data_dir, oid, request.stream())
    return Response(status_code=200)


@router.post("/v1/hf/api/{repo_type}s/{namespace}/{name}/commit/{revision}")
def commit(repo_type: str, namespace: str, name: str, revision: str, body: SpooledBody, db: DB, cfg: Config):
    """Apply an NDJSON commit: every line is checked and every inline file decoded into a staging folder
    first; only then, under the commit lock, are the files renamed into the repo and the index updated."""
    row = _repo(db, repo_type, namespace, name, revision)
    root = files.repo_dir(cfg.data_dir, repo_type, namespace, name)
    try:
        with uploads.temp_folder(cfg.data_dir) as staging, uploads.disk_full_is_507("the commit"):
            writes = _stage(body, root, staging, cfg)
            with _commit_lock:
                db.refresh(row)
                index = _apply(root, writes, dict(row.body["files"]))
                sha = _sha()
                records.update(db, row, {"files": index, "sha": sha})
    finally:  # before the answer: the dependency's own clean-up runs only after it is sent
        body.unlink(missing_ok=True)
    return {"commitUrl": f"{_url(repo_type, row.name)}/commit/{sha}", "commitOid": sha, "success": True}


def _stage(body: Path, root: Path, staging: Path, cfg) -> list[tuple[str, str, Path | None, dict | None]]:
    """(operation, path in repo, staged or LFS file, index entry) per file line, checked and decoded."""
    writes = []
    for n, op in uploads.ndjson_lines(body):
        key, value = op["key"], op["value"]
        if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
            continue
        path = str(value.get("path", ""))
        files.safe_path(root, path)
        if key == "file":
            staged = staging / str(n)
            writes.append((key, path, staged, uploads.decode_to(value, staged, n)))
        elif key == "lfsFile":
            writes.append((key, path, files.lfs_object(cfg.data_dir, str(value.get("oid", ""))), None))
        else:
            writes.append((key, path, None, None))
    return writes


def _apply(root: Path, writes: list, index: dict) -> dict:
    for key, path, source, entry in writes:
        if key == "file":
            target = files.safe_path(root, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
            index[path] = entry
        elif key == "lfsFile":
            index[path] = files.place_lfs_object(root, path, source)
        else:
            files.delete_path(root, path, index)
    return index


@router.get("/v1/hf/api/{repo_type}s/{namespace}/{name}/tree/{revision}")
@router.get("/v1/hf/api/{repo_type}s/{namespace}/{name}/tree/{revision}/{folder:path}")
def list_tree(
    repo_type: str,
    namespace: str,
    name: str,
    revision: str,
    request: Request,
    db: DB,
    folder: str = "",
):
    row = _repo(db, repo_type, namespace, name, revision)
    recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
    return files.tree(row.body["files"], folder, recursive)


@router.api_route(
    "/v1/hf/{repo_type}s/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"]
)
def download(
    repo_type: str,
    namespace: str,
    name: str,
    revision: str,
    path: str,
    db: DB,
    cfg: Config,
):
    row = _repo(db, repo_type, namespace, name, revision)
    info = row.body["files"].get(path)
    target = files.safe_path(files.repo_dir(cfg.data_dir, repo_type, namespace, name), path)
    if info is None or not target.is_file():
        raise NotFound(f"{path} not found in {repo_type} repo {row.name}")
    headers = {"ETag": f'"{info["sha256"]}"', "X-Repo-Commit": row.body["sha"]}
    return FileResponse(target, headers=headers, media_type="application/octet-stream")


# ------------------------------------------------------------------------------------------------ helpers


def _repo(db: Session, repo_type: str, namespace: str, name: str, revision: str):
    if repo_type not in files.REPO_TYPES:
        raise NotFound(f"repo type '{repo_type}' is not served here")
    if revision not in ("main", "HEAD"):
        row = records.find(db, REPO_KIND, repo_type, f"{namespace}/{name}")
        if row is None or row.body["sha"] != revision:
            raise NotFound(f"revision '{revision}' not found (repos have one branch, main)")
        return row
    return records.get(db, REPO_KIND, repo_type, f"{namespace}/{name}")


def _url(repo_type: str, repo_id: str) -> str:
    return f"{repo_type}s/{repo_id}" if repo_type != "model" else repo_id


def _sha() -> str:
    return secrets.token_hex(20)


async def _json(request: Request) -> dict:
    """The JSON object body, read on the event loop before the (threaded) handler runs."""
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as err:
        raise BadRequest(f"body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def _spooled(request: Request, cfg: Config) -> AsyncIterator[Path]:
    """The body streamed to a file under DATA_DIR/uploads (the limit counted as it arrives); removed here
    when the stream fails, else by the handler before it answers."""
    path = uploads.uploads_dir(cfg.data_dir) / f"{secrets.token_hex(8)}.body"
    try:
        await uploads.stream_to(path, request.stream())
        yield path
    finally:
        path.unlink(missing_ok=True)


JsonBody = Annotated[dict, Depends(_json)]
SpooledBody = Annotated[Path, Depends(_spooled)]
