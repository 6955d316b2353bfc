"""``embedforge platform serve``: the platform app under uvicorn, with a log line per job event."""

from __future__ import annotations

import logging

from embedforge.platform.settings import Settings


def serve(
    data_dir: str | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    database_url: str | None = None,
    base_models: list[str] | None = None,
) -> None:
    import uvicorn

    from embedforge.platform.app import create_app

    settings = Settings.from_env(data_dir, database_url, base_models=base_models)
    settings.public_url = f"http://{host}:{port}"
    logging.getLogger("embedforge").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the runner's health probes are not news
    print(
        f"embedforge platform on http://{host}:{port} (NIM surface at /nim), data in {settings.data_dir}",
        flush=True,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
