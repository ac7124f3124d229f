"""A small Docker Engine API client: httpx over the Unix socket, plus the raw
hijacked connection that exec needs for stdin (httpx cannot upgrade a
connection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx

from computesdkd.domain.errors import AlreadyExists, ComputeError, Internal, NotFound, Unavailable

# The Engine API versions this client speaks: every call it makes means the same
# from 1.41 (Debian 12's docker.io, 20.10) to 1.47. Docker 29 refuses below 1.44,
# so the version is negotiated as the docker CLI does: the Engine's own, capped.
MIN_API = (1, 41)
MAX_API = (1, 47)
_FRAME = struct.Struct(">BxxxI")


def socket_path(docker_host: str) -> str:
    """The Engine's socket, from DOCKER_HOST as the docker CLI reads it (unix:// only)."""
    return (docker_host or "unix:///var/run/docker.sock").removeprefix("unix://")


def _error(resp: httpx.Response, what: str) -> ComputeError:
    try:
        message = resp.json().get("message", resp.text)
    except ValueError:
        message = resp.text
    if resp.status_code == 404:
        return NotFound(f"docker: {what}: {message}", reason="DOCKER_NOT_FOUND")
    if resp.status_code == 409:
        return AlreadyExists(f"docker: {what}: {message}", reason="DOCKER_CONFLICT")
    if resp.status_code >= 500:
        return Unavailable(
            f"docker: {what}: {message}", reason="PROVIDER_UNAVAILABLE", provider="docker"
        )
    return Internal(f"docker: {what}: {resp.status_code} {message}")


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def negotiate(engine_api: str, engine_min: str) -> tuple[int, int]:
    """The highest version both sides speak, or Unavailable naming both ranges."""
    try:
        top, bottom = _version(engine_api), _version(engine_min or "1.12")
    except ValueError as exc:
        raise Unavailable(
            f"docker engine reports an unreadable API version {engine_api[:40]!r}",
            reason="PROVIDER_UNAVAILABLE",
            provider="docker",
        ) from exc
    chosen = min(top, MAX_API)
    if chosen < MIN_API or chosen < bottom:
        raise Unavailable(
            f"docker engine speaks API {engine_min[:16]}-{engine_api[:16]}; computesdkd speaks "
            f"{MIN_API[0]}.{MIN_API[1]}-{MAX_API[0]}.{MAX_API[1]}",
            reason="PROVIDER_UNAVAILABLE",
            provider="docker",
        )
    return chosen


class Engine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.api = "/v{}.{}".format(*MIN_API)  # until negotiate_version() runs
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://docker" + self.api,
            timeout=httpx.Timeout(60.0, connect=5.0),
        )

    async def negotiate_version(self) -> None:
        """Asks the Engine its API range (/version needs no version in its path)."""
        try:
            resp = await self._http.get("http://docker/version", timeout=3.0)
            info = resp.json() if resp.status_code == 200 else {}
        except (httpx.TransportError, ValueError) as exc:
            raise Unavailable(
                f"docker engine unreachable at {self.socket_path}: {exc}",
                reason="PROVIDER_UNAVAILABLE",
                provider="docker",
            ) from exc
        if not isinstance(info, dict) or not isinstance(info.get("ApiVersion"), str):
            raise Unavailable(
                f"docker engine at {self.socket_path} did not say its API version",
                reason="PROVIDER_UNAVAILABLE",
                provider="docker",
            )
        chosen = negotiate(info["ApiVersion"], str(info.get("MinAPIVersion") or ""))
        self.api = "/v{}.{}".format(*chosen)
        self._http.base_url = httpx.URL("http://docker" + self.api)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, what: str, *, ok: tuple[int, ...] = (), **kw: Any
    ) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"docker engine unreachable at {self.socket_path}: {exc}",
                reason="PROVIDER_UNAVAILABLE",
                provider="docker",
            ) from exc
        if resp.status_code >= 300 and resp.status_code not in ok:
            raise _error(resp, what)
        return resp

    async def ping(self) -> None:
        await self.request("GET", "/_ping", "ping", timeout=3.0)

    async def json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        return (await self.request(method, path, what, **kw)).json()

    async def exec_create(
        self, container: str, cmd: list[str], env: list[str], cwd: str, stdin: bool
    ) -> str:
        body = {
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": cmd,
            "Env": env,
            "WorkingDir": cwd,
        }
        out = await self.json("POST", f"/containers/{container}/exec", "exec create", json=body)
        return str(out["Id"])

    async def exec_attach(self, exec_id: str) -> HijackedExec:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        head = (
            f"POST {self.api}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if b" 101 " not in status and b" 200 " not in status:
            writer.close()
            raise Internal(f"docker: exec start: {status.decode(errors='replace').strip()}")
        return HijackedExec(reader, writer)


class HijackedExec:
    """The multiplexed exec stream: 8-byte headers (stream, size), then payload."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        while True:
            try:
                hdr = await self._r.readexactly(_FRAME.size)
            except asyncio.IncompleteReadError:
                return
            stream, size = _FRAME.unpack(hdr)
            yield stream, await self._r.readexactly(size)

    async def write(self, data: bytes) -> None:
        self._w.write(data)
        await self._w.drain()

    async def close_stdin(self) -> None:
        if self._w.can_write_eof():
            self._w.write_eof()

    async def close(self) -> None:
        self._w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._w.wait_closed()
