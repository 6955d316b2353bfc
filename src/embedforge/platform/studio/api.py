"""The studio's one path to the platform's data: its REST routes, called in-process over ASGI.

Requests carry the API key as a Bearer header, so they pass the same guard, validation and error
answers as any SDK call.
"""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """A platform answer that is not a success, with its status and ``detail`` for the page to show."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        super().__init__(f"{status}: {detail}")

    def messages(self) -> list[str]:
        """The detail as lines a person can read: a 422 names each field."""
        if isinstance(self.detail, list):
            return [f"{'.'.join(map(str, e.get('loc', [])[1:]))}: {e.get('msg')}" for e in self.detail]
        return [str(self.detail)]


class PlatformApi:
    def __init__(self, app, api_key: str | None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(
            transport=transport, base_url="http://platform", headers=headers, timeout=600
        )

    async def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    async def get(self, path: str, **params) -> Any:
        return (await self.call("GET", path, params=params)).json()

    async def post(self, path: str, **kwargs) -> Any:
        return (await self.call("POST", path, **kwargs)).json()

    async def delete(self, path: str, **kwargs) -> None:
        await self.call("DELETE", path, **kwargs)

    async def find(self, path: str) -> dict | None:
        """``GET path``, or None when the platform answers 404."""
        try:
            return await self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def every(self, path: str, **params) -> list[dict]:
        """All items of a NeMo list route (its largest page, newest first unless ``sort`` says else)."""
        return (await self.get(path, page_size=1000, **params))["data"]
