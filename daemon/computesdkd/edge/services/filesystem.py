from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc.aio import ServicerContext
from structlog.contextvars import bind_contextvars

from computesdk_api.filesystem.v1 import filesystem_pb2 as pb
from computesdk_api.filesystem.v1 import filesystem_pb2_grpc as pb_grpc
from computesdkd.core.files import Files
from computesdkd.domain.errors import Aborted, ComputeError, InvalidArgument
from computesdkd.edge import convert
from computesdkd.edge.status import check_chunk, drain_requests, edge

Ctx = ServicerContext[Any, Any]


class FilesystemServicer(pb_grpc.FilesystemServiceServicer):
    def __init__(self, files: Files) -> None:
        self._files = files

    @edge
    async def ReadFile(
        self, request: pb.ReadFileRequest, context: Ctx
    ) -> AsyncIterator[pb.ReadFileResponse]:
        async for chunk in self._files.read(
            request.sandbox_id, request.path, request.offset, request.length
        ):
            yield pb.ReadFileResponse(data=chunk)

    @edge
    async def WriteFile(
        self, request_iterator: AsyncIterator[pb.WriteFileRequest], context: Ctx
    ) -> pb.WriteFileResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "header":
            raise InvalidArgument(
                "the first WriteFile message must carry header", reason="WRITE_HEADER_REQUIRED"
            )
        h = first.header
        bind_contextvars(sandbox_id=h.sandbox_id)

        async def chunks() -> AsyncIterator[bytes]:
            async for req in requests:
                kind = req.WhichOneof("request")
                if kind == "finish":
                    # The end: the file goes in place and the call answers, whether
                    # or not the client has closed its side yet.
                    break
                if kind != "data":
                    raise InvalidArgument(
                        "only the first WriteFile message may carry header",
                        reason="WRITE_HEADER_REPEATED",
                    )
                check_chunk(req.data, "file")
                yield req.data
            else:
                # The stream ended without a finish: a cancelled call ends it too.
                # A client that promised one went away mid-write; for one that
                # did not, a cancellation may land a loop turn after the end.
                if h.expect_finish:
                    raise Aborted("the write ended before its finish", reason="WRITE_CANCELLED")
                for _ in range(3):
                    await asyncio.sleep(0)
                if context.cancelled():
                    raise Aborted("the write was cancelled", reason="WRITE_CANCELLED")
                return

        try:
            info, written = await self._files.write(
                h.sandbox_id,
                h.path,
                chunks(),
                mode=h.mode,
                make_parents=h.make_parents,
                append=h.append,
            )
        except ComputeError:
            await drain_requests(requests)
            raise
        return pb.WriteFileResponse(info=convert.file_to(info), bytes_written=written)

    @edge
    async def ListDirectory(
        self, request: pb.ListDirectoryRequest, context: Ctx
    ) -> pb.ListDirectoryResponse:
        entries = await self._files.list_dir(request.sandbox_id, request.path)
        return pb.ListDirectoryResponse(entries=[convert.file_to(e) for e in entries])

    @edge
    async def StatPath(self, request: pb.StatPathRequest, context: Ctx) -> pb.StatPathResponse:
        info = await self._files.stat(request.sandbox_id, request.path)
        return pb.StatPathResponse(info=convert.file_to(info))

    @edge
    async def MakeDirectory(
        self, request: pb.MakeDirectoryRequest, context: Ctx
    ) -> pb.MakeDirectoryResponse:
        info = await self._files.mkdir(request.sandbox_id, request.path, request.make_parents)
        return pb.MakeDirectoryResponse(info=convert.file_to(info))

    @edge
    async def RemovePath(
        self, request: pb.RemovePathRequest, context: Ctx
    ) -> pb.RemovePathResponse:
        await self._files.remove(request.sandbox_id, request.path, request.recursive)
        return pb.RemovePathResponse()

    @edge
    async def MovePath(self, request: pb.MovePathRequest, context: Ctx) -> pb.MovePathResponse:
        info = await self._files.move(request.sandbox_id, request.source, request.destination)
        return pb.MovePathResponse(info=convert.file_to(info))
