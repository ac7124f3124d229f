"""Tiny ASGI helpers shared by the wire-level fakes, and a runner that serves
apps on loopback ports from a thread of their own."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            msg = await self._receive()
            if msg.get("body"):
                yield msg["body"]
            if not msg.get("more_body"):
                return

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def json(self) -> Any:
        raw = await self.body()
        return json.loads(raw) if raw else {}


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    hdrs = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, obj: Any) -> None:
    await respond(send, status, json.dumps(obj).encode())


async def respond_stream(
    send: Send, status: int, content_type: str, chunks: AsyncIterator[bytes]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


App = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


class ServerThread:
    """Serves ASGI apps on 127.0.0.1 ports chosen by the kernel, in one thread."""

    def __init__(
        self, apps: list[App], cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None
    ) -> None:
        self._servers = [
            uvicorn.Server(
                uvicorn.Config(
                    a,
                    host="127.0.0.1",
                    port=0,
                    log_level="warning",
                    lifespan="off",
                    interface="asgi3",
                )
            )
            for a in apps
        ]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.ports: list[int] = []
        self._cleanup = cleanup

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(asyncio.gather(*(s.serve() for s in self._servers)))
        finally:
            if self._cleanup is not None:
                self.loop.run_until_complete(self._cleanup())
            self.loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        while not all(s.started for s in self._servers):
            threading.Event().wait(0.01)
        self.ports = [s.servers[0].sockets[0].getsockname()[1] for s in self._servers]
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.should_exit = True
        self._thread.join(timeout=10)
