"""Builds the platform's FastAPI app: one router per resource family, the store, the job runner.

The lifespan migrates the database, registers the base models (MiniLM under its public name and any
operator-listed folder) as customization targets and models, and starts the runner that turns queued
jobs into worker processes. Every expected failure answers NeMo's ``{"detail": ...}`` shape.
"""

from __future__ import annotations

import hmac
import importlib.util
import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from embedforge.platform import store
from embedforge.platform.errors import PayloadTooLarge, PlatformError, Unprocessable
from embedforge.platform.settings import Settings

logger = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/v1/health/live", "/v1/health/ready")
LFS_UPLOADS = "/v1/hf/lfs-objects/"  # git-lfs object PUTs: signed URLs, their own body limit


class Guard:
    """Body size limit and the optional API key, as plain ASGI (a per-request cost the NIM gateway pays).

    The limit holds for a declared ``Content-Length`` (refused before any byte is read) and for a body
    without one (chunked): the bytes are counted as the app reads them, and once past the limit the read
    fails and whatever the app would have answered is replaced by the 413. An LFS object upload has its
    own, larger limit (``max_lfs_bytes``); its route checks the key or the URL's signature itself (LFS
    clients send no credentials to the upload URL).
    """

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings
        self.expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        lfs_put = path.startswith(LFS_UPLOADS)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        limit = self.settings.max_lfs_bytes if lfs_put else self.settings.max_body_bytes
        if length.isdigit() and int(length) > limit:
            detail = f"request body of {int(length)} bytes exceeds the limit of {limit}"
            return await JSONResponse({"detail": detail}, 413)(scope, receive, send)
        if self.expected and path not in OPEN_PATHS and not lfs_put and not _is_studio(path):
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                detail = "missing or wrong API key (Authorization: Bearer)"
                return await JSONResponse({"detail": detail}, 401)(scope, receive, send)
        return await self.limited(scope, receive, send, limit)

    async def limited(self, scope, receive, send, limit: int):
        """Run the app with its body reads counted; past ``limit`` the answer is the 413."""
        received, refusal, answered = 0, None, False

        async def counted_receive():
            nonlocal received, refusal
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                detail = f"request body of at least {received} bytes exceeds the limit of {limit}"
                refusal = JSONResponse({"detail": detail}, 413)
                raise PayloadTooLarge(detail)
            return message

        async def guarded_send(message):
            nonlocal answered
            if refusal is None:
                return await send(message)
            if not answered:  # the app's own answer to the cut-off body (FastAPI's is a 400) is replaced
                answered = True
                await refusal(scope, receive, send)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None and not answered:
            await refusal(scope, receive, send)


STUDIO = "/studio"  # the web UI checks its own session cookie (embedforge.platform.studio)


def _is_studio(path: str) -> bool:
    return path == STUDIO or path.startswith(STUDIO + "/")


class NimPort:
    """The NIM port: a request that arrived on ``settings.nim_port`` is routed as ``/nim`` + its path, so
    ``http://HOST:NIM_PORT/v1`` is the same gateway as ``<platform>/nim/v1`` and nothing else of the
    platform is reachable there; the health paths answer as they do on the platform port."""

    def __init__(self, app, port: int):
        self.app, self.port = app, port

    async def __call__(self, scope, receive, send):
        server = scope.get("server")
        if scope["type"] == "http" and server and server[1] == self.port and scope["path"] not in OPEN_PATHS:
            scope = {
                **scope,
                "path": "/nim" + scope["path"],
                "raw_path": b"/nim" + scope.get("raw_path", b""),
            }
        return await self.app(scope, receive, send)


def field_errors(errors: list[dict]) -> list[dict]:
    """pydantic's 422 errors with the field path only: a field that takes "ns/name" or an inline object
    is a union, and pydantic names the union member in ``loc`` and reports the branch the input did not
    take; keep the taken branch and drop the member names."""
    from embedforge.platform import schemas

    members = {"str", *(name for name, obj in vars(schemas).items() if isinstance(obj, type))}
    kept = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if "str" in loc and not isinstance(error.get("input"), str):
            continue  # the "ns/name" branch of an inline object
        kept.append({**error, "loc": [part for part in loc if part not in members]})
    return jsonable_encoder(kept or errors)


def _add_error_handlers(app: FastAPI) -> None:
    """Errors in NeMo's shapes: ``{"detail": str}``, and 422s as a list naming each field."""

    @app.exception_handler(PlatformError)
    async def platform_error(_request: Request, err: PlatformError):
        if isinstance(err, Unprocessable):
            detail = [{"loc": ["body", *err.loc], "msg": str(err), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return JSONResponse({"detail": str(err)}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, err: RequestValidationError):
        return JSONResponse({"detail": field_errors(err.errors())}, status_code=422)


def mount_studio(app: FastAPI) -> None:
    """The web UI at /studio, when its extra (Jinja2) is installed: the API works without it."""
    if importlib.util.find_spec("jinja2") is None:
        logger.info("studio not served: install embedforge[studio] for the web UI")
        return
    from embedforge.platform import studio

    studio.mount(app)


def create_app(settings: Settings) -> FastAPI:
    """The platform app for ``settings``; nothing starts until the ASGI server runs its lifespan."""
    from embedforge.platform.jobs.runner import JobRunner
    from embedforge.platform.routers import (
        customization,
        datastore,
        deployment,
        entities,
        evaluation,
        inference,
    )
    from embedforge.platform.targets import register_base_models
    from embedforge.platform.uploads import clear_leftovers

    engine = store.make_engine(settings.database_url)
    sessions = store.session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.migrate(engine)
        if cleared := clear_leftovers(settings.data_dir):
            logger.info("removed %d upload(s) a previous platform process left unfinished", cleared)
        register_base_models(sessions, settings)
        runner = JobRunner(sessions, settings)
        app.state.runner = runner
        app.state.http = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=128))
        runner.start()
        logger.info(
            "platform ready: data in %s, database %s", settings.data_dir, engine.url.render_as_string()
        )
        try:
            yield
        finally:
            runner.stop()
            await app.state.http.aclose()
            engine.dispose()

    app = FastAPI(title="embedforge platform", lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = sessions

    app.add_middleware(Guard, settings=settings)
    if settings.nim_port:
        app.add_middleware(NimPort, port=settings.nim_port)  # outermost: Guard sees the routed path

    _add_error_handlers(app)

    @app.get("/health")
    @app.get("/v1/health/live")
    @app.get("/v1/health/ready")
    def health() -> dict:
        return {"status": "healthy"}

    for router in (datastore, entities, customization, deployment, evaluation):
        app.include_router(router.router)
    app.include_router(inference.router, prefix="/nim")
    mount_studio(app)
    return app
