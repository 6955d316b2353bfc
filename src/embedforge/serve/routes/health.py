"""Health probes (open without the API key, for orchestrators) and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embedforge.serve.api import ServedDep

router = APIRouter()
PUBLIC_PATHS = frozenset({"/v1/health/ready", "/v1/health/live"})


@router.get("/v1/health/ready")
async def ready(s: ServedDep):
    if s.ready and s.batcher.running:
        return {"object": "health.response", "message": "ready", "ready": True}
    return JSONResponse(
        {"object": "health.response", "message": "not ready", "ready": False}, status_code=503
    )


@router.get("/v1/health/live")
async def live(s: ServedDep):
    return {"object": "health.response", "message": "live", "live": True, "ready": bool(s.ready)}


@router.get("/v1/metrics")
async def prometheus(s: ServedDep):
    return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)
