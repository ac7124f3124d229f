"""Commands on Modal's task command router: TaskExecStart, then TaskExecStdioRead
from a byte offset per stream, TaskExecStdinWrite with an offset, and
TaskExecWait. Reading by offset is what lets a broken stream resume, so
background processes and re-attach work here as on local.

The foreground run is not a StreamedRun: Modal ends a command at its own
timeout_secs, has no exec kill, and the offsets are the protocol's own. As in
the SDK, timeout_secs is left unset when there is no timeout, and the
variables go as an inline secret source.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from asyncio import Queue
from collections.abc import AsyncIterator
from typing import Any

import grpc

from computesdkd.domain.errors import FailedPrecondition, Unsupported
from computesdkd.domain.model import Command, ExitStatus, Output, ProcessEvent, Sandbox, Started
from computesdkd.providers.base import ProcessRun
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import Stream
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, grpc_error
from computesdkd.providers.modal.router import Router

if HAVE_MODAL:
    from modal_proto import api_pb2
    from modal_proto import task_command_router_pb2 as router_pb2

NO_SIGNALS = "the task command router has no signal call"
REOPENS = 3  # output streams reopened after an expired JWT, per read
QUEUED_CHUNKS = 16  # read ahead of a slow reader, of both streams together


def new_exec_id() -> str:
    return "ex-" + uuid.uuid4().hex


async def start(api: Router, sandbox: Sandbox, command: Command, exec_id: str) -> None:
    req = router_pb2.TaskExecStartRequest(
        task_id=sandbox.provider_data["task_id"],
        exec_id=exec_id,
        command_args=command.args,
        workdir=command.cwd,
        stdout_config=router_pb2.TASK_EXEC_STDOUT_CONFIG_PIPE,
        stderr_config=router_pb2.TASK_EXEC_STDERR_CONFIG_PIPE,
        secret_sources=[
            api_pb2.SecretSource(env=api_pb2.StringMap(contents=process_env(sandbox, command)))
        ],
    )
    if command.timeout_ms:
        req.timeout_secs = (command.timeout_ms + 999) // 1000
    await api.call(sandbox, "TaskExecStart", req, router_pb2.TaskExecStartResponse, "exec start")


async def read(
    api: Router, sandbox: Sandbox, exec_id: str, stdout_offset: int, stderr_offset: int
) -> AsyncIterator[Output]:
    """Both streams from their offsets, as the chunks arrive; ends at EOF of both.
    At most QUEUED_CHUNKS wait for the reader: then the streams are not read on
    (gRPC's flow control holds the router), so a stalled client costs no memory."""
    queue: Queue[Output | BaseException | None] = Queue(maxsize=QUEUED_CHUNKS)

    async def pump(fd: Any, name: Stream, offset: int) -> None:
        for reopen in range(REOPENS + 1):
            req = router_pb2.TaskExecStdioReadRequest(
                task_id=sandbox.provider_data["task_id"],
                exec_id=exec_id,
                offset=offset,
                file_descriptor=fd,
            )
            try:
                async for msg in api.stream(
                    sandbox, "TaskExecStdioRead", req, router_pb2.TaskExecStdioReadResponse
                ):
                    await queue.put(Output(name, msg.data, offset))
                    offset += len(msg.data)
                await queue.put(None)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED and reopen < REOPENS:
                    await api.access(sandbox, fresh=True)  # then on from the same offset
                    continue
                await queue.put(grpc_error("read output", err, "PROCESS_NOT_FOUND"))
                return
            except Exception as exc:  # a failed refresh: the reader sees it
                await queue.put(exc)
                return

    tasks = [
        asyncio.create_task(
            pump(router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT, "stdout", stdout_offset)
        ),
        asyncio.create_task(
            pump(router_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR, "stderr", stderr_offset)
        ),
    ]
    try:
        open_streams = 2
        while open_streams:
            item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


async def wait(
    api: Router, sandbox: Sandbox, exec_id: str, started: float, timeout_set: bool
) -> ExitStatus:
    """The exit; started is when the command began (monotonic), 0 when unknown."""
    resp = await api.call(
        sandbox,
        "TaskExecWait",
        router_pb2.TaskExecWaitRequest(task_id=sandbox.provider_data["task_id"], exec_id=exec_id),
        router_pb2.TaskExecWaitResponse,
        "exec wait",
    )
    ms = int((time.monotonic() - started) * 1000) if started else 0
    if resp.WhichOneof("exit_status") == "signal":
        return ExitStatus(-1, resp.signal, ms, timeout_set and resp.signal == 9)
    return ExitStatus(resp.code, 0, ms)


async def write_stdin(
    api: Router, sandbox: Sandbox, exec_id: str, data: bytes, close: bool, *, fresh: bool = False
) -> None:
    """At the offset the router reports; fresh: a process just started, at 0."""
    task_id = sandbox.provider_data["task_id"]
    if fresh:
        await _write(api, sandbox, exec_id, 0, data, close)
        return
    status = await api.call(
        sandbox,
        "TaskExecStdinStatus",
        router_pb2.TaskExecStdinStatusRequest(task_id=task_id, exec_id=exec_id),
        router_pb2.TaskExecStdinStatusResponse,
        "stdin status",
    )
    if status.closed:
        raise FailedPrecondition(
            "modal: the process's stdin is closed", reason="STDIN_CLOSED", provider=NAME
        )
    await _write(api, sandbox, exec_id, status.num_bytes_written, data, close)


async def _write(
    api: Router, sandbox: Sandbox, exec_id: str, offset: int, data: bytes, eof: bool
) -> None:
    await api.call(
        sandbox,
        "TaskExecStdinWrite",
        router_pb2.TaskExecStdinWriteRequest(
            task_id=sandbox.provider_data["task_id"],
            exec_id=exec_id,
            offset=offset,
            data=data,
            eof=eof,
        ),
        router_pb2.TaskExecStdinWriteResponse,
        "stdin",
    )


class ModalRun(ProcessRun):
    def __init__(self, api: Router, sandbox: Sandbox, command: Command) -> None:
        self._api = api
        self._sandbox = sandbox
        self._command = command
        self._exec_id = new_exec_id()
        self._stdin_offset = 0

    async def events(self) -> AsyncIterator[ProcessEvent]:
        started = time.monotonic()
        await start(self._api, self._sandbox, self._command, self._exec_id)
        yield Started(self._exec_id, 0)
        async for ev in read(self._api, self._sandbox, self._exec_id, 0, 0):
            yield ev
        yield await wait(
            self._api, self._sandbox, self._exec_id, started, bool(self._command.timeout_ms)
        )

    async def _stdin(self, data: bytes, eof: bool) -> None:
        await _write(self._api, self._sandbox, self._exec_id, self._stdin_offset, data, eof)
        self._stdin_offset += len(data)

    async def send_stdin(self, data: bytes) -> None:
        await self._stdin(data, False)

    async def close_stdin(self) -> None:
        await self._stdin(b"", True)

    async def send_signal(self, signal: int) -> None:
        raise Unsupported(NAME, "signals", NO_SIGNALS)

    async def aclose(self) -> None:
        pass  # Modal has no exec kill; the command's own timeout_secs bounds it
