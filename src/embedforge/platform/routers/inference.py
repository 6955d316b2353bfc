"""The NIM surface under ``/nim``: ``/v1/embeddings`` routed by ``model`` to its ready deployment, and
``/v1/models`` listing the served names. The routes are read from the database, so every platform on it
reaches a deployment whichever platform runs its server. Errors are OpenAI-shaped; the deployment's own
answers (errors included) pass through unchanged."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from embedforge.platform.jobs import deployments

router = APIRouter(tags=["inference"])


def ready_routes(request: Request) -> dict[str, str]:
    """A sync dependency, so the query runs in FastAPI's thread pool rather than on the event loop; its
    session closes at once, so no connection is held while the deployment answers."""
    with request.app.state.sessions() as db:
        return deployments.routes(db)


Routes = Annotated[dict, Depends(ready_routes)]


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


@router.post("/v1/embeddings")
async def embeddings(request: Request, routes: Routes) -> Response:
    raw = await request.body()
    try:
        model = json.loads(raw).get("model")
    except (json.JSONDecodeError, AttributeError):
        return openai_error(400, "the body must be a JSON object with 'model' and 'input'")
    base = routes.get(model) if isinstance(model, str) else None
    if base is None:
        served = ", ".join(sorted(routes)) or "none"
        return openai_error(
            404, f"model '{model}' is not deployed (ready: {served})", "model", "model_not_found"
        )
    upstream = await request.app.state.http.post(
        base + "/v1/embeddings", content=raw, headers={"content-type": "application/json"}
    )
    return Response(upstream.content, upstream.status_code, media_type=upstream.headers.get("content-type"))


@router.get("/v1/models")
def models(routes: Routes) -> dict:
    now = int(time.time())
    names = sorted(routes)
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": now, "owned_by": "embedforge"} for n in names],
    }
