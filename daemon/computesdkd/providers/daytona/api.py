"""Daytona's two APIs, as the provider, its runs and its file calls use them: the
control API (`/sandbox`) and each sandbox's toolbox API.

Configuration: DAYTONA_API_KEY (required), DAYTONA_API_URL, DAYTONA_TARGET,
DAYTONA_PUBLIC_PREVIEWS (true: sandboxes' previews need no token).

Everything Daytona returns is untrusted: a response body is read up to a bound
(a larger one is an error, not a slower read), identifiers that go into later
URLs must look like identifiers, and the toolbox URL must be http(s).

The toolbox strips its stdout/stderr markers from command output unless the
client says it splits output itself: every call sends `X-Daytona-Split-Output:
true`, and no SDK version (we are not Daytona's SDK).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from computesdkd.domain.errors import Unavailable
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http

NAME = "daytona"
# A JSON answer larger than this is refused: the largest we expect is a long
# directory listing (a few hundred bytes an entry).
MAX_BODY = 8 << 20
# One frame of the logs WebSocket.
MAX_FRAME = 1 << 20
# Unbounded: file downloads, which the caller reads as a stream of chunks.
UNBOUNDED = {http.BODY_LIMIT: None}
SPLIT_OUTPUT = {"X-Daytona-Split-Output": "true"}
# An id Daytona hands back goes into later URL paths: it must be one segment.
_IDENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Idle toolbox sessions kept per sandbox for the next command.
MAX_IDLE_SESSIONS = 4


def bad_answer(what: str, why: str) -> Unavailable:
    return Unavailable(f"daytona: {what}: {why}", reason="PROVIDER_ERROR", provider=NAME)


def obj(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        out = resp.json()
    except ValueError:
        raise bad_answer(what, "the answer is not JSON") from None
    if not isinstance(out, dict):
        raise bad_answer(what, "the answer is not a JSON object")
    return out


def ident(value: object, what: str) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise bad_answer(what, "the id is malformed")
    return value


def base_url(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise bad_answer(what, "no toolbox URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_answer(what, "the toolbox URL is not http(s)")
    return value.rstrip("/")


def integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_answer(what, "a number is missing")
    return value


class DaytonaAPI:
    def __init__(
        self, env: Mapping[str, str], transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.key = env.get("DAYTONA_API_KEY", "")
        self.url = (env.get("DAYTONA_API_URL") or "https://app.daytona.io/api").rstrip("/")
        self.target = env.get("DAYTONA_TARGET", "")
        # Private sandboxes unless asked: a preview then needs a token (previews.py).
        self.public_previews = env.get("DAYTONA_PUBLIC_PREVIEWS", "").lower() in ("1", "true")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=http.BoundedTransport(
                MAX_BODY, lambda n: bad_answer("response", f"larger than {n} bytes"), transport
            ),
        )
        # Toolbox sessions whose last command ended, by Daytona sandbox id.
        self.idle: dict[str, list[str]] = {}

    async def close(self) -> None:
        await self.http.aclose()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **SPLIT_OUTPUT}

    async def call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        return await http.send(
            self.http, method, self.url + path, provider=NAME, what=what, headers=self.auth, **kw
        )

    def toolbox(self, sandbox: Sandbox) -> str:
        return f"{sandbox.provider_data['toolbox']}/{sandbox.provider_sandbox_id}"

    async def tb(
        self, sandbox: Sandbox, method: str, path: str, what: str, **kw: Any
    ) -> httpx.Response:
        kw.setdefault("not_found", "FILE_NOT_FOUND")
        return await http.send(
            self.http,
            method,
            self.toolbox(sandbox) + path,
            provider=NAME,
            what=what,
            headers={**self.auth, **kw.pop("headers", {})},
            **kw,
        )

    # ------------------------------------------------------------ sessions
    # A toolbox session is one shell that runs its commands one after another, so
    # a command gets a session no other command is using: an idle one if there is
    # one, else a new one. A command that ends normally hands its session back; a
    # killed one takes its session with it (deleting it is the only kill).

    async def session(self, sandbox: Sandbox, new_id: str) -> str:
        idle = self.idle.get(sandbox.provider_sandbox_id)
        if idle:
            return idle.pop()
        return await self.new_session(sandbox, new_id)

    async def new_session(self, sandbox: Sandbox, new_id: str) -> str:
        await self.tb(
            sandbox,
            "POST",
            "/process/session",
            "create session",
            not_found="SANDBOX_NOT_FOUND",
            json={"sessionId": new_id},
        )
        return new_id

    async def release(self, sandbox: Sandbox, session: str) -> None:
        idle = self.idle.setdefault(sandbox.provider_sandbox_id, [])
        if len(idle) < MAX_IDLE_SESSIONS:
            idle.append(session)
            return
        await self.end_session(sandbox, session)

    async def end_session(self, sandbox: Sandbox, session: str) -> None:
        await self.tb(
            sandbox,
            "DELETE",
            f"/process/session/{session}",
            "delete session",
            ok=(404,),
        )

    def forget(self, sandbox: Sandbox) -> None:
        self.idle.pop(sandbox.provider_sandbox_id, None)
