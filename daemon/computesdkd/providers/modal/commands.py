"""Commands on Modal's task command router: TaskExecStart, then TaskExecStdioRead
from a byte offset per stream, TaskExecStdinWrite with an offset, and
TaskExecWait. Reading by offset is what lets a broken stream resume, so
background processes and re-attach work here as on local.

The foreground run is not a StreamedRun: Modal ends a command at its own
timeout_secs, has no exec kill, and the offsets are the protocol's own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc

from computesdkd.domain.errors import Unsupported
from computesdkd.domain.model import Command, ExitStatus, Output, ProcessEvent, Sandbox, Started
from computesdkd.providers.base import ProcessRun
from computesdkd.providers.common.env import process_env
from computesdkd.providers.common.run import Stream
from computesdkd.providers.modal.api import HAVE_MODAL, NAME, ModalAPI, grpc_error

if HAVE_MODAL:
    from modal_proto import task_command_router_pb2 as router_pb2

NO_SIGNALS = "the task command router has no signal call"


def new_exec_id() -> str:
    return "ex-" + uuid.uuid4().hex


async def start(api: ModalAPI, sandbox: Sandbox, command: Command, exec_id: str) -> None:
    req = router_pb2.TaskExecStartRequest(
        task_id=sandbox.provider_data["task_id"],
        exec_id=exec_id,
        command_args=command.args,
        workdir=command.cwd,
        stdout_config=router_pb2.TASK_EXEC_STDOUT_CONFIG_PIPE,
        stderr_config=router_pb2.TASK_EXEC_STDERR_CONFIG_PIPE,
        timeout_secs=(command.timeout_ms + 999) // 1000,
    )
    req.env.update(process_env(sandbox, command))
    await api.router_call(
        sandbox, "TaskExecStart", req, router_pb2.TaskExecStartResponse, "exec start"
    )


async def read(
    api: ModalAPI, sandbox: Sandbox, exec_id: str, stdout_offset: int, stderr_offset: int
) -> AsyncIterator[Output]:
    """Both streams from their offsets, as the chunks arrive; ends at EOF of both."""
    queue: asyncio.Queue[Output | BaseException | None] = asyncio.Queue()

    async def pump(fd: Any, name: Stream, offset: int) -> None:
        req = router_pb2.TaskExecStdioReadRequest(
            task_id=sandbox.provider_data["task_id"],
            exec_id=exec_id,
            offset=offset,
            file_descriptor=fd,
        )
        try:
            async for msg in api.router_stream(
                sandbox, "TaskExecStdioRead", req, router_pb2.TaskExecStdioReadResponse
            ):
                await queue.put(Output(name, msg.data, offset))
                offset += len(msg.data)
            await queue.put(None)
        except grpc.aio.AioRpcError as err:
            await queue.put(grpc_error("read output", err, "PROCESS_NOT_FOUND"))

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
    api: ModalAPI, sandbox: Sandbox, exec_id: str, started: float, timeout_set: bool
) -> ExitStatus:
    """The exit; started is when the command began (monotonic), 0 when unknown."""
    resp = await api.router_call(
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


class ModalRun(ProcessRun):
    def __init__(self, api: ModalAPI, sandbox: Sandbox, command: Command) -> None:
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
        await self._api.router_call(
            self._sandbox,
            "TaskExecStdinWrite",
            router_pb2.TaskExecStdinWriteRequest(
                task_id=self._sandbox.provider_data["task_id"],
                exec_id=self._exec_id,
                offset=self._stdin_offset,
                data=data,
                eof=eof,
            ),
            router_pb2.TaskExecStdinWriteResponse,
            "stdin",
        )
        self._stdin_offset += len(data)

    async def send_stdin(self, data: bytes) -> None:
        await self._stdin(data, False)

    async def close_stdin(self) -> None:
        await self._stdin(b"", True)

    async def send_signal(self, signal: int) -> None:
        raise Unsupported(NAME, "signals", NO_SIGNALS)

    async def aclose(self) -> None:
        pass  # Modal has no exec kill; the command's own timeout_secs bounds it
