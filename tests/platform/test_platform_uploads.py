"""Request bodies on a real platform with small limits: counted as they arrive and refused past the
limit without being held in memory, streamed to a temporary file and renamed into place only when
complete (a client gone mid-body or a bad line leaves nothing), and LFS uploads behind a signature."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from huggingface_hub import HfApi
from test_platform_datastore import lfs_upload_url

from embedforge.platform.errors import InsufficientStorage
from embedforge.platform.uploads import decode_to, stream_to

LIMIT, LFS_LIMIT = 2_000_000, 6_000_000
REPO = "ns/up"


@pytest.fixture(scope="module")
def plat(platform_factory):
    os.environ.update(EMBEDFORGE_MAX_BODY_BYTES=str(LIMIT), EMBEDFORGE_MAX_LFS_BYTES=str(LFS_LIMIT))
    try:
        proc = platform_factory("sqlite").start()
    finally:
        del os.environ["EMBEDFORGE_MAX_BODY_BYTES"], os.environ["EMBEDFORGE_MAX_LFS_BYTES"]
    HfApi(endpoint=f"{proc.url}/v1/hf").create_repo(REPO, repo_type="dataset")
    return proc


def _chunks(size: int, chunk: int = 64 * 1024):
    for start in range(0, size, chunk):
        yield b"x" * min(chunk, size - start)


def _rss(plat) -> int:
    return psutil.Process(plat.process.pid).memory_info().rss


def _commit_lines(*files: tuple[str, str]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "test", "description": ""}}]
    lines += [{"key": "file", "value": {"path": p, "encoding": "base64", "content": c}} for p, c in files]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _repo_files(plat) -> list[str]:
    return HfApi(endpoint=f"{plat.url}/v1/hf").list_repo_files(REPO, repo_type="dataset")


def _leftovers(plat) -> list[Path]:
    """Temporary files of uploads: spooled bodies, staging folders, half-written LFS objects."""
    uploads, lfs = plat.data_dir / "uploads", plat.data_dir / "datastore" / "lfs"
    spooled = list(uploads.iterdir()) if uploads.exists() else []
    return spooled + (list(lfs.glob(".*.tmp")) if lfs.exists() else [])


def test_a_start_removes_what_a_crash_left_mid_upload(platform_factory, tmp_path):
    data = tmp_path / "data"
    (data / "uploads" / "3f2a").mkdir(parents=True)
    (data / "uploads" / "3f2a" / "7").write_bytes(b"staged")
    (data / "uploads" / "9c1e.body").write_bytes(b"spooled")
    (data / "datastore" / "lfs").mkdir(parents=True)
    (data / "datastore" / "lfs" / ".abc.1234.tmp").write_bytes(b"half")
    kept = data / "datastore" / "lfs" / hashlib.sha256(b"whole").hexdigest()
    kept.write_bytes(b"whole")
    proc = platform_factory("sqlite", data_dir=data).start()
    assert _leftovers(proc) == []
    assert kept.read_bytes() == b"whole"  # a complete object stays
    assert "removed 3 upload(s)" in proc.log_text()


def _until_no_leftovers(plat, timeout: float = 30) -> list[Path]:
    """The server cleans up once it notices the client is gone: wait for that, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while _leftovers(plat) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _leftovers(plat)


@pytest.mark.parametrize("target", ["commit", "lfs"])
def test_a_chunked_body_far_over_the_limit_is_413_and_never_in_memory(plat, target):
    limit = LIMIT if target == "commit" else LFS_LIMIT
    size = 8 * limit
    oid = hashlib.sha256(b"never").hexdigest()
    url = (
        f"{plat.url}/v1/hf/api/datasets/{REPO}/commit/main"
        if target == "commit"
        else lfs_upload_url(plat.url, REPO, oid, size)
    )
    method = "POST" if target == "commit" else "PUT"
    before = _rss(plat)
    r = httpx.request(method, url, content=_chunks(size), timeout=60)
    grown = _rss(plat) - before
    assert r.status_code == 413, r.text
    assert f"exceeds the limit of {limit}" in r.json()["detail"]
    assert grown < size // 2, f"the platform grew by {grown} bytes for a {size}-byte body"
    assert not (plat.data_dir / "datastore" / "lfs" / oid).exists()
    assert _until_no_leftovers(plat) == []


