"""Request bodies to disk: streamed in blocks off the event loop, staged under the data dir, renamed into
place only when complete.

The size limit is counted as bytes arrive (``app.Guard``), so a body is never held in memory: a commit's
NDJSON is spooled to ``DATA_DIR/uploads``, each inline file is base64-decoded block by block into a
staging folder there, and only a commit whose every line checked out is renamed into its repo. A client
that goes away mid-body, a bad line or a full disk (507) leaves no file behind.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import secrets
import shutil
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from embedforge.platform.errors import BadRequest, InsufficientStorage

BLOCK = 1 << 20  # bytes handed to a worker thread per disk write
B64_BLOCK = 4 << 18  # base64 characters decoded at a time (a multiple of 4)


def uploads_dir(data_dir: Path) -> Path:
    folder = data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def clear_leftovers(data_dir: Path) -> int:
    """At start (no request in flight): remove what uploads cut off by a crash left behind, the spooled
    bodies and staging folders under DATA_DIR/uploads and half-written LFS objects; returns the count."""
    uploads, lfs = data_dir / "uploads", data_dir / "datastore" / "lfs"
    found = [*(uploads.iterdir() if uploads.is_dir() else ()), *(lfs.glob(".*.tmp") if lfs.is_dir() else ())]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(found)


@contextmanager
def disk_full_is_507(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise InsufficientStorage(f"the data disk is full (writing {what}); nothing was kept") from err
        raise


def _write(out, digest, block: bytes) -> None:
    if digest is not None:
        digest.update(block)
    out.write(block)


async def stream_to(path: Path, chunks: AsyncIterable[bytes], digest=None) -> int:
    """Write a byte stream to ``path`` in ``BLOCK``-sized writes, each in a worker thread so the event
    loop never waits on the disk; ``digest`` (a hashlib object) sees every byte. Returns the size."""
    size, buffer = 0, bytearray()
    with disk_full_is_507(path.name), open(path, "wb") as out:
        async for chunk in chunks:
            buffer += chunk
            size += len(chunk)
            if len(buffer) >= BLOCK:
                await anyio.to_thread.run_sync(_write, out, digest, bytes(buffer))
                buffer.clear()
        await anyio.to_thread.run_sync(_write, out, digest, bytes(buffer))
    return size


@contextmanager
def temp_folder(data_dir: Path) -> Iterator[Path]:
    """A fresh folder under ``DATA_DIR/uploads`` (same disk as the repos: a rename moves a file in),
    removed on the way out."""
    folder = uploads_dir(data_dir) / secrets.token_hex(8)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ndjson_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, operation) for each non-empty line of a spooled commit body."""
    with path.open("rb") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                op = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BadRequest(f"commit line {n} is not JSON: {err}") from err
            if not isinstance(op, dict) or "key" not in op or not isinstance(op.get("value"), dict):
                raise BadRequest(f"commit line {n} needs 'key' and an object 'value'")
            yield n, op


def decode_to(value: dict, target: Path, line: int) -> dict:
    """Decode a commit line's base64 ``content`` into ``target`` a block at a time; its index entry."""
    path = value.get("path")
    if value.get("encoding", "base64") != "base64":
        raise BadRequest(f"commit line {line}: '{path}': only base64 file content is accepted")
    content = value.get("content", "")
    if not isinstance(content, str):
        raise BadRequest(f"commit line {line}: '{path}': content must be a base64 string")
    digest, size = hashlib.sha256(), 0
    with disk_full_is_507(str(path)), target.open("wb") as out:
        for start in range(0, len(content), B64_BLOCK):
            try:
                block = base64.b64decode(content[start : start + B64_BLOCK], validate=True)
            except (ValueError, binascii.Error) as err:
                raise BadRequest(f"commit line {line}: '{path}': content is not valid base64") from err
            _write(out, digest, block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}
