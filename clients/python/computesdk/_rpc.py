"""Connection plumbing shared by the client classes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

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


def open_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # Quick reconnects after a daemon restart.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ])


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None
