"""Run the embedding server with uvicorn: ``run_serve(ServeConfig(...))``, ``serve("runs/tuned/model", port=8000)``
or ``embedforge serve``.

uvicorn handles SIGINT/SIGTERM gracefully: it stops accepting connections, lets requests in flight finish
(up to ``graceful_timeout`` seconds), then runs the app's lifespan shutdown, which drains the batcher.
``start_server`` runs the same server on a background thread (tests, notebooks, benchmarks).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from embedforge.config import ServeConfig, build_config

logger = logging.getLogger(__name__)


def _config(model: str | None, settings: Mapping[str, Any]) -> ServeConfig:
    values = {k: v for k, v in settings.items() if v is not None}
    if model is not None:
        values["model"] = str(model)
    return build_config(ServeConfig, values, "serve settings")


def load_serving_runtime(cfg: ServeConfig):
    """The runtime ``cfg`` asks for (ONNX for an export folder, else PyTorch)."""
    from embedforge.serve.runtime import load_runtime

    return load_runtime(
        cfg.model,
        precision=cfg.precision,
        max_length=cfg.max_length,
        threads=cfg.threads,
    )


def _uvicorn_config(app, cfg: ServeConfig):
    import uvicorn

    return uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        access_log=cfg.access_log,
        log_level="info",
        timeout_graceful_shutdown=cfg.graceful_timeout,
        lifespan="on",
    )


def run_serve(cfg: ServeConfig) -> None:
    """``embedforge serve``: load the model ``cfg`` names and serve it until interrupted."""
    import uvicorn

    from embedforge.serve.app import create_app

    runtime = load_serving_runtime(cfg)
    app = create_app(runtime, cfg)
    uvicorn.Server(_uvicorn_config(app, cfg)).run()


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, **settings: Any) -> None:
    """``run_serve`` with a config made from ``model``, ``host``, ``port`` and ``settings`` (``ServeConfig`` keys).

    Example:
        >>> serve("runs/finetune/model", port=8000, max_batch_tokens=4096)  # doctest: +SKIP
    """
    run_serve(_config(model, {**settings, "host": host, "port": port}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server for ``app`` on a background thread; ``stop()`` shuts it down gracefully.

    Example:
        >>> with ServerThread(create_app(runtime)) as server:  # doctest: +SKIP
        ...     httpx.get(server.url + "/v1/health/ready")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, graceful_timeout: float = 10.0):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        cfg = ServeConfig(host=self.host, port=self.port, graceful_timeout=graceful_timeout)
        self.server = uvicorn.Server(_uvicorn_config(app, cfg))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited during startup (see the log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} did not start in {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
