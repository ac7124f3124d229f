"""E2B's two APIs, as the provider, its runs and its file calls use them: the REST
API for sandboxes, and envd's Connect API inside each one.

Configuration, as E2B's SDKs read it: E2B_API_KEY (required), E2B_DOMAIN,
E2B_API_URL, E2B_SANDBOX_URL (one envd endpoint for every sandbox, routed by
the E2b-Sandbox-Id header).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http
from computesdkd.providers.e2b import connect

NAME = "e2b"
ENVD_PORT = 49983
# envd calls that change nothing, so a failure mid-call may be tried again.
_READ_ONLY = {"filesystem.Filesystem/Stat", "filesystem.Filesystem/ListDir", "process.Process/List"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class E2BAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.key = env.get("E2B_API_KEY", "")
        self.domain = env.get("E2B_DOMAIN", "e2b.app")
        self.url = env.get("E2B_API_URL") or f"https://api.{self.domain}"
        self.sandbox_url = env.get("E2B_SANDBOX_URL", "")
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def close(self) -> None:
        await self.http.aclose()

    async def rest(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        return await http.send(
            self.http,
            method,
            self.url + path,
            provider=NAME,
            what=what,
            headers={"X-API-Key": self.key},
            **kw,
        )

    def envd(self, sandbox: Sandbox) -> tuple[str, dict[str, str]]:
        """The sandbox's envd address, and the headers every call to it carries."""
        sid = sandbox.provider_sandbox_id
        url = (
            self.sandbox_url
            or f"https://{ENVD_PORT}-{sid}.{sandbox.provider_data.get('domain') or self.domain}"
        )
        headers = {
            "E2b-Sandbox-Id": sid,
            "E2b-Sandbox-Port": str(ENVD_PORT),
            # envd runs commands as the user named here; root matches the other providers.
            "Authorization": "Basic " + b64(b"root:"),
        }
        token = sandbox.provider_data.get("access_token")
        if token:
            headers["X-Access-Token"] = token
        return url.rstrip("/"), headers

    async def rpc(self, sandbox: Sandbox, method: str, msg: dict[str, Any]) -> dict[str, Any]:
        url, headers = self.envd(sandbox)
        not_found = "FILE_NOT_FOUND" if method.startswith("filesystem.") else "PROCESS_NOT_FOUND"
        return await connect.unary(
            self.http,
            f"{url}/{method}",
            msg,
            provider=NAME,
            what=method,
            headers=headers,
            not_found=not_found,
            idempotent=method in _READ_ONLY,
        )

    def rpc_stream(
        self, sandbox: Sandbox, method: str, msg: dict[str, Any], what: str
    ) -> AsyncIterator[dict[str, Any]]:
        url, headers = self.envd(sandbox)
        return connect.server_stream(
            self.http, f"{url}/{method}", msg, provider=NAME, what=what, headers=headers
        )
