"""Request-scoped access to the store and settings for the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from embedforge.platform.errors import BadRequest
from embedforge.platform.settings import Settings


def session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as s:
        yield s


def settings(request: Request) -> Settings:
    return request.app.state.settings


def query_params(request: Request) -> dict[str, str | list[str]]:
    """The query string as a dict; a repeated ``filter[field]`` or ``search[field]`` keeps all its values
    (any may match)."""
    params: dict = dict(request.query_params)
    for key in params:
        if key.startswith(("filter[", "search[")) and len(values := request.query_params.getlist(key)) > 1:
            params[key] = values
    return params


def split_ref(ref: str, field: str = "name") -> tuple[str, str]:
    """``"ns/name"`` -> (ns, name); a bare name is in namespace ``default``."""
    if "/" not in ref:
        return "default", ref
    namespace, _, name = ref.partition("/")
    if not namespace or not name:
        raise BadRequest(f"{field} must be 'namespace/name', got '{ref}'")
    return namespace, name


DB = Annotated[Session, Depends(session)]
Config = Annotated[Settings, Depends(settings)]
Params = Annotated[dict, Depends(query_params)]
