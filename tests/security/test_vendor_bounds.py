"""A vendor's error is read only as far as its message: E2B's envd and Daytona's
toolbox run as root inside the sandbox, so whoever owns the sandbox can make them
answer a call with a 500 whose body never ends. The call fails with the mapped
error, and only the first http.ERROR_BODY bytes of that body are read: counted
as the client takes them (a wrapped transport) and as the server gets them out
(a local server that sends until the client hangs up, or LIMIT)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import pytest_asyncio

from computesdkd.domain.errors import ComputeError
from computesdkd.domain.model import Sandbox
from computesdkd.providers.common import http
from computesdkd.providers.daytona.api import DaytonaAPI
from computesdkd.providers.daytona.files import ToolboxFS
from computesdkd.providers.e2b.api import E2BAPI
from computesdkd.providers.vercel.api import VercelAPI
from conftest import record

# What the server sends at most: far more than the kernel's socket buffers on
# both ends can hold (rmem and wmem together are a few tens of MiB at most), so
# a client that stops reading stops it well before this.
LIMIT = 128 << 20
BOUND = 48 << 20  # what may have gone out when the client read only ERROR_BODY
PIECE = 64 << 10
# What the daytona stub answers on /files/info (a file, so that read() goes on).
FILE_INFO = {"name": "f", "isDir": False, "size": 1, "mode": "644", "permissions": "644"}


class EndlessErrors:
    """Answers every request with a 500 whose JSON-looking body goes on until the
    client closes the connection (or LIMIT), except the paths in ok, answered 200
    with their JSON. sent is what went out for the last error."""

    def __init__(self, ok: dict[str, object] | None = None) -> None:
        self.ok = ok or {}
        self.sent = 0
        self.errors = 0
        self.sending = False
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                target = head.split(" ", 2)[1].split("?", 1)[0]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
                }
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    await reader.readuntil(b"0\r\n\r\n")
                if any(target.endswith(path) for path in self.ok):
                    body = json.dumps(next(v for p, v in self.ok.items() if target.endswith(p)))
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
                    )
                    await writer.drain()
                    continue
                await self._endless(writer)
                return
        with contextlib.suppress(OSError):
            writer.close()

    async def _endless(self, writer: asyncio.StreamWriter) -> None:
        self.errors += 1
        self.sent, self.sending = 0, True
        try:
            await self._send_until_hung_up(writer)
        finally:
            self.sending = False

    async def _send_until_hung_up(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        first = b'{"message": "envd is broken' + b"!" * (PIECE - 27)
        chunk = first
        while self.sent < LIMIT:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()  # raises once the client has hung up
            self.sent += len(chunk)
            chunk = b"!" * PIECE
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[EndlessErrors]:
    s = EndlessErrors(ok={"/files/info": FILE_INFO})
    await s.start()
    yield s
    await s.close()


class Counting(httpx.AsyncBaseTransport):
    """The real transport, counting the body bytes the client takes from it; past
    a few MiB it stops the test, so that reading the whole body fails here rather
    than filling memory."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.taken = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self._inner.handle_async_request(request)
        assert isinstance(resp.stream, httpx.AsyncByteStream)
        resp.stream = _Counted(resp.stream, self)
        return resp

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Counted(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, owner: Counting) -> None:
        self._inner, self._owner = inner, owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._owner.taken += len(chunk)
            assert self._owner.taken <= 8 << 20, "the client went on reading an error's body"
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _sent_when_done(server: EndlessErrors) -> int:
    """What the server got out for its last error, once it stopped sending."""
    for _ in range(3000):  # the server sees the hang-up a moment after the client
        if not server.sending:
            break
        await asyncio.sleep(0.01)
    assert not server.sending, "the server is still sending"
    return server.sent


Call = Callable[[httpx.AsyncClient, str], Awaitable[object]]


