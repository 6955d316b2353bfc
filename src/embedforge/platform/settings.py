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
EXECUTOR_ENV = "EMBEDFORGE_EXECUTOR"  # local | ray
RAY_ADDRESS_ENV = "EMBEDFORGE_RAY_ADDRESS"  # the Ray dashboard, http://HOST:8265
RAY_CPUS_ENV = "EMBEDFORGE_RAY_CPUS"  # CPUs a job reserves on its Ray node
RAY_RESOURCES_ENV = "EMBEDFORGE_RAY_RESOURCES"  # JSON: custom Ray resources a job asks, e.g. {"trainer": 1}
RAY_PENDING_ENV = "EMBEDFORGE_RAY_PENDING_SECONDS"  # a job no node takes within this fails
PUBLIC_URL_ENV = "EMBEDFORGE_PUBLIC_URL"  # how workers reach the platform, when not http://HOST:PORT
EXECUTORS = ("local", "ray")


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
    executor: str = "local"  # where jobs run: child processes, or jobs on a Ray cluster
    ray_address: str | None = None
    ray_cpus: float = 1.0
    ray_resources: dict[str, float] = field(default_factory=dict)
    ray_pending_seconds: float = 600.0
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
        executor: str | None = None,
        ray_address: str | None = None,
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
            **_executor_settings(executor, ray_address),
        )

    def allowed_roots(self) -> list[Path]:
        """Folders a model path may resolve into: the data dir, the allowed and the registered folders."""
        return [self.data_dir.resolve(), *(Path(p).resolve() for p in self.allow_paths)]


def _executor_settings(executor: str | None, ray_address: str | None) -> dict:
    """The executor and its Ray options, flags before the environment; a Ray executor needs an address."""
    import json

    from embedforge.platform.errors import BadRequest

    chosen = executor or os.environ.get(EXECUTOR_ENV) or "local"
    if chosen not in EXECUTORS:
        raise BadRequest(f"--executor / {EXECUTOR_ENV} must be one of {list(EXECUTORS)}, got '{chosen}'")
    address = ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
    if chosen == "ray" and not address:
        raise BadRequest(f"--executor ray needs --ray-address http://HOST:8265 or {RAY_ADDRESS_ENV}")
    try:
        resources = json.loads(os.environ.get(RAY_RESOURCES_ENV) or "{}")
    except json.JSONDecodeError as err:
        raise BadRequest(f"{RAY_RESOURCES_ENV} must be a JSON object of resource amounts: {err}") from err
    values = {"executor": chosen, "ray_address": address, "ray_resources": resources}
    for name, key in ((RAY_CPUS_ENV, "ray_cpus"), (RAY_PENDING_ENV, "ray_pending_seconds")):
        if os.environ.get(name):
            values[key] = _float_env(name)
    return values


def _float_env(name: str) -> float:
    value = os.environ[name]
    try:
        return float(value)
    except ValueError:
        from embedforge.platform.errors import BadRequest

        raise BadRequest(f"{name} must be a number, got '{value}'") from None


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
