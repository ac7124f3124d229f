"""Snapshots, saved states and volumes. Reached as sandbox.snapshots,
client.states and client.volumes."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from computesdk_api.snapshot.v1 import snapshot_pb2 as snap_pb
from computesdk_api.volume.v1 import volume_pb2 as vol_pb

from . import _rpc
from .types import Resources

if TYPE_CHECKING:
    from .client import Client
    from .sandbox import Sandbox


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    sandbox_id: str
    name: str
    description: str
    created: datetime
    size_bytes: int

    @classmethod
    def from_proto(cls, s: snap_pb.Snapshot) -> SnapshotInfo:
        return cls(
            s.id, s.sandbox_id, s.name, s.description, s.create_time.ToDatetime(), s.size_bytes
        )


@dataclass(frozen=True)
class StateInfo:
    id: str
    name: str
    sandbox_id: str
    provider: str
    template: str
    env: dict[str, str]
    resources: Resources
    created: datetime
    size_bytes: int

    @classmethod
    def from_proto(cls, s: snap_pb.State) -> StateInfo:
        return cls(
            s.id,
            s.name,
            s.sandbox_id,
            s.provider,
            s.template,
            dict(s.env),
            Resources.from_proto(s.resources),
            s.create_time.ToDatetime(),
            s.size_bytes,
        )


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    size_mb: int
    persistent: bool
    created: datetime
    mounted_by: list[str]
    used_bytes: int

    @classmethod
    def from_proto(cls, v: vol_pb.Volume) -> VolumeInfo:
        return cls(
            v.name,
            v.size_mb,
            v.persistent,
            v.create_time.ToDatetime(),
            list(v.mounted_by),
            v.used_bytes,
        )


class Snapshots:
    """A sandbox's snapshots: copy-on-write, so the cost does not grow with its files."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    async def create(self, name: str = "", *, description: str = "") -> SnapshotInfo:
        resp = await _rpc.call(
            self._sb.client.snapshot_stub.CreateSnapshot,
            snap_pb.CreateSnapshotRequest(
                sandbox_id=self._sb.id, name=name, description=description
            ),
        )
        return SnapshotInfo.from_proto(resp.snapshot)

    async def list(self) -> builtins.list[SnapshotInfo]:
        resp = await _rpc.call(
            self._sb.client.snapshot_stub.ListSnapshots,
            snap_pb.ListSnapshotsRequest(sandbox_id=self._sb.id),
        )
        return [SnapshotInfo.from_proto(s) for s in resp.snapshots]

    async def restore(self, snapshot: SnapshotInfo | str) -> None:
        """Files go back to the snapshot; every process stops; the id stays."""
        sid = snapshot if isinstance(snapshot, str) else snapshot.id
        resp = await _rpc.call(
            self._sb.client.snapshot_stub.RestoreSnapshot,
            snap_pb.RestoreSnapshotRequest(sandbox_id=self._sb.id, snapshot_id=sid),
        )
        self._sb.info = resp.sandbox

    async def delete(self, snapshot: SnapshotInfo | str) -> None:
        sid = snapshot if isinstance(snapshot, str) else snapshot.id
        await _rpc.call(
            self._sb.client.snapshot_stub.DeleteSnapshot,
            snap_pb.DeleteSnapshotRequest(sandbox_id=self._sb.id, snapshot_id=sid),
        )


class States:
    """Saved states: a sandbox's files, template, env and resources, kept under an id
    that outlives it. create(restore_from=id) starts from one."""

    def __init__(self, client: Client) -> None:
        self._c = client

    async def save(self, sandbox: Sandbox | str, name: str = "") -> StateInfo:
        sid = sandbox if isinstance(sandbox, str) else sandbox.id
        resp = await _rpc.call(
            self._c.snapshot_stub.SaveState, snap_pb.SaveStateRequest(sandbox_id=sid, name=name)
        )
        return StateInfo.from_proto(resp.state)

    async def list(self) -> builtins.list[StateInfo]:
        resp = await _rpc.call(self._c.snapshot_stub.ListStates, snap_pb.ListStatesRequest())
        return [StateInfo.from_proto(s) for s in resp.states]

    async def delete(self, state_id: str) -> None:
        await _rpc.call(
            self._c.snapshot_stub.DeleteState, snap_pb.DeleteStateRequest(state_id=state_id)
        )

    async def export(
        self, *, state_id: str = "", sandbox: Sandbox | str = ""
    ) -> AsyncIterator[bytes]:
        """A saved state, or a sandbox as it is now, as a portable archive (tar:
        format, an OCI-style layer, and a manifest with sha256 checksums)."""
        sid = sandbox if isinstance(sandbox, str) else sandbox.id
        req = (
            snap_pb.ExportStateRequest(state_id=state_id)
            if state_id
            else snap_pb.ExportStateRequest(sandbox_id=sid)
        )
        async for resp in _rpc.stream(self._c.snapshot_stub.ExportState, req):
            yield resp.data

    async def import_(
        self,
        archive: bytes | AsyncIterable[bytes],
        *,
        provider: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Creates a sandbox from an archive that export() wrote."""
        from .sandbox import Sandbox

        async def requests() -> AsyncIterator[snap_pb.ImportStateRequest]:
            yield snap_pb.ImportStateRequest(
                header=snap_pb.ImportStateHeader(provider=provider, metadata=dict(metadata or {}))
            )
            async for piece in _chunks(archive):
                yield snap_pb.ImportStateRequest(data=piece)

        resp = await _rpc.call(self._c.snapshot_stub.ImportState, requests())
        return Sandbox(self._c, resp.sandbox)


async def _chunks(data: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(data, bytes):
        for piece in _rpc.pieces(data):
            yield piece
    else:
        async for part in data:
            for piece in _rpc.pieces(part):
                yield piece


class Volumes:
    """Named, size-limited volumes that sandboxes mount (create(volumes=[...]))."""

    def __init__(self, client: Client) -> None:
        self._c = client

    async def create(self, name: str, *, size_mb: int = 0, persistent: bool = True) -> VolumeInfo:
        resp = await _rpc.call(
            self._c.volume_stub.CreateVolume,
            vol_pb.CreateVolumeRequest(name=name, size_mb=size_mb, persistent=persistent),
        )
        return VolumeInfo.from_proto(resp.volume)

    async def get(self, name: str) -> VolumeInfo:
        resp = await _rpc.call(self._c.volume_stub.GetVolume, vol_pb.GetVolumeRequest(name=name))
        return VolumeInfo.from_proto(resp.volume)

    async def list(self) -> builtins.list[VolumeInfo]:
        resp = await _rpc.call(self._c.volume_stub.ListVolumes, vol_pb.ListVolumesRequest())
        return [VolumeInfo.from_proto(v) for v in resp.volumes]

    async def delete(self, name: str) -> None:
        await _rpc.call(self._c.volume_stub.DeleteVolume, vol_pb.DeleteVolumeRequest(name=name))
