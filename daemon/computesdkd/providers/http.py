"""HTTP for the cloud providers: retries with backoff, and one error mapping.

429 and 5xx (and dropped connections) are retried with exponential backoff and
jitter, honouring Retry-After. What is left is mapped to a domain error that
names the provider; credentials never appear in a message (only the status
and the vendor's own message are kept).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)

RETRYABLE = {429, 500, 502, 503, 504}


def vendor_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(body)[:300]


def error_for(provider: str, what: str, resp: httpx.Response, not_found: str) -> ComputeError:
    msg = f"{provider}: {what}: {resp.status_code} {vendor_message(resp)}"
    code = resp.status_code
    if code == 404:
        return NotFound(msg, reason=not_found, provider=provider)
    if code in (401, 403):
        return FailedPrecondition(msg, reason="PROVIDER_AUTH_FAILED", provider=provider)
    if code == 409:
        return AlreadyExists(msg, reason="PROVIDER_CONFLICT", provider=provider)
    if code in (400, 422):
        return InvalidArgument(msg, reason="PROVIDER_REJECTED", provider=provider)
    if code in RETRYABLE:
        return Unavailable(msg, reason="PROVIDER_UNAVAILABLE", provider=provider)
    return Internal(msg, reason="PROVIDER_ERROR", provider=provider)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    what: str,
    not_found: str = "NOT_FOUND",
    ok: tuple[int, ...] = (),
    retries: int = 3,
    base_delay_s: float = 0.2,
    **kw: Any,
) -> httpx.Response:
    for attempt in range(retries + 1):
        try:
            resp = await client.request(method, url, **kw)
        except httpx.TransportError as exc:
            if attempt == retries:
                raise Unavailable(
                    f"{provider}: {what}: {type(exc).__name__}",
                    reason="PROVIDER_UNAVAILABLE",
                    provider=provider,
                ) from exc
        else:
            if resp.status_code < 300 or resp.status_code in ok:
                return resp
            if resp.status_code not in RETRYABLE or attempt == retries:
                raise error_for(provider, what, resp, not_found)
            retry_after = resp.headers.get("Retry-After", "")
            if retry_after.isdigit():
                await asyncio.sleep(min(float(retry_after), 10.0))
                continue
        await asyncio.sleep(base_delay_s * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")
