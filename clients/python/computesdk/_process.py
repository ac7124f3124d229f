"""Commands in a sandbox: a streamed run (ExecStream) and a background process
(Process). Reached through Sandbox.exec_stream, start_process and process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from computesdk_api.process.v1 import process_pb2 as proc_pb

from . import _rpc
from .types import ExecResult, OutputChunk

if TYPE_CHECKING:
    from .sandbox import Sandbox


def _command(
    command: str | Sequence[str],
    cwd: str,
    env: Mapping[str, str] | None,
    timeout_ms: int,
    stdin: bool,
) -> proc_pb.Command:
    c = proc_pb.Command(cwd=cwd, env=dict(env or {}), timeout_ms=timeout_ms, stdin=stdin)
    if isinstance(command, str):
        c.command = command
    else:
        c.args.extend(command)
    return c


def _stdin_requests(raw: bytes) -> list[proc_pb.ExecRequest]:
    return [proc_pb.ExecRequest(stdin=piece) for piece in _rpc.pieces(raw)]


class _Tracked(Protocol):
    process_id: str
    pid: int
    exited: proc_pb.Exited | None


async def _output(
    responses: AsyncGenerator[proc_pb.ExecResponse | proc_pb.AttachProcessResponse, None],
    proc: _Tracked,
) -> AsyncIterator[OutputChunk]:
    """Turns an Exec or AttachProcess stream into chunks, noting start and exit on proc."""
    async with contextlib.aclosing(responses):  # returning at the exit cancels the call
        async for resp in responses:
            kind = resp.WhichOneof("event")
            if kind == "started":
                proc.process_id, proc.pid = resp.started.process_id, resp.started.pid
            elif kind in ("stdout", "stderr"):
                out = getattr(resp, kind)
                yield OutputChunk(kind, out.data, out.offset)
            elif kind == "exited":
                proc.exited = resp.exited
                # The exit is the stream's last word. Input sent as the
                # command ended can make grpcio report INTERNAL ("Internal
                # error from Core", grpc/grpc#36066) in place of the OK
                # that follows: nothing after the exit is worth waiting for.
                return


class ExecStream:
    """A running command. Iterate it for output chunks; afterwards .result holds the end."""

    def __init__(self, sandbox: Sandbox, command: proc_pb.Command, stdin: bytes | None) -> None:
        self._sandbox = sandbox
        self._requests: asyncio.Queue[proc_pb.ExecRequest | None] = asyncio.Queue()
        self._requests.put_nowait(
            proc_pb.ExecRequest(start=proc_pb.ExecStart(sandbox_id=sandbox.id, command=command))
        )
        if stdin is not None:
            for req in _stdin_requests(stdin):
                self._requests.put_nowait(req)
            self._requests.put_nowait(proc_pb.ExecRequest(close_stdin=True))
        self.process_id = ""
        self.pid = 0
        self.exited: proc_pb.Exited | None = None

    async def _outgoing(self) -> AsyncIterator[proc_pb.ExecRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        try:
            responses = _rpc.stream(self._sandbox.client.processes.Exec, self._outgoing())
            async for chunk in _output(responses, self):
                yield chunk
        finally:
            self._requests.put_nowait(None)

    async def send_stdin(self, data: bytes | str) -> None:
        for req in _stdin_requests(data.encode() if isinstance(data, str) else data):
            await self._requests.put(req)

    async def close_stdin(self) -> None:
        await self._requests.put(proc_pb.ExecRequest(close_stdin=True))

    async def signal(self, signal: int) -> None:
        await self._requests.put(proc_pb.ExecRequest(signal=signal))

    @property
    def exit_code(self) -> int | None:
        return None if self.exited is None else self.exited.exit_code


class Process:
    """A background process; its output can be re-read from any byte offset."""

    @property
    def id(self) -> str:
        return self.process_id

    def __init__(self, sandbox: Sandbox, info: proc_pb.Process) -> None:
        self.sandbox = sandbox
        self.process_id = info.process_id
        self.pid = info.pid
        self.exited: proc_pb.Exited | None = None

    async def attach(
        self, stdout_offset: int = 0, stderr_offset: int = 0
    ) -> AsyncIterator[OutputChunk]:
        req = proc_pb.AttachProcessRequest(
            sandbox_id=self.sandbox.id,
            process_id=self.id,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
        )
        async for chunk in _output(
            _rpc.stream(self.sandbox.client.processes.AttachProcess, req), self
        ):
            yield chunk

    async def wait(self) -> ExecResult:
        """Collects all output from offset 0 until the process exits."""
        return await self._collect(bytearray(), bytearray())

    async def _collect(self, out: bytearray, err: bytearray) -> ExecResult:
        """Appends the output from where out and err end until the process exits."""
        async for chunk in self.attach(len(out), len(err)):
            (out if chunk.stream == "stdout" else err).extend(chunk.data)
        assert self.exited is not None
        return _result(bytes(out), bytes(err), self.exited, self.id)

    async def write_stdin(self, data: bytes | str, *, close: bool = False) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await _rpc.call(
            self.sandbox.client.processes.WriteStdin,
            proc_pb.WriteStdinRequest(
                sandbox_id=self.sandbox.id, process_id=self.id, data=raw, close=close
            ),
        )

    async def signal(self, signal: int) -> None:
        await _rpc.call(
            self.sandbox.client.processes.SignalProcess,
            proc_pb.SignalProcessRequest(
                sandbox_id=self.sandbox.id, process_id=self.id, signal=signal
            ),
        )

    async def kill(self) -> None:
        await self.signal(9)


def _result(out: bytes, err: bytes, ex: proc_pb.Exited, process_id: str) -> ExecResult:
    return ExecResult(
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        exit_code=ex.exit_code,
        duration_ms=ex.duration_ms,
        signal=ex.signal,
        timed_out=ex.timed_out,
        oom_killed=ex.oom_killed,
        process_id=process_id,
        stdout_bytes=out,
        stderr_bytes=err,
    )
