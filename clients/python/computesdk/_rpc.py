"""Connection plumbing shared by the client classes, and the one path every call
of the client takes: call() for unary and client-streaming calls, stream() for
calls that answer with a stream. Also the helpers those classes share: pieces()
cuts data to the daemon's chunk size, fire() runs the user's callbacks."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket as _socket
import stat
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from .errors import ComputeSDKError, from_rpc_error

MAX_MESSAGE = 64 * 1024 * 1024
# Matches the daemon's per-message chunk limit.
CHUNK = 1024 * 1024

# A user's callback: plain or async, its result ignored.
Callback = Callable[..., Any]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Resp_co = TypeVar("Resp_co", covariant=True)


SYSTEM_SOCKET = "/run/computesdk/computesdkd.sock"


def default_socket() -> str:
    env = os.environ.get("COMPUTESDK_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/computesdk-{os.geteuid()}"
    return str(Path(runtime) / "computesdk" / "computesdkd.sock")


def probe_socket(path: str, defaulted: bool = False) -> None:
    """Fails at once, saying why, when nothing can answer at a Unix socket: no file,
    a stale file nobody listens on, or a socket this user may not connect to. Any
    other outcome is left to the channel (a busy daemon may be slow to accept).
    defaulted: the path is the default, not one the caller named."""
    with contextlib.suppress(OSError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ComputeSDKError(
                f"{path} is not a socket (is it computesdkd's --socket?)",
                code=grpc.StatusCode.UNAVAILABLE,
                reason="DAEMON_UNREACHABLE",
            )
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(2.0)
    why, code, reason = "", grpc.StatusCode.UNAVAILABLE, "DAEMON_UNREACHABLE"
    try:
        probe.connect(path)
    except FileNotFoundError:
        why = f"computesdkd is not running: no socket at {path}"
        why += _elsewhere(path) if defaulted else ""
    except ConnectionRefusedError:
        why = f"computesdkd is not running: {path} is a stale socket (nothing listens on it)"
    except PermissionError:
        why = (
            f"permission denied on {path} (uid {os.geteuid()}): the daemon's socket is "
            "its owner's only (mode 0600, in a 0700 directory). Run as that user (for "
            "a system daemon, root), or reach its network listener with --address "
            "and a token"
        )
        code, reason = grpc.StatusCode.PERMISSION_DENIED, "SOCKET_PERMISSION_DENIED"
    except OSError:
        return
    finally:
        probe.close()
    if why:
        raise ComputeSDKError(why, code=code, reason=reason)


def _elsewhere(path: str) -> str:
    # A non-root user's default is under their own runtime dir, so a system daemon's
    # socket is not where they look: say so, rather than that nothing runs.
    if path == SYSTEM_SOCKET:
        return ""
    try:
        os.stat(SYSTEM_SOCKET)
    except PermissionError:
        pass  # /run/computesdk is root's: a system daemon may well be there
    except OSError:
        return ""
    return (
        f" (the default for uid {os.geteuid()}; a system daemon would listen on "
        f"{SYSTEM_SOCKET}, which only root may use: run as root, set "
        "COMPUTESDK_SOCKET, or use --address with a token)"
    )


@dataclass(frozen=True)
class Transport:
    """Where the daemon is and how to reach it: the Unix socket, or TCP with TLS
    and a bearer token (the daemon's network listener)."""

    target: str
    token: str | None = None
    # TLS: None means plaintext (the socket, or a loopback --insecure-listen).
    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


def _pem(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    """PEM given as bytes, as text, or as a path to a file."""
    if value is None or isinstance(value, bytes):
        return value
    text = os.fspath(value)
    return text.encode() if "-----BEGIN" in text else Path(text).read_bytes()


def transport_for(
    socket: str | os.PathLike[str] | None = None,
    target: str | None = None,
    *,
    address: str | None = None,
    token: str | None = None,
    ca: str | bytes | os.PathLike[str] | None = None,
    cert: str | bytes | os.PathLike[str] | None = None,
    key: str | bytes | os.PathLike[str] | None = None,
    insecure: bool | None = None,
    server_name: str | None = None,
) -> Transport:
    """Options first, then $COMPUTESDK_ADDRESS, $COMPUTESDK_TOKEN, $COMPUTESDK_CA,
    $COMPUTESDK_CLIENT_CERT, $COMPUTESDK_CLIENT_KEY and $COMPUTESDK_INSECURE; an
    explicit socket or target wins over the address in the environment."""
    env = os.environ
    if target:
        # Any target, plaintext: only a token given here goes there, never the env's.
        return Transport(target, token)
    token = token or env.get("COMPUTESDK_TOKEN") or None
    if not socket:
        address = address or env.get("COMPUTESDK_ADDRESS") or None
    if not address:
        return Transport(f"unix:{socket or default_socket()}", token)
    if insecure is None:
        insecure = env.get("COMPUTESDK_INSECURE", "") not in ("", "0", "false")
    if insecure:
        return Transport(address, token)
    return Transport(
        address,
        token,
        tls=True,
        ca=_pem(ca or env.get("COMPUTESDK_CA") or None),
        cert=_pem(cert or env.get("COMPUTESDK_CLIENT_CERT") or None),
        key=_pem(key or env.get("COMPUTESDK_CLIENT_KEY") or None),
        server_name=server_name,
    )


def target_for(socket: str | os.PathLike[str] | None, target: str | None) -> str:
    return transport_for(socket, target).target


# Every method ({} names them all) waits for the daemon instead of failing while
# it restarts, so a client rides out a restart without passing it per call.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "waitForReady": True}]})


class _Bearer:
    """Puts the token on every call. Interceptors rather than call credentials,
    which grpc refuses on a plaintext channel (a loopback --insecure-listen)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=grpc.aio.Metadata(*metadata))


class _BearerUU(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, cont: Any, details: Any, request: Any) -> Any:
        return await cont(self._with_token(details), request)


class _BearerUS(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, cont: Any, details: Any, request: Any) -> Any:
        return await cont(self._with_token(details), request)


class _BearerSU(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, cont: Any, details: Any, requests: Any) -> Any:
        return await cont(self._with_token(details), requests)


class _BearerSS(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, cont: Any, details: Any, requests: Any) -> Any:
        return await cont(self._with_token(details), requests)


def open_channel(where: str | Transport) -> grpc.aio.Channel:
    t = where if isinstance(where, Transport) else Transport(where)
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.service_config", _SERVICE_CONFIG),
        # Quick reconnects after a daemon restart.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if t.server_name:
        options.append(("grpc.ssl_target_name_override", t.server_name))
    # grpc files each interceptor under one kind of call only: one per kind.
    kinds = (_BearerUU, _BearerUS, _BearerSU, _BearerSS)
    interceptors: Any = [k(t.token) for k in kinds] if t.token else None
    if t.tls:
        return grpc.aio.secure_channel(
            t.target, t.credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(t.target, options=options, interceptors=interceptors)


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
