from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.volume.v1 import volume_pb2 as pb
from computesdk_api.volume.v1 import volume_pb2_grpc as pb_grpc
from computesdkd.edge import caller as callers
from computesdkd.edge import convert
from computesdkd.edge.status import edge
from computesdkd.features.volumes import VolumeRecord, Volumes

Ctx = ServicerContext[Any, Any]


class VolumeServicer(pb_grpc.VolumeServiceServicer):
    def __init__(self, volumes: Volumes) -> None:
        self._volumes = volumes

    def _volume(self, r: VolumeRecord) -> pb.Volume:
        return pb.Volume(
            name=r.name,
            size_mb=r.size_mb,
            persistent=r.persistent,
            create_time=convert.ts(r.created_at),
            mounted_by=self._volumes.mounted_by(r.name),
            used_bytes=self._volumes.used_bytes(r),
        )

    @edge
    async def CreateVolume(
        self, request: pb.CreateVolumeRequest, context: Ctx
    ) -> pb.CreateVolumeResponse:
        rec = await self._volumes.create(
            request.name, request.size_mb, request.persistent, tenant=callers.current().tenant
        )
        return pb.CreateVolumeResponse(volume=self._volume(rec))

    @edge
    async def GetVolume(self, request: pb.GetVolumeRequest, context: Ctx) -> pb.GetVolumeResponse:
        return pb.GetVolumeResponse(volume=self._volume(self._volumes.get(request.name)))

    @edge
    async def ListVolumes(
        self, request: pb.ListVolumesRequest, context: Ctx
    ) -> pb.ListVolumesResponse:
        return pb.ListVolumesResponse(volumes=[self._volume(r) for r in self._volumes.all()])

    @edge
    async def DeleteVolume(
        self, request: pb.DeleteVolumeRequest, context: Ctx
    ) -> pb.DeleteVolumeResponse:
        await self._volumes.delete(request.name)
        return pb.DeleteVolumeResponse()
