"""``POST /v1/embeddings``: NVIDIA's Retriever Embedding NIM contract, i.e. OpenAI's plus a few fields.

``input`` (str or list of str), ``model``, ``input_type`` (``query`` | ``passage``; required for asymmetric
models, or given as a ``-query`` / ``-passage`` model-name suffix), ``truncate`` (``NONE`` | ``START`` |
``END``), ``dimensions`` (a supported Matryoshka size), ``encoding_format`` (``float`` | ``base64``:
little-endian float32 bytes), ``user``. Unknown fields are rejected. Prompts are applied here, so clients
send raw text. Limits: body size (413), inputs per request and characters per input (400), a bounded
queue (429 + ``Retry-After``).
"""

from __future__ import annotations

import base64
import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from embedforge.serve.api import ApiError, Served, ServedDep
from embedforge.serve.batcher import QueueFullError, ShuttingDownError
from embedforge.serve.runtime import InputTooLongError, unit_truncate

router = APIRouter()
MISSING_INPUT_TYPE = "'input_type' parameter is required for asymmetric models"
SUFFIXES = {"-query": "query", "-passage": "passage"}


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


async def _parse(request: Request, limit: int) -> EmbeddingRequest:
    raw = await _read_body(request, limit)
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return EmbeddingRequest.model_validate(payload)
    except ValidationError as err:
        message, param = _validation_message(err)
        raise ApiError(400, message, code="invalid_request", param=param) from None


def _input_type(s: Served, name: str, input_type: str | None) -> str:
    """The input type a model name carries (``name-query``), or the given one; 404 for other names."""
    kind = input_type
    if name != s.name:
        suffix = next((sfx for sfx in SUFFIXES if name == s.name + sfx), None)
        if suffix is None:
            raise ApiError(
                404,
                f"model '{name}' is not served here; this server serves '{s.name}' "
                f"(also as '{s.name}-query' and '{s.name}-passage')",
                code="model_not_found",
                param="model",
            )
        kind = SUFFIXES[suffix]
        if input_type is not None and input_type != kind:
            raise ApiError(
                400,
                f"model name '{name}' says input_type '{kind}' but the request says '{input_type}'",
                code="conflicting_input_type",
                param="input_type",
            )
    if kind is None:
        if s.runtime.asymmetric:
            raise ApiError(400, MISSING_INPUT_TYPE, code="missing_input_type", param="input_type")
        kind = "query"  # symmetric: both prompts are the same
    return kind


def _check_inputs(s: Served, req: EmbeddingRequest) -> list[str]:
    cfg = s.settings
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
    if req.dimensions is not None and req.dimensions not in s.supported:
        raise ApiError(
            400,
            f"dimensions={req.dimensions} is not supported by '{s.name}'; supported: {s.supported}",
            code="unsupported_dimensions",
            param="dimensions",
        )
    return texts


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings")
async def embeddings(request: Request, s: ServedDep):
    req = await _parse(request, s.settings.max_body_bytes)
    input_type = _input_type(s, req.model, req.input_type)
    texts = _check_inputs(s, req)
    try:
        ticket = s.batcher.admit(len(texts))
    except QueueFullError as err:
        raise ApiError(
            429, str(err), code="queue_full", headers={"Retry-After": str(err.retry_after)}
        ) from None
    except ShuttingDownError as err:
        raise ApiError(503, str(err), code="unavailable", headers={"Retry-After": "5"}) from None
    with ticket:
        try:
            tokens = await s.batcher.tokenize(texts, input_type, req.truncate)
        except InputTooLongError as err:
            raise ApiError(400, str(err), code="input_too_long", param=f"input[{err.index}]") from None
        try:
            vectors = await s.batcher.embed([t.ids for t in tokens])
        except ShuttingDownError as err:
            raise ApiError(503, str(err), code="unavailable") from None
    vectors = unit_truncate(vectors, req.dimensions)
    n_tokens = sum(len(t.ids) for t in tokens)
    s.metrics.inputs.inc(len(texts))
    s.metrics.tokens.inc(n_tokens)
    s.metrics.truncated.inc(sum(t.truncated for t in tokens))
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": s.name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )
