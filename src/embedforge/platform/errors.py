"""HTTP-facing failures: each carries its status code and becomes NeMo's ``{"detail": ...}`` body."""

from __future__ import annotations

from embedforge.errors import EmbedforgeError


class PlatformError(EmbedforgeError):
    status_code = 400


class BadRequest(PlatformError):
    status_code = 400


class Unauthorized(PlatformError):
    status_code = 401


class NotFound(PlatformError):
    status_code = 404


class Conflict(PlatformError):
    status_code = 409


class PayloadTooLarge(PlatformError):
    status_code = 413


class InsufficientStorage(PlatformError):
    """The data disk filled up while a body or file was written (nothing half-written is kept)."""

    status_code = 507


class Unprocessable(PlatformError):
    """A well-formed body the platform cannot act on; ``loc`` is the field path, as pydantic's 422 gives it."""

    status_code = 422

    def __init__(self, loc: list, message: str):
        self.loc = list(loc)
        super().__init__(f"{'.'.join(str(p) for p in self.loc)}: {message}")
