"""How a job's worker reaches the platform's data store: its URL in the worker's spec, its API key in
the worker's environment, and ``fetch`` (``huggingface_hub.snapshot_download``) into the worker's folder.

A worker reads its data only through the store's HTTP API, never from the platform's disk, so it runs
wherever the platform's URL answers (a child process, a Ray node). ``HF_HUB_OFFLINE`` (which embedforge
sets so that nothing is downloaded from a model hub) is lifted for these calls only: they go to the
platform, not to a hub. Without a platform key the client sends no token at all, so a Hugging Face token
of the worker's user never reaches the store.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from embedforge.errors import EmbedforgeError
from embedforge.platform.datastore import hf_repo
from embedforge.platform.settings import Settings

TOKEN_ENV = "EMBEDFORGE_DATASTORE_KEY"  # the platform's API key, as the worker's environment carries it
HF_PREFIX = "/v1/hf"  # where the store answers huggingface_hub's API
logger = logging.getLogger(__name__)


class StoreUnavailable(EmbedforgeError):
    """The data store did not answer, or has no such repo or file."""


def store_spec(settings: Settings) -> dict:
    """The spec's ``data_store``: the URL huggingface_hub is pointed at (the key travels in the env)."""
    return {"endpoint": f"{(settings.public_url or '').rstrip('/')}{HF_PREFIX}"}


def store_env(settings: Settings) -> dict[str, str]:
    return {TOKEN_ENV: settings.api_key} if settings.api_key else {}


def fetch(store: dict, files_url: str, into: Path) -> Path:
    """Download the repo (or its folder) behind ``files_url`` into ``into``; returns the folder the
    ``files_url`` names there. Fails with ``StoreUnavailable`` naming the store's URL and the repo."""
    import httpx2  # huggingface_hub's HTTP client: its connection errors are not OSErrors
    import huggingface_hub

    repo_type, repo_id, folder = hf_repo(files_url)
    endpoint = store["endpoint"]
    token = os.environ.get(TOKEN_ENV) or False
    where = f"{repo_type} repo {repo_id} from the data store at {endpoint}"
    try:
        with _online():
            api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
            sha = api.repo_info(repo_id, repo_type=repo_type).sha
            huggingface_hub.snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=sha,
                endpoint=endpoint,
                token=token,
                local_dir=into,
                allow_patterns=[f"{folder}/**"] if folder else None,
            )
    except (OSError, httpx2.HTTPError) as err:  # the hub's HTTP and missing-file errors are OSErrors
        raise StoreUnavailable(f"cannot fetch the {where}: {_first_line(err)}") from err
    logger.info("fetched the %s at revision %s into %s", where, sha, into)
    return into / folder if folder else into


@contextmanager
def _online():
    """huggingface_hub's offline switch off for the calls inside (they reach the platform, not a hub)."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
