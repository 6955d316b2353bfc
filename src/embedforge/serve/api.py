"""What the routers share: OpenAI-shaped errors and the served model's state (one per app).

Every error has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from embedforge.config import ServeConfig
from embedforge.serve.batcher import Batcher
from embedforge.serve.runtime import EmbeddingRuntime

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


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
            "type": ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, err.code, err.param), status_code=err.status, headers=err.headers
    )


@dataclass
class Served:
    """The model an app serves and how: set once by ``create_app``, read by every route.

    ``supported`` is the list of ``dimensions`` a request may ask for; ``ready`` turns true once the
    batcher has started (after its warm-up call) and false when shutdown begins.
    """

    runtime: EmbeddingRuntime
    settings: ServeConfig
    batcher: Batcher
    metrics: Any
    name: str
    supported: list[int]
    api_key: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    ready: bool = False


def served(request: Request) -> Served:
    """FastAPI dependency: the app's ``Served``."""
    return request.app.state.served


ServedDep = Annotated[Served, Depends(served)]
