"""The HTTP API: NVIDIA's Retriever Embedding NIM contract, which is OpenAI's embeddings API plus a few fields.

``create_app(runtime, settings)`` builds a FastAPI app around a loaded ``EmbeddingRuntime``:

* ``POST /v1/embeddings``: ``input`` (str or list of str), ``model``, ``input_type`` (``query`` |
  ``passage``; required for asymmetric models, or given as a ``-query`` / ``-passage`` model-name suffix),
  ``truncate`` (``NONE`` | ``START`` | ``END``), ``dimensions`` (a supported Matryoshka size),
  ``encoding_format`` (``float`` | ``base64``: little-endian float32 bytes), ``user``. Unknown fields are
  rejected. Prompts are applied here, so clients send raw text.
* ``GET /v1/models``, ``/v1/health/ready``, ``/v1/health/live``, ``/v1/metrics`` (Prometheus),
  ``/v1/version``, ``/v1/metadata``.

Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. Limits: body size (413),
inputs per request and characters per input (400), a bounded queue (429 + ``Retry-After``). With an API key
configured (setting or ``EMBEDFORGE_API_KEY``), every route but the health probes needs
``Authorization: Bearer KEY`` (401). Batching and threads are in ``batcher``; models in ``runtime``.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedforge import __version__
from embedforge.config import ServeConfig, build_config
from embedforge.serve.batcher import Batcher, QueueFullError, ShuttingDownError
from embedforge.serve.runtime import EmbeddingRuntime, InputTooLongError, unit_truncate

logger = logging.getLogger(__name__)

API_KEY_ENV = "EMBEDFORGE_API_KEY"
MISSING_INPUT_TYPE = "'input_type' parameter is required for asymmetric models"
SUFFIXES = {"-query": "query", "-passage": "passage"}
_PUBLIC_PATHS = frozenset({"/v1/health/ready", "/v1/health/live"})
_ENDPOINTS = frozenset(
    {
        "/v1/embeddings",
        "/v1/models",
        "/v1/health/ready",
        "/v1/health/live",
        "/v1/metrics",
        "/v1/version",
        "/v1/metadata",
    }
)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


# ---------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = dict(headers or {})


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, err.code, err.param), status_code=err.status, headers=err.headers
    )


# --------------------------------------------------------------------------------------------- request


class EmbeddingRequest(BaseModel):
    """The ``POST /v1/embeddings`` body (NIM: OpenAI's fields + ``input_type`` and ``truncate``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: StrictStr | list[StrictStr]
    model: StrictStr
    input_type: Literal["query", "passage"] | None = None
    truncate: Literal["NONE", "START", "END"] = "NONE"
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    """One readable sentence for a pydantic error, and the offending field."""
    problems, param = [], None
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ())]
        field = loc[0] if loc else None
        param = param or field
        if e.get("type") == "extra_forbidden":
            problems.append(f"unknown field '{field}'")
        elif e.get("type") == "missing":
            problems.append(f"'{field}' is required")
        elif field == "input":
            problems.append("'input' must be a string or a list of strings")
        elif e.get("type") == "literal_error":
            allowed = str(e.get("msg", "")).replace("Input should be ", "")
            problems.append(f"'{field}' must be {allowed}, got {e.get('input')!r}")
        else:
            problems.append(f"'{field}': {e.get('msg')}")
    unique = list(dict.fromkeys(problems))
    return "invalid request: " + "; ".join(unique), param


