"""Client of computesdk-agent, the init process inside each sandbox of ours (local,
kubernetes).

The wire is proto/computesdk/agent/v1/agent.proto, both ways: 1 type byte,
4-byte big-endian length, payload. The first frame on a connection is a
Request; each connection carries one. Requests, replies, exit statuses, errors
and signals are protobuf messages (agentpb, generated); stdin, stdout and
stderr are raw bytes.

The agent runs inside the sandbox, next to the code it confines: everything it
sends is untrusted input. Frames and messages are size-capped before they are
parsed; what protobuf cannot check (signs, ranges, lengths, counts, presence)
is checked field by field; and an error's reason is the daemon's own, chosen
from a fixed table by the agent's code; its message is cut short. A reply that
does not fit the protocol fails the call with AGENT_PROTOCOL_ERROR and says no
more.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from computesdkd.domain.errors import AGENT_REASONS, Aborted, ComputeError, Internal, Unavailable
from computesdkd.domain.model import ExitStatus, Output, ProcessEvent, ProcessInfo, Started
from computesdkd.providers.common.agentpb import agent_pb2 as pb

_HDR = struct.Struct(">BI")
REQUEST, STDIN, CLOSE, SIGNAL = b"Q", b"I", b"C", b"K"
# 'J' carries the reply to the request (its payload was JSON once).
REPLY, STDOUT, STDERR, EXIT, ERROR = ord("J"), ord("O"), ord("E"), ord("X"), ord("R")
MAX_FRAME = 8 << 20
MAX_MESSAGE_BYTES = 4 << 20  # a process list with long argument vectors stays under this
MAX_TEXT = 4096  # a process id or tag
MAX_ARGS = 65536
MAX_PROCESSES = 100_000
MAX_SIGNAL = 64
MAX_MESSAGE = 512  # what of an agent's error text a client sees
# Connecting may race the agent's start-up; it creates the socket only once listening.
CONNECT_TIMEOUT_S = 5.0

# The agent's error codes the daemon has a reason for: ERROR_CODE_X -> X, when X
# is in AGENT_REASONS. Any other code (INTERNAL, UNSPECIFIED, one this daemon
# does not know) becomes AGENT_ERROR.
_REASON_OF: dict[int, str] = {
    number: name.removeprefix("ERROR_CODE_")
    for name, number in pb.ErrorCode.items()
    if name.removeprefix("ERROR_CODE_") in AGENT_REASONS
}

_M = TypeVar("_M", bound=Message)


class AgentGone(Aborted):
    reason = "SANDBOX_TERMINATED"


class ProtocolError(Internal):
    """The agent's reply does not fit the protocol: a broken or hostile agent."""

    reason = "AGENT_PROTOCOL_ERROR"

    def __init__(self, what: str) -> None:
        super().__init__(f"the sandbox agent sent a malformed reply ({what})")


