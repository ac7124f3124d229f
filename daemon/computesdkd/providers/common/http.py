"""HTTP for the cloud providers: one error mapping, and retries by the one policy
(retry.py).

What is tried again: for any call, a connection that was never made and a 429
or 503 (the vendor turned the call away, so nothing was done); for idempotent
calls (by method, unless the caller says), also the other 5xx and a connection
that broke mid-call. A body that is a stream is sent once, and so is a streamed
response. What is left is mapped to a domain error that names the provider;
credentials never appear in a message (only the status and the vendor's own
message are kept). Of an error's body only the first ERROR_BODY bytes are read,
whatever the call: a vendor's agent in the sandbox (envd, the toolbox) runs as
root there and could answer an error with a body that never ends.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Callable
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
from computesdkd.providers.common import retry

RETRYABLE = {429, 500, 502, 503, 504}
REFUSED = {429, 503}
IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
# Failures before the request left: safe to send again whatever the call.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

ErrorFor = Callable[[httpx.Response], ComputeError]
# What is read of an error's body: enough for the vendor's message.
ERROR_BODY = 64 << 10
# Headers that describe the body as sent, not the part of it error_head keeps.
_BODY_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}


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


def unreachable(provider: str, what: str, exc: Exception) -> Unavailable:
    return Unavailable(
        f"{provider}: {what}: {type(exc).__name__}",
        reason="PROVIDER_UNAVAILABLE",
        provider=provider,
    )


def retry_after(resp: httpx.Response) -> float | None:
    """The vendor's Retry-After in seconds (sent as seconds or as an HTTP date)."""
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


async def error_head(resp: httpx.Response) -> httpx.Response:
    """An error answer with at most ERROR_BODY bytes of its (decoded) body, which the
    error mappers may read as a whole; the rest is never read, and the streamed
    answer is closed."""
    head = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            head += chunk[: ERROR_BODY - len(head)]
            if len(head) >= ERROR_BODY:
                break
    except (httpx.HTTPError, ComputeError):
        pass  # what came is the message; a broken or oversized rest does not matter
    finally:
        await resp.aclose()
    headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _BODY_HEADERS]
    return httpx.Response(
        resp.status_code, headers=headers, content=bytes(head), request=resp.request
    )


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    what: str,
    not_found: str = "NOT_FOUND",
    ok: tuple[int, ...] = (),
    idempotent: bool | None = None,
    error: ErrorFor | None = None,
    **kw: Any,
) -> httpx.Response:
    """The response, once its status is 2xx or in ok. error maps any other
    response (by default error_for)."""
    again = method in IDEMPOTENT if idempotent is None else idempotent
    replayable = isinstance(kw.get("content"), bytes | str | None)

    def failed(exc: httpx.TransportError) -> Exception:
        broken = unreachable(provider, what, exc)
        if again or isinstance(exc, _NOT_SENT):
            return retry.Retryable(broken)
        return broken

    async def attempt() -> httpx.Response:
        # Streamed, so that an error's body is read only as far as error_head goes;
        # any other is read whole (the transport bounds it).
        try:
            resp = await client.send(client.build_request(method, url, **kw), stream=True)
        except httpx.TransportError as exc:
            raise failed(exc) from exc
        if resp.status_code < 300 or resp.status_code in ok:
            try:
                await resp.aread()
            except httpx.TransportError as exc:
                raise failed(exc) from exc
            finally:
                await resp.aclose()
            return resp
        resp = await error_head(resp)
        err = error(resp) if error else error_for(provider, what, resp, not_found)
        if resp.status_code in REFUSED or (again and resp.status_code in RETRYABLE):
            raise retry.Retryable(err, retry_after(resp))
        raise err

    return await retry.call(attempt, attempts=retry.ATTEMPTS if replayable else 1)


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    what: str,
    not_found: str = "NOT_FOUND",
    ok: tuple[int, ...] = (200,),
    error: ErrorFor | None = None,
    **kw: Any,
) -> AsyncIterator[httpx.Response]:
    """A streamed response, once its status is in ok. A broken connection, then or
    while the caller reads, is Unavailable."""
    try:
        async with client.stream(method, url, **kw) as resp:
            if resp.status_code not in ok:
                head = await error_head(resp)
                raise error(head) if error else error_for(provider, what, head, not_found)
            yield resp
    except httpx.TransportError as exc:
        raise unreachable(provider, what, exc) from exc


# A request's own bound on its answer's body (an int), or None for none at all
# (a download streamed to its reader); without it, the transport's default.
BODY_LIMIT = "computesdk.body_limit"


class _BoundedBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int, fail: Callable[[], Exception]):
        self._inner, self._limit, self._fail = inner, limit, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise self._fail()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(httpx.AsyncBaseTransport):
    """Stops reading a vendor's answer past its bound, before it is all in memory:
    what a vendor sends is untrusted input. fail makes the error for the one that
    passes it (naming the provider)."""

    def __init__(
        self,
        default_limit: int | None,
        fail: Callable[[int], Exception],
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._default = default_limit
        self._fail = fail

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self._inner.handle_async_request(request)
        limit = request.extensions.get(BODY_LIMIT, self._default)
        if limit is None:
            return resp
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        resp.stream = _BoundedBody(resp.stream, int(limit), lambda: self._fail(int(limit)))
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()
