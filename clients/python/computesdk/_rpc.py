"""Connection plumbing shared by the client classes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from .errors import from_rpc_error

MAX_MESSAGE = 64 * 1024 * 1024
# Matches the daemon's per-message chunk limit.
CHUNK = 1024 * 1024


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


class _WaitForReady(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Calls wait for the daemon instead of failing while it restarts.

    grpc.aio (1.85) drops this for streaming calls made through an interceptor,
    so every streaming call site also passes wait_for_ready=True itself."""

    @staticmethod
    def _details(d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if d.wait_for_ready is not None:
            return d
        return grpc.aio.ClientCallDetails(d.method, d.timeout, d.metadata, d.credentials, True)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def open_channel(target: str) -> grpc.aio.Channel:
    interceptors: Any = [_WaitForReady()]
    return grpc.aio.insecure_channel(
        target,
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Quick reconnects after a daemon restart.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None
