from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext
from structlog.contextvars import bind_contextvars

from computesdk_api.process.v1 import process_pb2 as pb
from computesdk_api.process.v1 import process_pb2_grpc as pb_grpc
from computesdkd.core.processes import Processes
from computesdkd.domain.errors import ComputeError, InvalidArgument
from computesdkd.domain.model import ExitStatus, Output, ProcessEvent, Started
from computesdkd.edge import convert
from computesdkd.edge.status import check_chunk, drain_requests, edge
from computesdkd.providers.base import ProcessRun

Ctx = ServicerContext[Any, Any]


# Output RunCommand carries inline per stream: both fit in gRPC's default 4 MiB message.
RUN_OUTPUT_LIMIT = 1 << 20


def _event(ev: ProcessEvent) -> dict[str, Any]:
    """Keyword arguments for ExecResponse / AttachProcessResponse."""
    if isinstance(ev, Started):
        return {"started": pb.Started(process_id=ev.process_id, pid=ev.pid)}
    if isinstance(ev, Output):
        return {ev.stream: pb.Output(data=ev.data, offset=ev.offset)}
    assert isinstance(ev, ExitStatus)
    return {"exited": convert.exited_to(ev)}


async def _forward_input(
    requests: AsyncIterator[pb.ExecRequest], run: ProcessRun, failure: list[ComputeError]
) -> None:
    try:
        async for req in requests:
            kind = req.WhichOneof("request")
            if kind == "stdin":
                check_chunk(req.stdin, "stdin")
                await run.send_stdin(req.stdin)
            elif kind == "close_stdin":
                await run.close_stdin()
            elif kind == "signal":
                await run.send_signal(req.signal)
            else:
                raise InvalidArgument(
                    "only the first Exec message may carry start", reason="EXEC_START_REPEATED"
                )
    except ComputeError as exc:
        if exc.reason in _INPUT_AFTER_EXIT:
            # Input that lost the race with the process's exit: the output stream
            # says how it ended (or that the sandbox went away), so nothing is lost.
            return
        failure.append(exc)
        await run.aclose()  # ends the output stream, which then reports the failure


_INPUT_AFTER_EXIT = frozenset({"SANDBOX_TERMINATED", "PROCESS_EXITED"})


# An Exec client keeps its request stream open until the call ends, so only the
# messages already in flight are read before failing.
EXEC_DRAIN_SECONDS = 0.1


class ProcessServicer(pb_grpc.ProcessServiceServicer):
    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    @edge
    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecRequest], context: Ctx
    ) -> AsyncIterator[pb.ExecResponse]:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "start":
            raise InvalidArgument(
                "the first Exec message must carry start", reason="EXEC_START_REQUIRED"
            )
        bind_contextvars(sandbox_id=first.start.sandbox_id)
        try:
            run, events = await self._processes.exec(
                first.start.sandbox_id, convert.command_from(first.start.command)
            )
        except ComputeError:
            await drain_requests(requests, EXEC_DRAIN_SECONDS)
            raise
        failure: list[ComputeError] = []
        forward: asyncio.Task[None] | None = None
        try:
            async for ev in events:
                if isinstance(ev, Started):
                    forward = asyncio.create_task(_forward_input(requests, run, failure))
                yield pb.ExecResponse(**_event(ev))
        except ComputeError:
            if failure:
                raise failure[0] from None
            if forward is None:  # failed before any input was read
                await drain_requests(requests, EXEC_DRAIN_SECONDS)
            raise
        finally:
            if forward is not None:
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forward

    @edge
    async def RunCommand(
        self, request: pb.RunCommandRequest, context: Ctx
    ) -> pb.RunCommandResponse:
        bind_contextvars(sandbox_id=request.sandbox_id)
        limit = min(request.max_output_bytes or RUN_OUTPUT_LIMIT, RUN_OUTPUT_LIMIT)
        out = await self._processes.run_command(
            request.sandbox_id, convert.command_from(request.command), limit
        )
        resp = pb.RunCommandResponse(stdout=bytes(out.stdout), stderr=bytes(out.stderr))
        if out.started is not None:
            resp.process_id, resp.pid = out.started.process_id, out.started.pid
        if out.exited is not None:
            resp.exited.CopyFrom(convert.exited_to(out.exited))
        return resp

    @edge
    async def StartProcess(
        self, request: pb.StartProcessRequest, context: Ctx
    ) -> pb.StartProcessResponse:
        info = await self._processes.start(
            request.sandbox_id, convert.command_from(request.command), request.tag
        )
        return pb.StartProcessResponse(process=convert.process_to(info))

    @edge
    async def AttachProcess(
        self, request: pb.AttachProcessRequest, context: Ctx
    ) -> AsyncIterator[pb.AttachProcessResponse]:
        events = self._processes.attach(
            request.sandbox_id, request.process_id, request.stdout_offset, request.stderr_offset
        )
        async for ev in events:
            yield pb.AttachProcessResponse(**_event(ev))

    @edge
    async def WriteStdin(
        self, request: pb.WriteStdinRequest, context: Ctx
    ) -> pb.WriteStdinResponse:
        check_chunk(request.data, "stdin")
        await self._processes.write_stdin(
            request.sandbox_id, request.process_id, request.data, request.close
        )
        return pb.WriteStdinResponse()

    @edge
    async def SignalProcess(
        self, request: pb.SignalProcessRequest, context: Ctx
    ) -> pb.SignalProcessResponse:
        await self._processes.signal(request.sandbox_id, request.process_id, request.signal)
        return pb.SignalProcessResponse()

    @edge
    async def ListProcesses(
        self, request: pb.ListProcessesRequest, context: Ctx
    ) -> pb.ListProcessesResponse:
        procs = await self._processes.list(request.sandbox_id)
        return pb.ListProcessesResponse(processes=[convert.process_to(p) for p in procs])
