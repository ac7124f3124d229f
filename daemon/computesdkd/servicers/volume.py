from __future__ import annotations

from typing import Any

from grpc.aio import ServicerContext

from computesdk_api.volume.v1 import volume_pb2 as pb
from computesdk_api.volume.v1 import volume_pb2_grpc as pb_grpc
from computesdkd.manager import Manager
from computesdkd.servicers import convert
from computesdkd.servicers._edge import edge
from computesdkd.volumes import VolumeRecord

Ctx = ServicerContext[Any, Any]


class VolumeServicer(pb_grpc.VolumeServiceServicer):
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.volumes = manager.volumes

    def _volume(self, r: VolumeRecord) -> pb.Volume:
        return pb.Volume(
            name=r.name,
            size_mb=r.size_mb,
            persistent=r.persistent,
            create_time=convert.ts(r.created_at),
            mounted_by=self.volumes.mounted_by(r.name),
            used_bytes=self.volumes.used_bytes(r),
        )

    @edge
    async def CreateVolume(
        self, request: pb.CreateVolumeRequest, context: Ctx
    ) -> pb.CreateVolumeResponse:
        rec = await self.volumes.create(request.name, request.size_mb, request.persistent)
        return pb.CreateVolumeResponse(volume=self._volume(rec))

    @edge
    async def GetVolume(self, request: pb.GetVolumeRequest, context: Ctx) -> pb.GetVolumeResponse:
        return pb.GetVolumeResponse(volume=self._volume(self.volumes.get(request.name)))

    @edge
    async def ListVolumes(
        self, request: pb.ListVolumesRequest, context: Ctx
    ) -> pb.ListVolumesResponse:
        return pb.ListVolumesResponse(volumes=[self._volume(r) for r in self.volumes.all()])

    @edge
    async def DeleteVolume(
        self, request: pb.DeleteVolumeRequest, context: Ctx
    ) -> pb.DeleteVolumeResponse:
        await self.volumes.delete(request.name)
        return pb.DeleteVolumeResponse()
