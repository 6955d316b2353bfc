"""Where the platform keeps its state and how it is reached: flags first, then the environment."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "EMBEDFORGE_DATA_DIR"
DATABASE_URL_ENV = "EMBEDFORGE_DATABASE_URL"
API_KEY_ENV = "EMBEDFORGE_API_KEY"
MAX_BODY_ENV = "EMBEDFORGE_MAX_BODY_BYTES"
MAX_LFS_ENV = "EMBEDFORGE_MAX_LFS_BYTES"
NIM_PORT_ENV = "EMBEDFORGE_NIM_PORT"
ALLOW_PATHS_ENV = "EMBEDFORGE_ALLOW_PATHS"  # os.pathsep-separated, like PATH


@dataclass
class Settings:
    data_dir: Path
    database_url: str
    api_key: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024  # any request; a commit's files travel inline (base64) in it
    max_lfs_bytes: int = 4 * 1024 * 1024 * 1024  # one git-lfs object upload (files too big for a commit)
    base_models: list[str] = field(default_factory=list)  # extra model folders registered as targets
    allow_paths: list[Path] = field(default_factory=list)  # host folders models may be read from
    nim_port: int | None = None  # a second port answering the NIM surface at /v1, as NVIDIA's NIM_URL
    public_url: str | None = None  # how workers and deployments reach this platform; set by the server
    poll_seconds: float = 1.0  # how often the job runner looks for work and reads progress
    upload_secret: bytes = field(
        default_factory=lambda: secrets.token_bytes(32), repr=False
    )  # signs LFS URLs

    @classmethod
    def from_env(
        cls,
        data_dir: str | os.PathLike | None = None,
        database_url: str | None = None,
        api_key: str | None = None,
        base_models: list[str] | None = None,
        nim_port: int | None = None,
        allow_paths: list[str] | None = None,
    ) -> Settings:
        folder = data_dir or os.environ.get(DATA_DIR_ENV)
        if not folder:
            from embedforge.platform.errors import BadRequest

            raise BadRequest(f"the platform needs a data folder: --data-dir DIR or {DATA_DIR_ENV}")
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{folder / 'platform.db'}"
        return cls(
            data_dir=folder,
            database_url=url,
            api_key=api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None,
            base_models=list(base_models or []),
            max_body_bytes=_int_env(MAX_BODY_ENV, "a byte count") or cls.max_body_bytes,
            max_lfs_bytes=_int_env(MAX_LFS_ENV, "a byte count") or cls.max_lfs_bytes,
            nim_port=nim_port or _int_env(NIM_PORT_ENV, "a port number"),
            allow_paths=[Path(p).resolve() for p in [*(allow_paths or []), *_paths_env(ALLOW_PATHS_ENV)]],
        )

    def allowed_roots(self) -> list[Path]:
        """Folders a model path may resolve into: the data dir, the allowed and the registered folders."""
        return [self.data_dir.resolve(), *(Path(p).resolve() for p in self.allow_paths)]


def _paths_env(name: str) -> list[str]:
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p]


def _int_env(name: str, what: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit():
        from embedforge.platform.errors import BadRequest

        raise BadRequest(f"{name} must be {what}, got '{value}'")
    return int(value)
