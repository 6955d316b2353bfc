"""embedforge studio: the platform in a browser at ``/studio``.

Server-rendered pages (Jinja2), charts drawn as inline SVG on the server and a few lines of vanilla JS
that refresh a running job's or deployment's fragment; nothing is fetched from outside. Every page reads
and writes through the platform's own REST routes (``PlatformApi``), never the database, so the studio
shows exactly what the SDK sees. With an API key set, a login form trades the key for a cookie.
"""

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from embedforge.platform.studio import datasets, deployments, evaluations, jobs, login
from embedforge.platform.studio.api import ApiError
from embedforge.platform.studio.web import HERE, PREFIX, LoginRequired, render

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    """Add the studio's pages, its static files and its login redirect to the platform app."""

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _err: LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return render(request, "error.html", err.status, error=err)

    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="studio-static")
    for module in (login, jobs, datasets, deployments, evaluations):
        app.include_router(module.router, prefix=PREFIX, include_in_schema=False)
