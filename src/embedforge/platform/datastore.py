"""The data store's files: dataset repos under ``DATA_DIR/datastore/<type>s/<ns>/<name>/``, written atomically.

Each repo keeps a small index (path -> size, sha256) and its last commit id in its entity row, so
listings and downloads answer without hashing files again. A path that would leave the repo folder
(``..``, absolute, backslashes, empty parts) is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import time
from pathlib import Path, PurePosixPath

from embedforge.atomic import atomic_write
from embedforge.platform.errors import BadRequest
from embedforge.platform.uploads import stream_to

REPO_TYPES = ("dataset", "model")


def repo_dir(data_dir: Path, repo_type: str, namespace: str, name: str) -> Path:
    for part, label in ((namespace, "namespace"), (name, "repo name")):
        safe_part(part, label)
    return data_dir / "datastore" / f"{repo_type}s" / namespace / name


def safe_part(part: str, label: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
        raise BadRequest(f"invalid {label} '{part}'")
    return part


def safe_path(root: Path, path_in_repo: str) -> Path:
    """``root/path_in_repo``, or a 400 when the path is absolute, has ``..`` or would leave ``root``."""
    if not path_in_repo or "\\" in path_in_repo or "\x00" in path_in_repo:
        raise BadRequest(f"invalid path in repo '{path_in_repo}'")
    pure = PurePosixPath(path_in_repo)
    if pure.is_absolute() or any(p in ("..", ".", "") for p in path_in_repo.split("/")):
        raise BadRequest(f"path '{path_in_repo}' must stay inside the repo (no '..', no leading '/')")
    target = (root / pure).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BadRequest(f"path '{path_in_repo}' leaves the repo")
    return target


def delete_path(root: Path, path_in_repo: str, files: dict[str, dict]) -> None:
    """Remove a file, or every file under a folder, from disk and from ``files``."""
    target = safe_path(root, path_in_repo.rstrip("/"))
    prefix = path_in_repo.rstrip("/") + "/"
    for path in [p for p in files if p == path_in_repo or p.startswith(prefix)]:
        files.pop(path)
        (root / path).unlink(missing_ok=True)
    if target.is_file():
        target.unlink()


def tree(files: dict[str, dict], folder: str, recursive: bool) -> list[dict]:
    """huggingface_hub's tree entries (files and folders) under ``folder``."""
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    entries: dict[str, dict] = {}
    for path, info in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            sub = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(sub, {"type": "directory", "path": sub, "oid": _oid(sub)})
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[path] = {
                "type": "file",
                "path": path,
                "size": info["size"],
                "oid": info["sha256"][:40],
                "lfs": None,
            }
    return list(entries.values())


def _oid(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def hf_repo(url: str) -> tuple[str, str, str]:
    """``hf://datasets/ns/name[/folder]`` -> (``dataset``, ``ns/name``, ``folder`` or "")."""
    parts = url.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 3 or parts[0] not in ("datasets", "models"):
        raise BadRequest(f"files_url '{url}' must look like hf://datasets/namespace/name")
    return parts[0][:-1], "/".join(parts[1:3]), "/".join(parts[3:])


def files_url_dir(data_dir: Path, url: str) -> Path:
    """The folder behind a ``files_url``: ``hf://datasets/ns/name`` (a data store repo, optionally with a
    sub-folder) or ``file://NAME/`` (an operator's folder under ``DATA_DIR/beir/NAME``)."""
    if url.startswith("hf://"):
        repo_type, repo_id, folder = hf_repo(url)
        root = repo_dir(data_dir, repo_type, *repo_id.split("/"))
        return safe_path(root, folder) if folder else root
    if url.startswith("file://"):
        name = url[len("file://") :].strip("/")
        return safe_path(data_dir / "beir", name)
    raise BadRequest(f"files_url '{url}' must start with hf:// or file://")


# -------------------------------------------------------------------------------------- LFS objects


def upload_mode(size: int, max_body_bytes: int) -> str:
    """Inline ("regular") whenever the file fits a commit body as base64: huggingface_hub with hf_xet
    (its default) sends "lfs" files only to Xet storage, which this store does not speak. Bigger files go
    through git-lfs' basic transfer, which clients without hf_xet (``HF_HUB_DISABLE_XET=1``) use."""
    return "regular" if size * 4 // 3 + 4096 < max_body_bytes else "lfs"


def lfs_dir(data_dir: Path) -> Path:
    return data_dir / "datastore" / "lfs"


def check_oid(oid: str) -> str:
    if len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
        raise BadRequest(f"LFS oid must be a sha256 hex digest, got '{oid[:80]}'")
    return oid


def sign(secret: bytes, oid: str, expires: int) -> str:
    """The signature of an LFS upload URL: the object and the URL's expiry, under the platform's secret."""
    return hmac.new(secret, f"{oid}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed(secret: bytes, oid: str, expires: str, sig: str) -> bool:
    """True for a signature ``sign`` made that has not expired."""
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(sig, sign(secret, oid, int(expires)))


def lfs_object(data_dir: Path, oid: str) -> Path:
    path = lfs_dir(data_dir) / check_oid(oid)
    if not path.exists():
        raise BadRequest(f"LFS object {oid} was never uploaded")
    return path


async def receive_lfs_object(data_dir: Path, oid: str, chunks) -> None:
    """Stream an upload to a temporary file; keep it (renamed to its oid) only when its sha256 is ``oid``."""
    digest = hashlib.sha256()
    with atomic_write(lfs_dir(data_dir) / oid) as tmp:
        await stream_to(tmp, chunks, digest)
        if digest.hexdigest() != oid:
            raise BadRequest(f"uploaded content has sha256 {digest.hexdigest()}, not {oid}")


def place_lfs_object(root: Path, path_in_repo: str, source: Path) -> dict:
    target = safe_path(root, path_in_repo)
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)
    return {"size": target.stat().st_size, "sha256": source.name}
