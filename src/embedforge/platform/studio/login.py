"""Signing in: the API key, typed once, becomes a session cookie (HttpOnly, SameSite=Strict)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from embedforge.platform.studio.web import COOKIE, PREFIX, go, platform_api, render, session_token

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only a studio path may follow a login, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/jobs"


@router.get("", dependencies=[Depends(platform_api)])
@router.get("/", dependencies=[Depends(platform_api)])
def home():
    return go("/jobs")


@router.get("/login")
def login_form(request: Request, next: str | None = None):
    return render(request, "login.html", target=safe_next(next), failed=False)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = ""):
    expected = request.app.state.settings.api_key
    if expected and not hmac.compare_digest(key.encode(), expected.encode()):
        return render(request, "login.html", 401, target=safe_next(next), failed=True)
    response = go(safe_next(next).removeprefix(PREFIX))
    if expected:
        response.set_cookie(COOKIE, session_token(expected), httponly=True, samesite="strict", path=PREFIX)
    return response


@router.post("/logout")
def logout():
    response = go("/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