async def _via_send(client: httpx.AsyncClient, url: str) -> object:
    return await http.send(
        client, "POST", url + "/x", provider="e2b", what="a call", idempotent=False, json={}
    )


async def _via_stream(client: httpx.AsyncClient, url: str) -> object:
    async with http.stream(client, "GET", url + "/x", provider="e2b", what="a stream") as resp:
        return await resp.aread()


@pytest.mark.parametrize("call", [_via_send, _via_stream], ids=["send", "stream"])
async def test_an_endless_error_body_is_read_only_as_far_as_its_message(
    server: EndlessErrors, call: Call
) -> None:
    counting = Counting()
    async with httpx.AsyncClient(transport=counting) as client:
        with pytest.raises(ComputeError) as err:
            await call(client, server.url)
    assert err.value.reason == "PROVIDER_UNAVAILABLE"  # a 500, mapped as any other
    assert "e2b: a " in err.value.message and "500" in err.value.message
    assert "envd is broken" in err.value.message  # the vendor's message, cut short
    assert len(err.value.message) < 1000
    # what the client took: the first ERROR_BODY bytes, give or take one read
    assert http.ERROR_BODY <= counting.taken <= 2 * http.ERROR_BODY
    assert server.errors == 1 and await _sent_when_done(server) < BOUND


def _sandbox(provider: str, **data: str) -> Sandbox:
    sb = record(provider, "sb-bounds")
    sb.provider_sandbox_id = "abc123"
    sb.provider_data = dict(data)
    return sb


async def _e2b_stream(url: str) -> None:
    api = E2BAPI({"E2B_API_KEY": "k", "E2B_SANDBOX_URL": url})
    sb = _sandbox("e2b", access_token="t")
    try:
        msg = {"process": {"cmd": "true"}}
        async for _ in api.rpc_stream(sb, "process.Process/Start", msg, "start"):
            pass
    finally:
        await api.close()


async def _e2b_unary(url: str) -> None:
    api = E2BAPI({"E2B_API_KEY": "k", "E2B_SANDBOX_URL": url})
    try:
        await api.rpc(_sandbox("e2b", access_token="t"), "filesystem.Filesystem/MakeDir", {})
    finally:
        await api.close()


async def _daytona_download(url: str) -> None:
    api = DaytonaAPI({"DAYTONA_API_KEY": "k"})
    try:
        fs = ToolboxFS(api, _sandbox("daytona", toolbox=url))
        async for _ in fs.read("/workspace/f", 0, 0):
            pass
    finally:
        await api.close()


async def _vercel_stream(url: str) -> None:
    api = VercelAPI({"VERCEL_TOKEN": "t", "VERCEL_API_URL": url})
    try:
        async with api.stream("GET", "/v2/sandboxes/sessions/s/cmd/c/logs", "logs") as resp:
            await resp.aread()
    finally:
        await api.close()


async def _vercel_call(url: str) -> None:
    api = VercelAPI({"VERCEL_TOKEN": "t", "VERCEL_API_URL": url})
    try:
        await api.json("POST", "/v2/sandboxes/sessions/s/cmd", "run", json={})
    finally:
        await api.close()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(_e2b_stream, id="e2b-envd-stream"),
        pytest.param(_e2b_unary, id="e2b-envd-call"),
        pytest.param(_daytona_download, id="daytona-download"),
        pytest.param(_vercel_stream, id="vercel-stream"),
        pytest.param(_vercel_call, id="vercel-call"),
    ],
)
async def test_no_adapter_reads_an_endless_error_body(
    server: EndlessErrors, call: Callable[[str], Awaitable[None]]
) -> None:
    with pytest.raises(ComputeError) as err:
        await call(server.url)
    # the 500 mapped as any other, not an answer too large to read
    assert err.value.reason == "PROVIDER_UNAVAILABLE" and "500" in err.value.message
    assert len(err.value.message) < 1000
    assert server.errors == 1 and await _sent_when_done(server) < BOUND