# --------------------------------------------------------------------------------------------- metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "embedforge_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.errors = Counter(
            "embedforge_errors", "HTTP error responses (4xx and 5xx) by status code", ["code"], registry=r
        )
        self.latency = Histogram(
            "embedforge_request_latency_seconds",
            "request latency by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.inputs = Counter("embedforge_inputs", "texts embedded", registry=r)
        self.tokens = Counter(
            "embedforge_tokens", "tokens embedded (prompt and special tokens included)", registry=r
        )
        self.truncated = Counter(
            "embedforge_truncated_inputs", "inputs cut by truncate=START/END", registry=r
        )
        self.batch_size = Histogram(
            "embedforge_batch_size",
            "inputs per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "embedforge_batch_tokens",
            "padded tokens per model call",
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
            registry=r,
        )
        self.queue_depth = Gauge("embedforge_queue_depth", "inputs waiting for a model call", registry=r)
        self.inflight = Gauge(
            "embedforge_inflight_inputs",
            "inputs admitted and not yet answered (bounded by max_queue)",
            registry=r,
        )


class _Observe:
    """ASGI middleware: API-key check, then request count, error count and latency per endpoint."""

    def __init__(self, app, metrics: Metrics, api_key: str | None):
        self.app, self.metrics, self.api_key = app, metrics, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.api_key and path not in _PUBLIC_PATHS and not self._authorized(scope):
                response = _error_response(
                    ApiError(
                        401,
                        "invalid or missing API key: send 'Authorization: Bearer <key>'",
                        code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                )
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            code = str(status["code"])
            self.metrics.requests.labels(endpoint, code).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(token.strip().encode(), self.api_key.encode())
        return False


# ------------------------------------------------------------------------------------------------ app


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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body of {declared} bytes exceeds the limit of {limit} bytes", code="body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(runtime: EmbeddingRuntime, settings: ServeConfig | Mapping[str, Any] | None = None) -> FastAPI:
    """A FastAPI app serving ``runtime``; ``settings`` is a ``ServeConfig`` (or a mapping of its keys).

    The batcher starts in the app's lifespan (with one warm-up model call; ``/v1/health/ready`` says ready
    afterwards) and drains on shutdown, so requests in flight are answered.
    """
    cfg = _settings(settings)
    _check_limits(cfg)
    api_key = cfg.api_key if cfg.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    served_name = cfg.served_model_name or runtime.model_name
    bad = [d for d in cfg.dimensions if not 0 < d <= runtime.dimension]
    if bad:
        raise ValueError(f"dimensions {bad} are not in 1..{runtime.dimension}")
    if cfg.dimensions:
        supported = sorted({int(d) for d in cfg.dimensions} | {int(runtime.dimension)})
    else:
        supported = list(runtime.supported_dimensions)
    metrics = Metrics()
    batcher = Batcher(
        runtime,
        max_batch_tokens=cfg.max_batch_tokens,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        metrics=metrics,
    )
    created = int(time.time())
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        state["ready"] = True
        logger.info(
            "serving %s (%s, %d dims, max %d tokens) as '%s'",
            runtime.model_name,
            runtime.backend,
            runtime.dimension,
            runtime.max_length,
            served_name,
        )
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.close(timeout=cfg.graceful_timeout)

    app = FastAPI(
        title="embedforge embedding server",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.runtime, app.state.batcher, app.state.metrics = runtime, batcher, metrics
    app.state.settings = replace(cfg, api_key="***" if api_key else None)
    app.state.served_model_name = served_name

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        message = str(err.detail) if err.detail else "error"
        if err.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        return JSONResponse(
            error_body(err.status_code, message), status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(500, f"internal error: {type(err).__name__}"), status_code=500)

    def resolve_model(name: str, input_type: str | None) -> str | None:
        """The input type a model name carries (``name-query``), or the given one; 404 for other names."""
        if name == served_name:
            return input_type
        for suffix, kind in SUFFIXES.items():
            if name == served_name + suffix:
                if input_type is not None and input_type != kind:
                    raise ApiError(
                        400,
                        f"model name '{name}' says input_type '{kind}' but the request says '{input_type}'",
                        code="conflicting_input_type",
                        param="input_type",
                    )
                return kind
        raise ApiError(
            404,
            f"model '{name}' is not served here; this server serves '{served_name}' "
            f"(also as '{served_name}-query' and '{served_name}-passage')",
            code="model_not_found",
            param="model",
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        raw = await _read_body(request, cfg.max_body_bytes)
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        try:
            req = EmbeddingRequest.model_validate(payload)
        except ValidationError as err:
            message, param = _validation_message(err)
            raise ApiError(400, message, code="invalid_request", param=param) from None

        input_type = resolve_model(req.model, req.input_type)
        if input_type is None:
            if runtime.asymmetric:
                raise ApiError(400, MISSING_INPUT_TYPE, code="missing_input_type", param="input_type")
            input_type = "query"  # symmetric: both prompts are the same
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise ApiError(400, "'input' must not be an empty list", code="empty_input", param="input")
        if len(texts) > cfg.max_inputs:
            raise ApiError(
                400,
                f"too many inputs: {len(texts)} in one request, at most {cfg.max_inputs}",
                code="too_many_inputs",
                param="input",
            )
        for i, text in enumerate(texts):
            if not text:
                raise ApiError(400, f"input[{i}] is an empty string", code="empty_input", param="input")
            if len(text) > cfg.max_input_chars:
                raise ApiError(
                    400,
                    f"input[{i}] has {len(text)} characters, at most {cfg.max_input_chars} are accepted",
                    code="input_too_large",
                    param="input",
                )
        dims = req.dimensions
        if dims is not None and dims not in supported:
            raise ApiError(
                400,
                f"dimensions={dims} is not supported by '{served_name}'; supported: {supported}",
                code="unsupported_dimensions",
                param="dimensions",
            )
        try:
            ticket = batcher.admit(len(texts))
        except QueueFullError as err:
            raise ApiError(
                429, str(err), code="queue_full", headers={"Retry-After": str(err.retry_after)}
            ) from None
        except ShuttingDownError as err:
            raise ApiError(503, str(err), code="unavailable", headers={"Retry-After": "5"}) from None
        with ticket:
            try:
                tokens = await batcher.tokenize(texts, input_type, req.truncate)
            except InputTooLongError as err:
                raise ApiError(400, str(err), code="input_too_long", param=f"input[{err.index}]") from None
            try:
                vectors = await batcher.embed([t.ids for t in tokens])
            except ShuttingDownError as err:
                raise ApiError(503, str(err), code="unavailable") from None
        vectors = unit_truncate(vectors, dims)
        n_tokens = sum(len(t.ids) for t in tokens)
        metrics.inputs.inc(len(texts))
        metrics.tokens.inc(n_tokens)
        metrics.truncated.inc(sum(t.truncated for t in tokens))
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": served_name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": served_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "embedforge",
                    "root": runtime.model_name,
                    "max_input_tokens": runtime.max_length,
                    "dimensions": supported,
                }
            ],
        }

    @app.get("/v1/health/ready")
    async def ready():
        if state["ready"] and batcher.running:
            return {"object": "health.response", "message": "ready", "ready": True}
        return JSONResponse(
            {"object": "health.response", "message": "not ready", "ready": False}, status_code=503
        )

    @app.get("/v1/health/live")
    async def live():
        return {"object": "health.response", "message": "live", "live": True, "ready": bool(state["ready"])}

    @app.get("/v1/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/version")
    async def version():
        return {"release": __version__, "api": "v1"}

    @app.get("/v1/metadata")
    async def metadata():
        return {
            "modelInfo": [{"shortName": served_name, "modelUrl": runtime.model_name}],
            "repository": "embedforge",
            "version": __version__,
            "model": {
                **runtime.describe(),
                "supported_dimensions": supported,
                "served_model_name": served_name,
            },
            "limits": {
                "max_inputs": cfg.max_inputs,
                "max_input_chars": cfg.max_input_chars,
                "max_body_bytes": cfg.max_body_bytes,
                "max_batch_tokens": cfg.max_batch_tokens,
                "max_wait_ms": cfg.max_wait_ms,
                "max_queue": cfg.max_queue,
            },
            "auth": bool(api_key),
        }

    app.add_middleware(_Observe, metrics=metrics, api_key=api_key)
    return app