def decode(cls: type[_M], body: bytes) -> _M:
    """A message of type cls from the agent, or ProtocolError. The size is capped
    before the parser sees it; the messages are flat, so depth needs no cap of its
    own (upb bounds the nesting of unknown groups)."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message of {len(body)} bytes")
    try:
        return cls.FromString(body)
    except (DecodeError, RecursionError, ValueError):
        raise ProtocolError(f"not a {cls.__name__}") from None


def _count(value: int, what: str) -> int:
    if value < 0:
        raise ProtocolError(f"field {what!r} is negative")
    return value


def _text(value: str, what: str, *, required: bool = False) -> str:
    if len(value) > MAX_TEXT:
        raise ProtocolError(f"field {what!r} is too long")
    if required and not value:
        raise ProtocolError(f"field {what!r} is missing")
    return value


def _agent_error(body: bytes) -> ComputeError:
    err = decode(pb.Error, body)
    message = err.message[:MAX_MESSAGE]
    reason = _REASON_OF.get(err.code)
    if reason is None:  # not a reason the daemon knows: never pass it on
        return Internal(f"sandbox agent error: {message}", reason="AGENT_ERROR")
    return AGENT_REASONS[reason](message or "sandbox agent error", reason=reason)


def process_info(p: pb.ProcessInfo) -> ProcessInfo:
    if len(p.args) > MAX_ARGS:
        raise ProtocolError("field 'args'")
    return ProcessInfo(
        process_id=_text(p.id, "id", required=True),
        pid=_count(p.pid, "pid"),
        args=list(p.args),
        tag=_text(p.tag, "tag"),
        running=p.running,
        exit=exit_status(p.exit) if p.HasField("exit") else None,
        start_unix_ms=_count(p.start_unix_ms, "start_unix_ms"),
        stdout_bytes=_count(p.stdout_bytes, "stdout_bytes"),
        stderr_bytes=_count(p.stderr_bytes, "stderr_bytes"),
    )


def exit_status(e: pb.ExitStatus, oom_killed: bool = False) -> ExitStatus:
    # An exit code is 0-255, or -1 when a signal ended the process.
    if not -1 <= e.exit_code <= 255:
        raise ProtocolError("field 'exit_code'")
    if not 0 <= e.signal <= MAX_SIGNAL:
        raise ProtocolError("field 'signal'")
    return ExitStatus(
        exit_code=e.exit_code,
        signal=e.signal,
        duration_ms=_count(e.duration_ms, "duration_ms"),
        timed_out=e.timed_out,
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

    async def request(self, req: pb.Request) -> None:
        await self.send(REQUEST, req.SerializeToString())

    async def send_signal(self, signal: int) -> None:
        await self.send(SIGNAL, pb.SignalFrame(signal=signal).SerializeToString())

    async def recv(self) -> tuple[int, bytes]:
        try:
            hdr = await self._r.readexactly(_HDR.size)
            kind, n = _HDR.unpack(hdr)
            if n > MAX_FRAME:
                raise ProtocolError(f"a frame of {n} bytes")
            return kind, await self._r.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise AgentGone("the sandbox stopped while the call was in progress") from exc

    async def recv_reply(self, cls: type[_M]) -> _M:
        kind, body = await self.recv()
        if kind == ERROR:
            raise _agent_error(body)
        if kind != REPLY:
            raise ProtocolError(f"frame type {kind}")
        return decode(cls, body)

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
                yield exit_status(decode(pb.ExitStatus, body))
                return
            elif kind == ERROR:
                raise _agent_error(body)
            else:
                raise ProtocolError(f"frame type {kind}")

    async def close(self) -> None:
        self._w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._w.wait_closed()


class Agent:
    """Per-sandbox handle: opens one connection per call, on the agent's Unix socket
    (NetAgent in kubernetes/agent.py opens it over the pod network instead)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def _open(self) -> AgentConnection:
        return await AgentConnection.open(self.socket_path)

    async def call(self, req: pb.Request, reply: type[_M], data: bytes | None = None) -> _M:
        conn = await self._open()
        try:
            await conn.request(req)
            if data is not None:
                await conn.send(STDIN, data)
            return await conn.recv_reply(reply)
        finally:
            await conn.close()

    async def start(self, req: pb.StartRequest) -> ProcessInfo:
        return process_info(await self.call(pb.Request(start=req), pb.ProcessInfo))

    async def processes(self) -> list[ProcessInfo]:
        listed = (await self.call(pb.Request(list=pb.ListRequest()), pb.ListReply)).processes
        if len(listed) > MAX_PROCESSES:
            raise ProtocolError("field 'processes'")
        return [process_info(p) for p in listed]

    async def signal(self, process_id: str, signal: int) -> None:
        req = pb.Request(signal=pb.SignalRequest(id=process_id, signal=signal))
        await self.call(req, pb.Ack)

    async def killall(self, signal: int) -> None:
        await self.call(pb.Request(killall=pb.KillAllRequest(signal=signal)), pb.Ack)

    async def write_stdin(self, process_id: str, data: bytes, close: bool) -> None:
        req = pb.Request(stdin=pb.StdinRequest(id=process_id, close=close))
        await self.call(req, pb.Ack, data)

    async def ping(self) -> int:
        """The agent's pid (1 in a sandbox)."""
        return _count((await self.call(pb.Request(ping=pb.PingRequest()), pb.PingReply)).pid, "pid")

    async def wait_ready(self, timeout_s: float) -> None:
        """The socket listens before init starts (the daemon bound it), so the first
        ping queues until the agent accepts: no polling."""
        try:
            await asyncio.wait_for(self.ping(), timeout_s)
        except TimeoutError:
            raise Unavailable(
                "sandbox agent did not start in time", reason="AGENT_TIMEOUT"
            ) from None

    async def follow(self, req: pb.Request) -> tuple[AgentConnection, Started]:
        conn = await self._open()
        try:
            await conn.request(req)
            info = process_info(await conn.recv_reply(pb.ProcessInfo))
        except BaseException:
            await conn.close()
            raise
        return conn, Started(info.process_id, info.pid)
