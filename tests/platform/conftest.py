"""The platform under test: a real ``embedforge platform serve`` process on a free loopback port.

``platform`` is one platform per test module, on SQLite and on PostgreSQL (a throwaway server started
with Debian's binaries); tests that restart or kill things make their own with ``platform_factory``.
"""

from __future__ import annotations

import itertools
import os

import pytest
from pg_server import Postgres
from platform_proc import PlatformProcess

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def platform_factory(tmp_path_factory, request):
    started: list[PlatformProcess] = []

    def make(
        database="sqlite",
        api_key=None,
        data_dir=None,
        base_models=(),
        nim_port=False,
        allow_paths=(),
        extra_args=(),
        extra_env=None,
    ) -> PlatformProcess:
        folder = data_dir or tmp_path_factory.mktemp("platform")
        url = None
        if database == "postgresql":
            url = request.getfixturevalue("postgres").create_database(
                f"platform_{next(_databases)}_{os.getpid()}"
            )
        proc = PlatformProcess(
            folder, url, api_key, base_models, nim_port, allow_paths, extra_args, extra_env
        )
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(request, platform_factory) -> PlatformProcess:
    return platform_factory(request.param).start()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random BERT folder, offered as an operator's ``--base-model``: it trains, exports and
    serves in seconds."""
    from tiny_models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(autouse=True, scope="module")
def hub_client_reaches_loopback():
    """HF_HUB_OFFLINE (set for the whole suite) also blocks huggingface_hub's calls to our loopback data
    store; lift it for the client only. Every endpoint the tests give it is 127.0.0.1."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield
