"""Prometheus metrics of one app, and the ASGI middleware that checks the API key and records each request."""

from __future__ import annotations

import hmac
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from embedforge.serve.api import ApiError, error_response


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


class Observe:
    """ASGI middleware: API-key check, then request count, error count and latency per endpoint.

    ``endpoints`` are the paths counted under their own label (the rest as ``other``); ``public`` are the
    paths open without the key (the health probes).
    """

    def __init__(self, app, metrics: Metrics, api_key: str | None, endpoints: frozenset, public: frozenset):
        self.app, self.metrics, self.api_key = app, metrics, api_key
        self.endpoints, self.public = endpoints, public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.api_key and path not in self.public and not self._authorized(scope):
                response = error_response(
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
