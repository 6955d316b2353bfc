"""``embedforge platform serve``: the platform app under uvicorn, with a log line per job event.

With a NIM port, one uvicorn server listens on both sockets: one process, one job runner, one routing
table; the app tells the NIM port's requests apart by the port they arrived on (``app.NimPort``).
"""

from __future__ import annotations

import logging
import os
import socket

from embedforge.platform.settings import PUBLIC_URL_ENV, Settings


def serve(
    data_dir: str | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    database_url: str | None = None,
    base_models: list[str] | None = None,
    nim_port: int | None = None,
    allow_paths: list[str] | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
    public_url: str | None = None,
) -> None:
    import uvicorn

    from embedforge.platform.app import create_app
    from embedforge.platform.jobs.executors import executor_for

    settings = Settings.from_env(
        data_dir,
        database_url,
        base_models=base_models,
        nim_port=nim_port,
        allow_paths=allow_paths,
        executor=executor,
        ray_address=ray_address,
    )
    executor_for(settings).close()  # an unreachable Ray cluster is an error now, not at the first job
    bracketed = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    settings.public_url = public_url or os.environ.get(PUBLIC_URL_ENV) or f"http://{bracketed}:{port}"
    logging.getLogger("embedforge").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the runner's health probes are not news
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
    )
    sockets = [config.bind_socket()]
    nim = "at /nim"
    if settings.nim_port:
        sockets.append(
            uvicorn.Config(config.app, host=host, port=settings.nim_port, log_config=None).bind_socket()
        )
        nim = f"at /nim and at http://{host}:{settings.nim_port}/v1"
    print(
        f"embedforge platform on http://{host}:{port} (NIM surface {nim}), data in {settings.data_dir}, "
        f"jobs run {_where(settings)}",
        flush=True,
    )
    # accepted connections inherit TCP_NODELAY; without it, Nagle + delayed ACK add ~40 ms a request
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    uvicorn.Server(config).run(sockets=sockets)


def _where(settings: Settings) -> str:
    return f"on the Ray cluster at {settings.ray_address}" if settings.executor == "ray" else "here"
