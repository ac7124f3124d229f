from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.snapshot.v1 import snapshot_pb2 as pb
from computesdk_api.snapshot.v1 import snapshot_pb2_grpc as pb_grpc
from computesdkd.domain.errors import ComputeError, InvalidArgument, ResourceExhausted
from computesdkd.edge import caller as callers
from computesdkd.edge import convert
from computesdkd.edge.references import TEMPLATE
from computesdkd.edge.status import check_chunk, drain_requests, edge
from computesdkd.edge.tenancy import Tenancy
from computesdkd.features.snapshots import SnapshotRecord, Snapshots, StateRecord

CHUNK = 1024 * 1024
MAX_ARCHIVE = 64 * 1024**3

Ctx = ServicerContext[Any, Any]


def _snapshot(r: SnapshotRecord) -> pb.Snapshot:
    return pb.Snapshot(
        id=r.id,
        sandbox_id=r.sandbox_id,
        name=r.name,
        description=r.description,
        create_time=convert.ts(r.created_at),
        size_bytes=r.size_bytes,
    )


def _state(r: StateRecord) -> pb.State:
    return pb.State(
        id=r.id,
        name=r.name,
        sandbox_id=r.sandbox_id,
        provider=r.provider,
        template=r.template,
        env=r.env,
        resources=convert.resources_to(r.resources),
        create_time=convert.ts(r.created_at),
        size_bytes=r.size_bytes,
    )


class SnapshotServicer(pb_grpc.SnapshotServiceServicer):
    def __init__(self, snapshots: Snapshots, scratch: Path, tenancy: Tenancy) -> None:
        self._snapshots = snapshots
        self._scratch = scratch
        self._tenancy = tenancy

    @edge
    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Ctx
    ) -> pb.CreateSnapshotResponse:
        rec = await self._snapshots.create(request.sandbox_id, request.name, request.description)
        return pb.CreateSnapshotResponse(snapshot=_snapshot(rec))

    @edge
    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: Ctx
    ) -> pb.ListSnapshotsResponse:
        recs = self._snapshots.list_for(request.sandbox_id)
        return pb.ListSnapshotsResponse(snapshots=[_snapshot(r) for r in recs])

    @edge
    async def RestoreSnapshot(
        self, request: pb.RestoreSnapshotRequest, context: Ctx
    ) -> pb.RestoreSnapshotResponse:
        sb = await self._snapshots.restore(request.sandbox_id, request.snapshot_id)
        return pb.RestoreSnapshotResponse(sandbox=convert.sandbox_to(sb))

    @edge
    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Ctx
    ) -> pb.DeleteSnapshotResponse:
        await self._snapshots.delete(request.sandbox_id, request.snapshot_id)
        return pb.DeleteSnapshotResponse()

    @edge
    async def SaveState(self, request: pb.SaveStateRequest, context: Ctx) -> pb.SaveStateResponse:
        return pb.SaveStateResponse(
            state=_state(await self._snapshots.save_state(request.sandbox_id, request.name))
        )

    @edge
    async def ListStates(
        self, request: pb.ListStatesRequest, context: Ctx
    ) -> pb.ListStatesResponse:
        return pb.ListStatesResponse(states=[_state(r) for r in self._snapshots.states()])

    @edge
    async def DeleteState(
        self, request: pb.DeleteStateRequest, context: Ctx
    ) -> pb.DeleteStateResponse:
        await self._snapshots.delete_state(request.state_id)
        return pb.DeleteStateResponse()

    @edge
    async def ExportState(
        self, request: pb.ExportStateRequest, context: Ctx
    ) -> AsyncIterator[pb.ExportStateResponse]:
        if not request.state_id and not request.sandbox_id:
            raise InvalidArgument("export needs a state_id or a sandbox_id", reason="NO_SOURCE")
        pending = bytearray()
        async for piece in self._snapshots.export_state(request.state_id, request.sandbox_id):
            pending += piece
            # Messages of about a chunk: small tar headers ride with the data.
            while len(pending) >= CHUNK:
                yield pb.ExportStateResponse(data=bytes(pending[:CHUNK]))
                del pending[:CHUNK]
        if pending:
            yield pb.ExportStateResponse(data=bytes(pending))

    @edge
    async def ImportState(
        self, request_iterator: AsyncIterator[pb.ImportStateRequest], context: Ctx
    ) -> pb.ImportStateResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "header":
            raise InvalidArgument(
                "the first ImportState message must carry the header", reason="HEADER_REQUIRED"
            )
        fd, name = tempfile.mkstemp(dir=self._scratch, suffix=".state")
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                try:
                    async for req in requests:
                        if req.WhichOneof("request") != "data":
                            raise InvalidArgument("only one header", reason="HEADER_REPEATED")
                        check_chunk(req.data, "archive")
                        size += len(req.data)
                        if size > MAX_ARCHIVE:
                            raise ResourceExhausted(
                                f"archive over {MAX_ARCHIVE} bytes", reason="PAYLOAD_TOO_LARGE"
                            )
                        out.write(req.data)
                except ComputeError:
                    await drain_requests(requests)
                    raise
            h = first.header
            caller = callers.current()
            sb = await self._snapshots.import_state(
                path,
                h.provider,
                dict(h.metadata),
                caller.tenant,
                lambda template: self._tenancy.visible(caller, TEMPLATE, template),
            )
        finally:
            path.unlink(missing_ok=True)
        return pb.ImportStateResponse(sandbox=convert.sandbox_to(sb))
