"""The host folders the platform may read models from: its data dir, the operator's ``--allow-path``
folders (and ``EMBEDFORGE_ALLOW_PATHS``) and the base-model folders it registers itself at start.

A client names a folder in a target's ``model_path`` / ``model_uri`` or a model's ``file://`` artifact;
without this check any folder of the host could be trained on, exported and served. The path is
resolved first, so ``..`` and symlinks are judged by where they lead.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedforge.platform.errors import BadRequest
from embedforge.platform.settings import Settings


def is_local(value: str | None) -> bool:
    """A ``file://`` URL or a bare path (anything else, e.g. ``ngc://``, names no host folder)."""
    return bool(value) and ("://" not in value or value.startswith("file://"))


def confined(settings: Settings, value: str, field: str) -> Path:
    """The resolved folder behind ``value`` (a path or ``file://`` URL), or a 400 naming ``field``."""
    raw = value.removeprefix("file://")
    if not raw or "\x00" in raw or not os.path.isabs(raw):
        raise BadRequest(f"{field}: '{value}' must be an absolute path (or file:// + an absolute path)")
    path = Path(raw).resolve()
    if any(path.is_relative_to(root) for root in settings.allowed_roots()):
        return path
    raise BadRequest(
        f"{field}: '{value}' is outside the folders the platform may read "
        "(its data dir and the --allow-path / EMBEDFORGE_ALLOW_PATHS folders)"
    )
