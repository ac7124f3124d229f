"""The local provider's optional parts (capabilities.py's interfaces), each a thin
face on the collaborator that does the work, so LocalProvider itself stays the
contract's core: lifecycle, commands, files and usage."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from computesdkd.domain.model import (
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
)
from computesdkd.providers import capabilities as caps
from computesdkd.providers.common.agentprocs import Processes
from computesdkd.providers.local import builder, host, initproc, network
from computesdkd.providers.local.containers import Containers
from computesdkd.providers.local.layout import Layout
from computesdkd.providers.local.limits import Limits
from computesdkd.providers.local.snapshots import Snapshots
from computesdkd.providers.local.volumes import Volumes

# Raises Unavailable when the provider cannot run here.
Check = Callable[[], None]


class LocalChanges(caps.LiveLimits, caps.Resettable, caps.Restartable):
    def __init__(self, containers: Containers, processes: Processes, limits: Limits) -> None:
        self._containers = containers
        self._processes = processes
        self._limits = limits

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        return await self._limits.update(sandbox, cpu_cores, memory_mb, disk_mb)

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        if hard:
            # A new container on a new upper layer, under the same id: nothing of
            # the old one (files, processes, mounts) can survive.
            await self._containers.restart(sandbox, wipe=True)
        else:
            await self._processes.kill_all(sandbox)

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        await self._containers.restart(sandbox, wipe)


class LocalSnapshots(caps.Snapshots):
    def __init__(self, snapshots: Snapshots, containers: Containers) -> None:
        self._snapshots = snapshots
        self._containers = containers

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        return await self._snapshots.create(sandbox, snapshot_id)

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        await self._containers.restore(sandbox, snapshot_id)

    async def snapshot_delete(self, snapshot_id: str) -> None:
        await self._snapshots.delete(snapshot_id)

    def snapshot_ids(self) -> list[str]:
        return self._snapshots.ids()

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        await self._snapshots.export(snapshot_id, layer)


class LocalVolumes(caps.Volumes):
    def __init__(self, volumes: Volumes, check: Check) -> None:
        self._volumes = volumes
        self._check = check

    async def volume_create(self, name: str, size_mb: int) -> None:
        self._check()
        await self._volumes.create(name, size_mb)

    async def volume_delete(self, name: str) -> None:
        await self._volumes.delete(name)

    def volume_used_bytes(self, name: str) -> int:
        return self._volumes.used_bytes(name)


class LocalNetworks(caps.SharedNetworks, caps.PortForwarding, caps.SandboxSockets):
    def __init__(self, layout: Layout, check: Check) -> None:
        self._layout = layout
        self._check = check

    async def create_network(self, network_id: str) -> None:
        self._check()
        await network.create_bridge(network_id)

    async def delete_network(self, network_id: str) -> None:
        await network.delete_bridge(network_id)

    async def attach_network(
        self, sandbox: Sandbox, network_id: str, ifname: str, address: str, prefix: int
    ) -> None:
        await network.attach(network_id, initproc.live_pid(sandbox), ifname, address, prefix)

    async def detach_network(self, sandbox: Sandbox, ifname: str) -> None:
        await network.detach(initproc.live_pid(sandbox), ifname)

    async def open_port(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await network.open_port(initproc.live_pid(sandbox), port)

    def listen_in_sandbox(self, sandbox: Sandbox, name: str) -> socket.socket:
        # ctl/ is root's and read-only inside: the sandbox can connect to the
        # socket but never swap it for a link (which a chmod by path would follow).
        return host.listen_unix(self._layout.paths(sandbox)[1] / "ctl" / name, mode=0o666)


class LocalTemplates(caps.TemplateBuilds):
    def __init__(self, store: Callable[[], builder.TemplateStore]) -> None:
        self._store = store

    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: caps.BuildReport
    ) -> tuple[TemplateInfo, bool]:
        return await self._store().build(definition, no_cache, report)

    async def delete_template(self, name: str) -> None:
        await self._store().delete(name)
