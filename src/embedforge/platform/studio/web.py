"""What every studio page shares: templates, the login cookie, the API client, mounting into the app."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from embedforge.platform.studio.api import PlatformApi

PREFIX = "/studio"
COOKIE = "embedforge_studio"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def session_token(api_key: str) -> str:
    """The cookie value for ``api_key``: derived, so the key itself never sits in the browser."""
    return hmac.new(api_key.encode(), b"embedforge studio session", hashlib.sha256).hexdigest()


class LoginRequired(Exception):
    """Raised by a page when the browser has no valid session cookie; answered with a redirect."""


def signed_in(request: Request) -> bool:
    key = request.app.state.settings.api_key
    if not key:
        return True
    return hmac.compare_digest(request.cookies.get(COOKIE, ""), session_token(key))


def platform_api(request: Request) -> PlatformApi:
    """The page's API client, once the browser is signed in (one client per app)."""
    if not signed_in(request):
        raise LoginRequired
    state = request.app.state
    if getattr(state, "studio_api", None) is None:
        state.studio_api = PlatformApi(request.app, state.settings.api_key)
    return state.studio_api


Api = Annotated[PlatformApi, Depends(platform_api)]


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    context.setdefault("login", bool(request.app.state.settings.api_key))
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def go(path: str) -> RedirectResponse:
    """After a form post, a redirect the browser follows with a GET (303)."""
    return RedirectResponse(PREFIX + path, status_code=303)


def when(stamp: str | None) -> str:
    """An ISO timestamp as ``2026-12-07 08:36:20`` (UTC), the way a table shows it."""
    if not stamp:
        return ""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(float(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


templates.env.filters.update(when=when, duration=duration, quote=lambda s: quote(str(s), safe=""))
