"""Atomic replacement of files and folders: readers see the old version or the whole new one, never half.

Every artifact embedforge writes goes through here, so a crash or a failed check never leaves a
half-written file, and an earlier result is replaced only once its successor is complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_write(path) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    The block creates a file or a folder at the yielded path. Readers of ``path`` see the old version or
    the complete new one. An existing folder is swapped (rename aside, rename in, delete old) because POSIX
    cannot atomically replace a non-empty directory; on any failure the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = tmp.with_suffix(".old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary sibling."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values as strings) through a temporary sibling."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
