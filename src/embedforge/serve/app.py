"""The HTTP API: NVIDIA's Retriever Embedding NIM contract, which is OpenAI's embeddings API plus a few fields.

``create_app(runtime, settings)`` wires the routers (``routes``) to one loaded ``EmbeddingRuntime``:

* ``POST /v1/embeddings`` (``routes.embeddings``: fields, validation, limits);
* ``GET /v1/models``, ``/v1/version``, ``/v1/metadata`` (``routes.models``);
* ``GET /v1/health/ready``, ``/v1/health/live``, ``/v1/metrics`` (Prometheus) (``routes.health``).

Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (``api``). With an API key
configured (setting or ``EMBEDFORGE_API_KEY``), every route but the health probes needs
``Authorization: Bearer KEY`` (401; ``metrics.Observe``). Batching and threads are in ``batcher``; models in
``runtime``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedforge import __version__
from embedforge.config import ServeConfig, build_config
from embedforge.serve.api import ApiError, Served, error_body, error_response
from embedforge.serve.batcher import Batcher
from embedforge.serve.metrics import Metrics, Observe
from embedforge.serve.routes import ROUTERS
from embedforge.serve.routes.embeddings import MISSING_INPUT_TYPE
from embedforge.serve.routes.health import PUBLIC_PATHS
from embedforge.serve.runtime import EmbeddingRuntime

logger = logging.getLogger(__name__)

API_KEY_ENV = "EMBEDFORGE_API_KEY"
ENDPOINTS = frozenset(route.path for router in ROUTERS for route in router.routes)


def _settings(settings: ServeConfig | Mapping[str, Any] | None) -> ServeConfig:
    if settings is None:
        return ServeConfig()
    if isinstance(settings, ServeConfig):
        return settings
    return build_config(ServeConfig, dict(settings), "serve settings")


def _check_limits(cfg: ServeConfig) -> None:
    for name in ("max_batch_tokens", "max_queue", "max_inputs", "max_input_chars", "max_body_bytes"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_inputs > cfg.max_queue:
        raise ValueError(
            f"max_inputs ({cfg.max_inputs}) must not exceed max_queue ({cfg.max_queue}): "
            "a full-size request could never be admitted"
        )


def _supported_dimensions(runtime: EmbeddingRuntime, cfg: ServeConfig) -> list[int]:
    """The ``dimensions`` a request may ask for: the settings' list (plus the full size), else the model's."""
    bad = [d for d in cfg.dimensions if not 0 < d <= runtime.dimension]
    if bad:
        raise ValueError(f"dimensions {bad} are not in 1..{runtime.dimension}")
    if cfg.dimensions:
        return sorted({int(d) for d in cfg.dimensions} | {int(runtime.dimension)})
    return list(runtime.supported_dimensions)


async def _http_error(request: Request, err: StarletteHTTPException):
    message = str(err.detail) if err.detail else "error"
    if err.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see /docs"
    return JSONResponse(
        error_body(err.status_code, message), status_code=err.status_code, headers=err.headers
    )


async def _unexpected(request: Request, err: Exception):
    logger.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body(500, f"internal error: {type(err).__name__}"), status_code=500)


async def _api_error(request: Request, err: ApiError):
    return error_response(err)


def _served(runtime: EmbeddingRuntime, cfg: ServeConfig) -> Served:
    """What every route shares: the runtime, its batcher and metrics, the served name, dimensions and key."""
    api_key = cfg.api_key if cfg.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    metrics = Metrics()
    batcher = Batcher(
        runtime,
        max_batch_tokens=cfg.max_batch_tokens,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        metrics=metrics,
    )
    return Served(
        runtime=runtime,
        settings=cfg,
        batcher=batcher,
        metrics=metrics,
        name=cfg.served_model_name or runtime.model_name,
        supported=_supported_dimensions(runtime, cfg),
        api_key=api_key,
    )


def create_app(runtime: EmbeddingRuntime, settings: ServeConfig | Mapping[str, Any] | None = None) -> FastAPI:
    """A FastAPI app serving ``runtime``; ``settings`` is a ``ServeConfig`` (or a mapping of its keys).

    The batcher starts in the app's lifespan (with one warm-up model call; ``/v1/health/ready`` says ready
    afterwards) and drains on shutdown, so requests in flight are answered.
    """
    cfg = _settings(settings)
    _check_limits(cfg)
    served = _served(runtime, cfg)
    batcher, metrics, api_key = served.batcher, served.metrics, served.api_key

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        served.ready = True
        logger.info(
            "serving %s (%s, %d dims, max %d tokens) as '%s'",
            runtime.model_name,
            runtime.backend,
            runtime.dimension,
            runtime.max_length,
            served.name,
        )
        try:
            yield
        finally:
            served.ready = False
            await batcher.close(timeout=cfg.graceful_timeout)

    app = FastAPI(
        title="embedforge embedding server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.served = served
    app.state.runtime, app.state.batcher, app.state.metrics = runtime, batcher, metrics
    app.state.settings = replace(cfg, api_key="***" if api_key else None)
    app.state.served_model_name = served.name
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(Observe, metrics=metrics, api_key=api_key, endpoints=ENDPOINTS, public=PUBLIC_PATHS)
    return app


__all__ = ["API_KEY_ENV", "MISSING_INPUT_TYPE", "ApiError", "create_app", "error_body"]
