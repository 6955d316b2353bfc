"""What is served: the OpenAI model list, and NIM's version and metadata endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from embedforge import __version__
from embedforge.serve.api import ServedDep

router = APIRouter()


@router.get("/v1/models")
async def models(s: ServedDep):
    return {
        "object": "list",
        "data": [
            {
                "id": s.name,
                "object": "model",
                "created": s.created,
                "owned_by": "embedforge",
                "root": s.runtime.model_name,
                "max_input_tokens": s.runtime.max_length,
                "dimensions": s.supported,
            }
        ],
    }


@router.get("/v1/version")
async def version():
    return {"release": __version__, "api": "v1"}


@router.get("/v1/metadata")
async def metadata(s: ServedDep):
    cfg = s.settings
    return {
        "modelInfo": [{"shortName": s.name, "modelUrl": s.runtime.model_name}],
        "repository": "embedforge",
        "version": __version__,
        "model": {**s.runtime.describe(), "supported_dimensions": s.supported, "served_model_name": s.name},
        "limits": {
            "max_inputs": cfg.max_inputs,
            "max_input_chars": cfg.max_input_chars,
            "max_body_bytes": cfg.max_body_bytes,
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_wait_ms": cfg.max_wait_ms,
            "max_queue": cfg.max_queue,
        },
        "auth": bool(s.api_key),
    }
