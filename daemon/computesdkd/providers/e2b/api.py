"""E2B's two APIs, as the provider, its runs and its file calls use them: the REST
API for sandboxes, and envd's Connect API inside each one.

Configuration, as E2B's SDKs read it: E2B_API_KEY (required), E2B_DOMAIN,
E2B_API_URL, E2B_SANDBOX_URL (one envd endpoint for every sandbox, routed by
the E2b-Sandbox-Id header). The plan's limit on a sandbox's life comes from the
[providers.e2b] table: plan = "hobby" (1 h, the default) or "pro" (24 h), or
max_sandbox_hours = N for a plan of another size.

Whatever E2B answers is untrusted: a response held in memory is cut off at
MAX_BODY bytes, and the ids and names that go into URLs must look like E2B's.

A sandbox's port P is served by E2B's proxy at https://P-<sandboxID>.<domain>
(the SDK's get_host). E2B's rule for who may use that URL is the project's
(allowPublicTraffic): by default anyone who knows it; in a project that made
URLs private, each request needs the e2b-traffic-access-token header.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeGuard

import httpx

from computesdkd.domain.errors import Internal
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http
from computesdkd.providers.e2b import connect

NAME = "e2b"
ENVD_PORT = 49983
KEEPALIVE_S = 50
# What a response read whole may hold (a sandbox list page, a directory listing).
MAX_BODY = 8 << 20
# E2B's plans and the longest a sandbox may live on each (its MaxLengthHours).
PLAN_HOURS = {"hobby": 1, "pro": 24}
# envd calls that change nothing, so a failure mid-call may be tried again.
_READ_ONLY = {"filesystem.Filesystem/Stat", "filesystem.Filesystem/ListDir", "process.Process/List"}
_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}\.)*[A-Za-z0-9-]{1,63}")
_VERSION = re.compile(r"(\d{1,6})\.(\d{1,6})\.(\d{1,6})")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bad_answer(what: str, why: str) -> Internal:
    return Internal(f"{NAME}: {what}: {why}", reason="PROVIDER_ERROR", provider=NAME)


def answer(resp: httpx.Response, what: str) -> Any:
    """A successful answer's JSON; a body that is none is a bad answer, not a crash."""
    try:
        return resp.json()
    except ValueError:  # also a body that is not text
        raise bad_answer(what, "the answer is not JSON") from None


def is_sandbox_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_SANDBOX_ID.fullmatch(value))


def sandbox_id(value: object, what: str) -> str:
    """An id E2B gave, checked before it goes into a URL or a host name."""
    if not is_sandbox_id(value):
        raise bad_answer(what, "the sandbox id is not one E2B gives")
    return value


def domain(value: object, what: str) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not is_host(value):
        raise bad_answer(what, "the sandbox domain is not a host name")
    return value


def is_host(value: str) -> bool:
    return len(value) <= 253 and bool(_DOMAIN.fullmatch(value))


def envd_version(value: object) -> tuple[int, int, int]:
    """envd's version as numbers; (0, 0, 0) when it is missing or unreadable, so
    that only what every envd speaks is used."""
    m = _VERSION.match(value) if isinstance(value, str) else None
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


def plan_hours(options: Mapping[str, Any]) -> tuple[int, str]:
    """The plan's longest sandbox life in hours, and how E2B's rule names it."""
    hours = options.get("max_sandbox_hours")
    if hours is not None:
        if not isinstance(hours, int) or isinstance(hours, bool) or hours < 1:
            raise ValueError("providers.e2b.max_sandbox_hours must be a whole number of hours")
        return hours, f"this E2B team's limit of {hours} h"
    plan = str(options.get("plan", "hobby")).lower()
    if plan not in PLAN_HOURS:
        raise ValueError(f"providers.e2b.plan must be one of {sorted(PLAN_HOURS)}")
    return PLAN_HOURS[plan], f"E2B's {plan.capitalize()} plan limit of {PLAN_HOURS[plan]} h"


class E2BAPI:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.key = env.get("E2B_API_KEY", "")
        self.domain = env.get("E2B_DOMAIN", "e2b.app")
        self.url = env.get("E2B_API_URL") or f"https://api.{self.domain}"
        self.sandbox_url = env.get("E2B_SANDBOX_URL", "")
        timeout = httpx.Timeout(60.0, connect=10.0)
        # Calls whose answer is read whole; streams (output, downloads) are read
        # piece by piece and bounded per piece where they are parsed.
        self.http = httpx.AsyncClient(
            timeout=timeout,
            transport=http.BoundedTransport(
                MAX_BODY, lambda n: bad_answer("response", f"the body passed {n} bytes")
            ),
        )
        self.streams = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self.http.aclose()
        await self.streams.aclose()

    async def rest(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        headers = {"X-API-Key": self.key, **kw.pop("headers", {})}
        return await http.send(
            self.http, method, self.url + path, provider=NAME, what=what, headers=headers, **kw
        )

    def envd(self, sandbox: Sandbox) -> tuple[str, dict[str, str]]:
        """The sandbox's envd address, and the headers every call to it carries."""
        sid = sandbox_id(sandbox.provider_sandbox_id, "envd")
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
        # Every sandbox made now has one (create kills a sandbox without it); only
        # a record from before that rule may lack it.
        if token := sandbox.provider_data.get("access_token"):
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
        # As E2B's SDK asks: envd then pings a quiet stream, so that no proxy on the
        # way takes a long silent command for a dead connection.
        headers["Keepalive-Ping-Interval"] = str(KEEPALIVE_S)
        return connect.server_stream(
            self.streams, f"{url}/{method}", msg, provider=NAME, what=what, headers=headers
        )
