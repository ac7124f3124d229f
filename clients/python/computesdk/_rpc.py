"""Connection plumbing shared by the client classes, and the one path every call
of the client takes: call() for unary and client-streaming calls, stream() for
calls that answer with a stream. Also the helpers those classes share: pieces()
cuts data to the daemon's chunk size, fire() runs the user's callbacks."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from .errors import from_rpc_error

MAX_MESSAGE = 64 * 1024 * 1024
# Matches the daemon's per-message chunk limit.
CHUNK = 1024 * 1024

# A user's callback: plain or async, its result ignored.
Callback = Callable[..., Any]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Resp_co = TypeVar("Resp_co", covariant=True)


def default_socket() -> str:
    env = os.environ.get("COMPUTESDK_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/computesdk/computesdkd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/computesdk-{os.geteuid()}"
    return str(Path(runtime) / "computesdk" / "computesdkd.sock")


def target_for(socket: str | os.PathLike[str] | None, target: str | None) -> str:
    if target:
        return target
    return f"unix:{socket or default_socket()}"


# Every method ({} names them all) waits for the daemon instead of failing while
# it restarts, so a client rides out a restart without passing it per call.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "waitForReady": True}]})


def open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.service_config", _SERVICE_CONFIG),
            # Quick reconnects after a daemon restart.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raises a failed call as its typed ComputeSDKError. call() and stream() use
    it; wrap calls made on the raw stubs (client.sandboxes, ...) in it too."""
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None


async def call(method: Callable[[Req], Awaitable[Resp]], request: Req) -> Resp:
    """A unary call, or a client-streaming one (request is then an iterator)."""
    with translated():
        return await method(request)


class _StreamingCall(Protocol[Resp_co]):
    def __aiter__(self) -> AsyncIterator[Resp_co]: ...

    def cancel(self) -> bool: ...


async def stream(
    method: Callable[[Req], _StreamingCall[Resp]], request: Req
) -> AsyncGenerator[Resp, None]:
    """The answers of a server- or bidi-streaming call, request being an iterator
    for the latter. Closing it (contextlib.aclosing) cancels the call on the
    daemon at once; left unclosed, the call ends when the generator is collected."""
    rpc = method(request)
    try:
        with translated():
            async for resp in rpc:
                yield resp
    finally:
        rpc.cancel()


def pieces(data: bytes) -> Iterator[bytes]:
    """data cut, lazily, into messages of at most CHUNK bytes; none for empty data."""
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


async def fire(callbacks: Iterable[Callback | None], *args: Any) -> None:
    """Calls each callback (None is skipped) in turn, awaiting an async one's result.
    It walks a copy: a callback that registers another does not change this round."""
    for cb in list(callbacks):
        if cb is not None:
            result = cb(*args)
            if inspect.isawaitable(result):
                await result
