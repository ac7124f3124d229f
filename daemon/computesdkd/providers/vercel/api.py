"""Vercel Sandbox's REST API (v2), as the provider and its runs use it.

Configuration: VERCEL_TOKEN (or VERCEL_OIDC_TOKEN), VERCEL_TEAM_ID,
VERCEL_PROJECT_ID, and VERCEL_API_URL to point elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http

NAME = "vercel"


class VercelAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.token = env.get("VERCEL_TOKEN") or env.get("VERCEL_OIDC_TOKEN", "")
        self.team = env.get("VERCEL_TEAM_ID", "")
        self.project = env.get("VERCEL_PROJECT_ID", "")
        self.url = (env.get("VERCEL_API_URL") or "https://vercel.com/api").rstrip("/")
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    def missing(self) -> list[str]:
        settings = [
            ("VERCEL_TOKEN", self.token),
            ("VERCEL_TEAM_ID", self.team),
            ("VERCEL_PROJECT_ID", self.project),
        ]
        return [n for n, v in settings if not v]

    async def close(self) -> None:
        await self.http.aclose()

    def _request(self, path: str, kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A call's URL and keywords: with the token, and the team every call names."""
        kw["headers"] = {"Authorization": f"Bearer {self.token}", **kw.get("headers", {})}
        kw["params"] = {"teamId": self.team}
        return f"{self.url}/v2/sandboxes{path}", kw

    async def call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        url, kw = self._request(path, kw)
        return await http.send(self.http, method, url, provider=NAME, what=what, **kw)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, what: str, **kw: Any
    ) -> AsyncIterator[httpx.Response]:
        url, kw = self._request(path, kw)
        async with http.stream(self.http, method, url, provider=NAME, what=what, **kw) as resp:
            yield resp


def session(sandbox: Sandbox) -> str:
    """The path of the sandbox's session, which carries its commands and files."""
    return f"/sessions/{sandbox.provider_data['session']}"
