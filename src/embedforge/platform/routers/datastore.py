"""The data store: huggingface_hub's repo API under ``/v1/hf`` and NeMo's ``/v1/datastore/namespaces``.

Enough of the Hub protocol for ``HfApi(endpoint=URL + "/v1/hf")``: ``create_repo``, ``upload_file`` /
``upload_folder`` (preupload + an NDJSON commit of base64 files; every file is sent inline, the
protocol's "regular" mode), ``list_repo_files`` / ``list_repo_tree``, ``repo_info`` and ``hf_hub_download``.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.orm import Session

from embedforge.platform import datastore as files
from embedforge.platform.deps import DB, Config
from embedforge.platform.errors import BadRequest, NotFound
from embedforge.platform.store import records

router = APIRouter(tags=["datastore"])
_commit_lock = threading.Lock()  # one commit at a time: each rewrites its repo's file index
REPO_KIND = "hf_repo"
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
async def create_repo(request: Request, db: DB) -> JSONResponse:
    body = await _json(request)
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
async def delete_repo(request: Request, db: DB, cfg: Config):
    body = await _json(request)
    repo_type = body.get("type") or "model"
    row = _repo(db, repo_type, body.get("organization") or "default", body.get("name") or "", "main")
    root = files.repo_dir(cfg.data_dir, repo_type, *row.name.split("/"))
    for path in list(row.body["files"]):
        (root / path).unlink(missing_ok=True)
    records.delete(db, row)
    return {}


@router.post("/v1/hf/api/{repo_type}s/{namespace}/{name}/preupload/{revision}")
async def preupload(
    repo_type: str, namespace: str, name: str, revision: str, request: Request, db: DB, cfg: Config
):
    _repo(db, repo_type, namespace, name, revision)
    body = await _json(request)
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
async def lfs_batch(repo_type: str, namespace: str, repo_git: str, request: Request, db: DB, cfg: Config):
    """git-lfs batch API (basic transfer): where to PUT each object the store does not have yet."""
    _repo(db, repo_type, namespace, repo_git.removesuffix(".git"), "main")
    body = await _json(request)
    if body.get("operation") != "upload":
        raise BadRequest("only the LFS 'upload' operation is served")
    objects = []
    for obj in body.get("objects") or []:
        oid, size = str(obj.get("oid", "")), int(obj.get("size") or 0)
        files.check_oid(oid)
        entry = {"oid": oid, "size": size, "authenticated": True}
        if not (files.lfs_dir(cfg.data_dir) / oid).exists():
            href = f"{str(request.base_url).rstrip('/')}/v1/hf/lfs-objects/{oid}?sig={files.sign(cfg.api_key, oid)}"
            entry["actions"] = {"upload": {"href": href}}
        objects.append(entry)
    return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}


@router.put("/v1/hf/lfs-objects/{oid}")
async def lfs_put(oid: str, request: Request, cfg: Config):
    """The upload href the batch call hands out (signed, since LFS clients send no credentials here)."""
    files.check_oid(oid)
    if cfg.api_key and not hmac.compare_digest(
        request.query_params.get("sig", ""), files.sign(cfg.api_key, oid)
    ):
        raise BadRequest("bad or missing upload signature")
    await files.receive_lfs_object(cfg.data_dir, oid, request.stream())
    return Response(status_code=200)


@router.post("/v1/hf/api/{repo_type}s/{namespace}/{name}/commit/{revision}")
async def commit(
    repo_type: str,
    namespace: str,
    name: str,
    revision: str,
    request: Request,
    db: DB,
    cfg: Config,
):
    row = _repo(db, repo_type, namespace, name, revision)
    root = files.repo_dir(cfg.data_dir, repo_type, namespace, name)
    operations = _ndjson(await request.body())
    writes: list[tuple[str, str, object]] = []  # checked and decoded before the first write
    for op in operations:
        key, value = op["key"], op["value"]
        if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
            continue
        path = str(value.get("path", ""))
        files.safe_path(root, path)
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise BadRequest(f"'{path}': only base64 file content is accepted")
            try:
                writes.append((key, path, base64.b64decode(value.get("content", ""), validate=True)))
            except ValueError as err:
                raise BadRequest(f"'{path}': content is not valid base64") from err
        elif key == "lfsFile":
            writes.append((key, path, files.lfs_object(cfg.data_dir, str(value.get("oid", "")))))
        else:
            writes.append((key, path, None))
    with _commit_lock:
        db.refresh(row)
        index = dict(row.body["files"])
        for key, path, payload in writes:
            if key == "file":
                index[path] = files.write_file(root, path, payload)
            elif key == "lfsFile":
                index[path] = files.place_lfs_object(root, path, payload)
            else:
                files.delete_path(root, path, index)
        sha = _sha()
        records.update(db, row, {"files": index, "sha": sha})
    return {"commitUrl": f"{_url(repo_type, row.name)}/commit/{sha}", "commitOid": sha, "success": True}


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
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as err:
        raise BadRequest(f"body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _ndjson(raw: bytes) -> list[dict]:
    operations = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            op = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadRequest(f"commit line {n} is not JSON: {err}") from err
        if not isinstance(op, dict) or "key" not in op or not isinstance(op.get("value"), dict):
            raise BadRequest(f"commit line {n} needs 'key' and an object 'value'")
        operations.append(op)
    return operations