def test_a_commit_under_the_limit_is_written_and_its_spool_removed(plat):
    content = os.urandom(LIMIT // 2)
    body = _commit_lines(("data/blob.bin", base64.b64encode(content).decode()))
    r = httpx.post(f"{plat.url}/v1/hf/api/datasets/{REPO}/commit/main", content=iter([body]))
    assert r.status_code == 200, r.text
    assert (plat.data_dir / f"datastore/datasets/{REPO}/data/blob.bin").read_bytes() == content
    assert "data/blob.bin" in _repo_files(plat)
    assert _leftovers(plat) == []


def test_a_bad_line_writes_nothing_of_the_commit(plat):
    body = _commit_lines(("good.txt", base64.b64encode(b"fine").decode()), ("bad.txt", "not base64!"))
    r = httpx.post(f"{plat.url}/v1/hf/api/datasets/{REPO}/commit/main", content=body)
    assert r.status_code == 400 and r.json()["detail"].startswith("commit line 3: 'bad.txt': ")
    assert not (plat.data_dir / f"datastore/datasets/{REPO}/good.txt").exists()
    assert "good.txt" not in _repo_files(plat)
    assert _leftovers(plat) == []


def _send_part_and_vanish(url: str, method: str, path: str, declared: int, sent: int) -> None:
    """A client that declares ``declared`` bytes, sends ``sent`` of them and closes the connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {declared}\r\n\r\n"
        sock.sendall(head.encode())
        for chunk in _chunks(sent):
            sock.sendall(chunk)


@pytest.mark.parametrize("target", ["commit", "lfs"])
def test_a_client_gone_mid_upload_leaves_no_file(plat, target):
    oid = hashlib.sha256(b"half").hexdigest()
    if target == "commit":
        path = f"/v1/hf/api/datasets/{REPO}/commit/main"
    else:
        href = urlsplit(lfs_upload_url(plat.url, REPO, oid, LFS_LIMIT // 2))
        path = f"{href.path}?{href.query}"
    _send_part_and_vanish(plat.url, "POST" if target == "commit" else "PUT", path, LIMIT - 1, LIMIT // 2)
    assert _until_no_leftovers(plat) == []
    assert not (plat.data_dir / "datastore" / "lfs" / oid).exists()
    assert httpx.get(f"{plat.url}/health").status_code == 200


def test_lfs_uploads_need_a_valid_unexpired_signature(plat):
    content = b"an lfs object"
    oid = hashlib.sha256(content).hexdigest()
    href = lfs_upload_url(plat.url, REPO, oid, len(content))
    base = href.split("?")[0]
    for bad in (base, f"{base}?expires=9999999999&sig={'0' * 64}", href.replace("expires=", "expires=1")):
        r = httpx.put(bad, content=content)
        assert r.status_code == 401 and "signature" in r.json()["detail"], bad
    assert not (plat.data_dir / "datastore" / "lfs" / oid).exists()
    assert httpx.put(href, content=content).status_code == 200
    assert (plat.data_dir / "datastore" / "lfs" / oid).read_bytes() == content


async def _one(block: bytes):
    yield block


def test_a_full_disk_is_a_507(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full data disk does."""
    import anyio

    with pytest.raises(InsufficientStorage) as err:
        anyio.run(stream_to, Path("/dev/full"), _one(b"x" * 4096))
    assert err.value.status_code == 507 and "full" in str(err.value)
    with pytest.raises(InsufficientStorage):
        decode_to({"path": "a.bin", "content": base64.b64encode(b"y" * 4096).decode()}, Path("/dev/full"), 2)
