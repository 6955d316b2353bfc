"""A real ``embedforge platform serve`` process on a free loopback port, started and stopped by tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pg_server import free_port


class PlatformProcess:
    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        api_key: str | None = None,
        base_models=(),
        nim_port: bool = False,
        allow_paths=(),
        extra_args=(),
        extra_env=None,
    ):
        self.extra_args, self.extra_env = list(extra_args), dict(extra_env or {})
        self.data_dir, self.database_url, self.api_key = data_dir, database_url, api_key
        self.base_models = list(base_models)
        self.allow_paths = list(allow_paths)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.nim_port = free_port() if nim_port else None
        self.nim_url = f"http://127.0.0.1:{self.nim_port}/v1" if nim_port else None
        self.log = data_dir.parent / f"{data_dir.name}-platform.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> PlatformProcess:
        cmd = [sys.executable, "-m", "embedforge.cli", "platform", "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--port", str(self.port)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.nim_port:
            cmd += ["--nim-port", str(self.nim_port)]
        for folder in self.base_models:
            cmd += ["--base-model", str(folder)]
        for folder in self.allow_paths:
            cmd += ["--allow-path", str(folder)]
        cmd += self.extra_args
        env = {**os.environ, "EMBEDFORGE_API_KEY": self.api_key or "", **self.extra_env}
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
