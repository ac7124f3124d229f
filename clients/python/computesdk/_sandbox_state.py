"""A sandbox's snapshots and saved state, in the spec's names, and its config.
The state half of Sandbox; sandbox.snapshots and client.states do the work."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from computesdk_api.sandbox.v1 import sandbox_pb2

from .options import SandboxConfig
from .state import SnapshotInfo, Snapshots
from .types import Resources

if TYPE_CHECKING:
    from .client import Client


class SandboxState:
    """Sandbox's snapshot and state calls; Sandbox inherits them."""

    if TYPE_CHECKING:
        client: Client
        info: sandbox_pb2.Sandbox
        snapshots: Snapshots

        @property
        def id(self) -> str: ...

    # What create was given; None for a sandbox this client did not create.
    given_config: SandboxConfig | None = None

    @property
    def config(self) -> SandboxConfig:
        """The create's options, with resources filled from the effective ones (so
        config.resources.memory_mb is set even when the create gave none)."""
        given = self.given_config or SandboxConfig(
            self.info.provider,
            self.info.template,
            metadata=dict(self.info.metadata),
            timeout_ms=self.info.timeout_ms,
            keep_alive=self.info.keep_alive,
        )
        return given.with_effective(self.resources)

    @property
    def resources(self) -> Resources:
        """The effective resources (a request above the host is capped at it)."""
        return Resources.from_proto(self.info.resources)

    @property
    def requested_resources(self) -> Resources:
        """What the create (or the last scale or limit change) asked for."""
        if self.info.HasField("requested_resources"):
            return Resources.from_proto(self.info.requested_resources)
        return self.resources

    async def create_snapshot(self, name: str = "", *, description: str = "") -> str:
        """Snapshots the files (copy-on-write); returns the snapshot's id."""
        return (await self.snapshots.create(name, description=description)).id

    async def list_snapshots(self) -> builtins.list[SnapshotInfo]:
        return await self.snapshots.list()

    async def restore_snapshot(self, snapshot_id: str | SnapshotInfo) -> None:
        """Files go back to the snapshot; every process stops; the id stays."""
        await self.snapshots.restore(snapshot_id)

    async def delete_snapshot(self, snapshot_id: str | SnapshotInfo) -> None:
        await self.snapshots.delete(snapshot_id)

    async def save_state(self, name: str = "") -> str:
        """Saves files, template, env and resources; returns the state id, which
        create(restore_from=...) starts from."""
        return (await self.client.states.save(self.id, name)).id

    async def export_state(self) -> bytes:
        """The sandbox as it is now as a portable archive, which
        create(import_state=...) starts from (client.states.export streams it)."""
        return b"".join([piece async for piece in self.client.states.export(sandbox=self.id)])
