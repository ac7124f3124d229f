"""A minimal Connect-protocol client with the JSON codec, over httpx.

Unary calls POST application/json. Server streams POST application/connect+json
with enveloped messages: 1 flag byte, 4-byte big-endian length, JSON; the last
envelope has flag 0x02 and carries the end-of-stream error, if any.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import ComputeError, Internal
from computesdkd.providers.common import http

_ENVELOPE = struct.Struct(">BI")
END_STREAM = 0x02
# envd sends output in small pieces; a larger message is not envd's.
MAX_MESSAGE = 4 << 20
HEADERS = {"Connect-Protocol-Version": "1"}


def envelope(msg: dict[str, Any], flags: int = 0) -> bytes:
    body = json.dumps(msg).encode()
    return _ENVELOPE.pack(flags, len(body)) + body


def connect_error(
    provider: str, what: str, err: dict[str, Any], not_found: str = "NOT_FOUND"
) -> ComputeError:
    """Maps a Connect error body {code, message} through the HTTP status it stands for."""
    status = {
        "not_found": 404,
        "invalid_argument": 400,
        "already_exists": 409,
        "permission_denied": 403,
        "unauthenticated": 401,
        "unavailable": 503,
        "resource_exhausted": 429,
        "failed_precondition": 400,
    }.get(err.get("code", ""), 500)
    return http.error_for(provider, what, httpx.Response(status, json=err), not_found)


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"code": "unknown", "message": resp.text[:300]}
    return body if isinstance(body, dict) else {"code": "unknown", "message": str(body)[:300]}


def _message(raw: bytes, provider: str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Internal(
            f"{provider}: {what}: a message is not JSON", reason="PROVIDER_ERROR", provider=provider
        )
    return body


async def unary(
    client: httpx.AsyncClient,
    url: str,
    msg: dict[str, Any],
    *,
    provider: str,
    what: str,
    headers: dict[str, str],
    not_found: str = "NOT_FOUND",
    idempotent: bool = False,
) -> dict[str, Any]:
    resp = await http.send(
        client,
        "POST",
        url,
        provider=provider,
        what=what,
        idempotent=idempotent,
        error=lambda r: connect_error(provider, what, _error_body(r), not_found),
        json=msg,
        headers={**HEADERS, **headers},
    )
    try:
        out = resp.json()
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise Internal(
            f"{provider}: {what}: the answer is not a message",
            reason="PROVIDER_ERROR",
            provider=provider,
        )
    return out


async def server_stream(
    client: httpx.AsyncClient,
    url: str,
    msg: dict[str, Any],
    *,
    provider: str,
    what: str,
    headers: dict[str, str],
) -> AsyncIterator[dict[str, Any]]:
    async with http.stream(
        client,
        "POST",
        url,
        provider=provider,
        what=what,
        error=lambda r: connect_error(provider, what, _error_body(r) if r.content else {}),
        content=envelope(msg),
        headers={**HEADERS, **headers, "Content-Type": "application/connect+json"},
        timeout=httpx.Timeout(None, connect=10.0),
    ) as resp:
        buf = b""
        async for chunk in resp.aiter_raw():
            buf += chunk
            while len(buf) >= _ENVELOPE.size:
                flags, n = _ENVELOPE.unpack_from(buf)
                if n > MAX_MESSAGE:
                    raise Internal(
                        f"{provider}: {what}: a message passed {MAX_MESSAGE} bytes",
                        reason="PROVIDER_ERROR",
                        provider=provider,
                    )
                if len(buf) < _ENVELOPE.size + n:
                    break
                body = _message(buf[_ENVELOPE.size : _ENVELOPE.size + n], provider, what)
                buf = buf[_ENVELOPE.size + n :]
                if flags & END_STREAM:
                    err = body.get("error")
                    if err:
                        raise connect_error(provider, what, err if isinstance(err, dict) else {})
                    return
                yield body
