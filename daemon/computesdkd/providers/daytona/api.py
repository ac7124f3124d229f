"""Daytona's two APIs, as the provider, its runs and its file calls use them: the
control API (`/sandbox`) and each sandbox's toolbox API.

Configuration: DAYTONA_API_KEY (required), DAYTONA_API_URL, DAYTONA_TARGET.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http

NAME = "daytona"


class DaytonaAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.key = env.get("DAYTONA_API_KEY", "")
        self.url = (env.get("DAYTONA_API_URL") or "https://app.daytona.io/api").rstrip("/")
        self.target = env.get("DAYTONA_TARGET", "")
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def close(self) -> None:
        await self.http.aclose()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        return await http.send(
            self.http, method, self.url + path, provider=NAME, what=what, headers=self.auth, **kw
        )

    def toolbox(self, sandbox: Sandbox) -> str:
        return f"{sandbox.provider_data['toolbox']}/{sandbox.provider_sandbox_id}"

    async def tb(
        self, sandbox: Sandbox, method: str, path: str, what: str, **kw: Any
    ) -> httpx.Response:
        return await http.send(
            self.http,
            method,
            self.toolbox(sandbox) + path,
            provider=NAME,
            what=what,
            headers=self.auth,
            not_found="FILE_NOT_FOUND",
            **kw,
        )
