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

API = "/v1.41"
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


class Engine:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://docker" + API,
            timeout=httpx.Timeout(60.0, connect=5.0),
        )

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
            f"POST {API}/exec/{exec_id}/start HTTP/1.1\r\nHost: docker\r\n"
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
