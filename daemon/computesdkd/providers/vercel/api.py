"""Vercel Sandbox's REST API, as the provider and its runs use it: the calls the
official SDKs make (@vercel/sandbox, vercel-sandbox), checked by
tests/test_vercel_contract.py.

Configuration: VERCEL_TOKEN (or VERCEL_OIDC_TOKEN), VERCEL_TEAM_ID,
VERCEL_PROJECT_ID, VERCEL_PLAN (hobby, pro or enterprise: the limits checked
before a create; pro by default), and VERCEL_API_URL to point elsewhere.

Everything Vercel answers is untrusted: a JSON answer is read up to MAX_JSON
bytes (the transport stops reading past it), names and ids that go back into a
URL must look like ids, and fields are checked for their type.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from computesdkd.domain.errors import Internal
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http

NAME = "vercel"
MAX_JSON = 1 << 20
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def bad_answer(what: str, why: str) -> Internal:
    return Internal(f"{NAME}: {what}: {why}", reason="PROVIDER_ERROR", provider=NAME)


class VercelAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.token = env.get("VERCEL_TOKEN") or env.get("VERCEL_OIDC_TOKEN", "")
        self.team = env.get("VERCEL_TEAM_ID", "")
        self.project = env.get("VERCEL_PROJECT_ID", "")
        self.plan = (env.get("VERCEL_PLAN") or "pro").strip().lower()
        self.url = (env.get("VERCEL_API_URL") or "https://vercel.com/api").rstrip("/")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=http.BoundedTransport(
                None, lambda n: bad_answer("answer", f"larger than {n} bytes")
            ),
        )

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
        """A call's URL and keywords: the token, and the team every call names.
        Calls on a sandbox by name also name the project (params), which a
        personal token needs."""
        kw["headers"] = {"Authorization": f"Bearer {self.token}", **kw.get("headers", {})}
        kw["params"] = {"teamId": self.team, **kw.get("params", {})}
        return f"{self.url}{path}", kw

    async def call(
        self, method: str, path: str, what: str, *, cap: int = MAX_JSON, **kw: Any
    ) -> httpx.Response:
        url, kw = self._request(path, kw)
        kw["extensions"] = {http.BODY_LIMIT: cap}
        return await http.send(self.http, method, url, provider=NAME, what=what, **kw)

    async def json(self, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
        """A call's JSON object (error statuses in ok answer an empty one)."""
        resp = await self.call(method, path, what, **kw)
        if resp.status_code >= 300:
            return {}
        try:
            body = resp.json()
        except ValueError:
            raise bad_answer(what, "the answer is not JSON") from None
        if not isinstance(body, dict):
            raise bad_answer(what, "the answer is not a JSON object")
        return body

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, what: str, **kw: Any
    ) -> AsyncIterator[httpx.Response]:
        """A streamed answer, unbounded here: its reader bounds what it keeps."""
        url, kw = self._request(path, kw)
        async with http.stream(self.http, method, url, provider=NAME, what=what, **kw) as resp:
            yield resp


def field(obj: Any, key: str, kind: type, what: str) -> Any:
    """obj[key], which must be a kind (int accepts no bool)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_answer(what, f"the answer lacks {key} ({kind.__name__})")
    return value


def ident(obj: Any, key: str, what: str) -> str:
    """An id or name the vendor gave, which later calls put in a URL path."""
    value = field(obj, key, str, what)
    if not _ID.fullmatch(value):
        raise bad_answer(what, f"the answer's {key} is not an id")
    return str(value)


def looks_like_id(value: str) -> bool:
    """Whether a caller's or the vendor's string may go into a URL path as an id."""
    return bool(_ID.fullmatch(value))


def session(sandbox: Sandbox) -> str:
    """The path of the sandbox's session, which carries its commands and files."""
    return f"/v2/sandboxes/sessions/{sandbox.provider_data['session']}"


def by_name(sandbox: Sandbox) -> str:
    return f"/v2/sandboxes/{sandbox.provider_sandbox_id}"
