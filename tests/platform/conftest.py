"""The platform under test: a real ``embedforge platform serve`` process on a free loopback port.

``platform`` is one platform per test module, on SQLite and on PostgreSQL (a throwaway server started
with Debian's binaries); tests that restart or kill things make their own with ``platform_factory``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pg_server import Postgres, free_port

_databases = itertools.count()


class PlatformProcess:
    def __init__(
        self, data_dir: Path, database_url: str | None = None, api_key: str | None = None, base_models=()
    ):
        self.data_dir, self.database_url, self.api_key = data_dir, database_url, api_key
        self.base_models = list(base_models)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"{data_dir.name}-platform.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> PlatformProcess:
        cmd = [sys.executable, "-m", "embedforge.cli", "platform", "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--port", str(self.port)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        for folder in self.base_models:
            cmd += ["--base-model", str(folder)]
        env = {**os.environ, "EMBEDFORGE_API_KEY": self.api_key or ""}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the platform exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the platform did not answer /health in {timeout} s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="session")
def postgres():
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def platform_factory(tmp_path_factory, request):
    started: list[PlatformProcess] = []

    def make(database="sqlite", api_key=None, data_dir=None, base_models=()) -> PlatformProcess:
        folder = data_dir or tmp_path_factory.mktemp("platform")
        url = None
        if database == "postgresql":
            url = request.getfixturevalue("postgres").create_database(
                f"platform_{next(_databases)}_{os.getpid()}"
            )
        proc = PlatformProcess(folder, url, api_key, base_models)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(request, platform_factory) -> PlatformProcess:
    return platform_factory(request.param).start()


@pytest.fixture(autouse=True, scope="module")
def hub_client_reaches_loopback():
    """HF_HUB_OFFLINE (set for the whole suite) also blocks huggingface_hub's calls to our loopback data
    store; lift it for the client only. Every endpoint the tests give it is 127.0.0.1."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield
