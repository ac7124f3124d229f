"""Client of computesdk-agent, the init process inside each local sandbox.

Wire format, both ways: 1 type byte, 4-byte big-endian length, payload. The
first frame on a connection is a JSON request; each connection carries one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ...errors import AGENT_REASONS, Aborted, ComputeError, Internal, Unavailable
from ...model import ExitStatus, Output, ProcessEvent, ProcessInfo, Started

_HDR = struct.Struct(">BI")
REQUEST, STDIN, CLOSE, SIGNAL = b"Q", b"I", b"C", b"K"
JSON, STDOUT, STDERR, EXIT, ERROR = ord("J"), ord("O"), ord("E"), ord("X"), ord("R")
MAX_FRAME = 8 << 20
# Connecting may race the agent's start-up; it creates the socket only once listening.
CONNECT_TIMEOUT_S = 5.0


class AgentGone(Aborted):
    reason = "SANDBOX_TERMINATED"


def _agent_error(body: bytes) -> ComputeError:
    err = json.loads(body)
    cls = AGENT_REASONS.get(err.get("code", ""), Internal)
    return cls(err.get("message", "agent error"), reason=err.get("code", "INTERNAL"))


def process_info(d: dict[str, Any]) -> ProcessInfo:
    ex = d.get("exit")
    return ProcessInfo(
        process_id=d["id"],
        pid=d["pid"],
        args=list(d.get("args") or []),
        tag=d.get("tag", ""),
        running=d["running"],
        exit=exit_status(ex) if ex else None,
        start_unix_ms=d["start_unix_ms"],
        stdout_bytes=d.get("stdout_bytes", 0),
        stderr_bytes=d.get("stderr_bytes", 0),
    )


def exit_status(d: dict[str, Any], oom_killed: bool = False) -> ExitStatus:
    return ExitStatus(
        exit_code=d["exit_code"],
        signal=d.get("signal", 0),
        duration_ms=d.get("duration_ms", 0),
        timed_out=d.get("timed_out", False),
        oom_killed=oom_killed,
    )


class AgentConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer

    @classmethod
    async def open(cls, socket_path: Path) -> AgentConnection:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_unix_connection(str(socket_path), limit=MAX_FRAME + 16),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise AgentGone(f"sandbox agent is not reachable: {exc}") from exc
        return cls(r, w)

    async def send(self, kind: bytes, payload: bytes) -> None:
        try:
            self._w.write(_HDR.pack(kind[0], len(payload)) + payload)
            await self._w.drain()
        except ConnectionError as exc:
            raise AgentGone("the process or its sandbox went away while taking input") from exc

    async def request(self, req: dict[str, Any]) -> None:
        await self.send(REQUEST, json.dumps(req).encode())

    async def recv(self) -> tuple[int, bytes]:
        try:
            hdr = await self._r.readexactly(_HDR.size)
            kind, n = _HDR.unpack(hdr)
            if n > MAX_FRAME:
                raise Internal(f"agent frame of {n} bytes is too large")
            return kind, await self._r.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentGone("the sandbox stopped while the call was in progress") from exc

    async def recv_json(self) -> dict[str, Any]:
        kind, body = await self.recv()
        if kind == ERROR:
            raise _agent_error(body)
        if kind != JSON:
            raise Internal(f"unexpected agent frame {kind!r}")
        out: dict[str, Any] = json.loads(body)
        return out

    async def events(
        self, stdout_offset: int = 0, stderr_offset: int = 0
    ) -> AsyncIterator[ProcessEvent]:
        """Yields Output and finally ExitStatus from a following connection."""
        offsets = {STDOUT: stdout_offset, STDERR: stderr_offset}
        while True:
            kind, body = await self.recv()
            if kind in offsets:
                yield Output("stdout" if kind == STDOUT else "stderr", body, offsets[kind])
                offsets[kind] += len(body)
            elif kind == EXIT:
                yield exit_status(json.loads(body))
                return
            elif kind == ERROR:
                raise _agent_error(body)
            else:
                raise Internal(f"unexpected agent frame {kind!r}")

    async def close(self) -> None:
        self._w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._w.wait_closed()


class Agent:
    """Per-sandbox handle: opens one connection per call."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def call(self, req: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
        conn = await AgentConnection.open(self.socket_path)
        try:
            await conn.request(req)
            if data is not None:
                await conn.send(STDIN, data)
            return await conn.recv_json()
        finally:
            await conn.close()

    async def ping(self) -> dict[str, Any]:
        return await self.call({"op": "ping"})

    async def wait_ready(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.0005
        while not self.socket_path.exists():
            if loop.time() > deadline:
                raise Unavailable("sandbox agent did not start in time", reason="AGENT_TIMEOUT")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        await self.ping()

    async def follow(self, req: dict[str, Any]) -> tuple[AgentConnection, Started]:
        conn = await AgentConnection.open(self.socket_path)
        try:
            await conn.request(req)
            info = await conn.recv_json()
        except BaseException:
            await conn.close()
            raise
        return conn, Started(info["id"], info["pid"])
