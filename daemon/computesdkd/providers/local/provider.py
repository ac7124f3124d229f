"""The local provider: one runc container per sandbox (layout.py tells where
everything is). This class carries the provider contract; each call goes to the
part that does it: containers.py (create, boot, halt, adopt, destroy),
limits.py, monitor.py, snapshots.py, volumes.py, network.py, processes.py, and
fs.py for files, through the sandbox's own root."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from computesdkd.domain.errors import Unavailable
from computesdkd.domain.model import (
    Command,
    FileInfo,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)
from computesdkd.providers import base
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common.templates import TEMPLATES
from computesdkd.providers.local import builder, cgroups, host, initproc, layout, monitor, network
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.containers import Containers
from computesdkd.providers.local.disks import Disks
from computesdkd.providers.local.fs import SandboxFS
from computesdkd.providers.local.limits import DEFAULT_MAX_DISK_MB, DEFAULTS, MAX_DISK_ENV, Limits
from computesdkd.providers.local.processes import Processes
from computesdkd.providers.local.reconcile import reconcile
from computesdkd.providers.local.registry import insecure_registries
from computesdkd.providers.local.snapshots import Snapshots
from computesdkd.providers.local.tplrecords import Template
from computesdkd.providers.local.volumes import Volumes
from computesdkd.support import logs

log = logs.get(__name__)


@base.register("local")
class LocalProvider(Provider):
    name = "local"
    capabilities = frozenset(
        {
            base.EXEC,
            base.EXEC_STDIN,
            base.EXEC_RESUME,
            base.BACKGROUND,
            base.SIGNALS,
            base.FILESYSTEM,
            base.EVENTS,
            base.RESOURCE_LIMITS,
            base.USAGE,
            base.OOM_EVENTS,
            base.NETWORK_ISOLATION,
            base.DISK_LIMIT,
            base.RESET,
            base.RESET_HARD,
            base.SHARED_NETWORK,
            base.PORT_FORWARD,
            base.SNAPSHOTS,
            base.RESTART,
            base.VOLUMES,
            base.TEMPLATE_BUILD,
        }
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._layout = layout.Layout()
        self._base = rootfs_mod.base_path()
        self._agent_binary = layout.agent_binary(cfg.env)
        self._insecure = insecure_registries(cfg.env)
        self._unavailable = "not started"
        self._ctx: ProviderContext | None = None
        self._templates: builder.TemplateStore | None = None
        self._warming: asyncio.Task[None] | None = None
        max_disk_mb = int(cfg.env.get(MAX_DISK_ENV, DEFAULT_MAX_DISK_MB))
        self._limits = Limits(self._layout, max_disk_mb, self._emit)
        self._snapshots = Snapshots(self._layout)
        self._volumes = Volumes(self._layout)
        self._containers = Containers(
            self._layout,
            Disks(self._layout, DEFAULTS.disk_mb),
            self._volumes,
            self._limits,
            self._template,
            self._snapshots.path,
            self._emit,
        )
        self._processes = Processes(self._layout, self._template_env)

    def _emit(self, *args: object, **attrs: str) -> None:
        """An event the provider noticed on its own (an OOM kill, an upgrade)."""
        if self._ctx is not None:
            self._ctx.emit(*args, **attrs)

    # -------------------------------------------------------------- set-up

    async def start(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        layout.private_images(self._base.parent)
        layout.warn_subuid_overlap()
        await self._layout.prepare(ctx.state_dir)
        self._templates = builder.TemplateStore(
            self._layout.store,
            self._base,
            self._layout.runc,
            cgroups.CGROUP_PARENT,
            self._containers.pinned_layers,
            self._insecure,
        )
        await self._templates.clean_leftovers()
        await self._volumes.remount()
        self._unavailable = layout.unavailable(self._base, self._agent_binary)
        if self._unavailable:
            log.warning("local provider unavailable", why=self._unavailable)
            return
        self._containers.agent_binary = self._layout.install_agent(self._agent_binary)
        self._warming = asyncio.create_task(self._containers.warm())

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        self._containers.close()

    def availability(self) -> str:
        return self._unavailable

    def _require(self) -> None:
        if self._unavailable:
            raise Unavailable(
                f"provider 'local' cannot run here: {self._unavailable}",
                reason="PROVIDER_UNAVAILABLE",
                provider="local",
            )

    # -------------------------------------------------------------- templates

    def templates(self) -> list[str]:
        return self._templates.names() if self._templates else sorted(TEMPLATES)

    def template_infos(self) -> list[TemplateInfo]:
        if self._templates is None:
            return super().template_infos()
        return self._templates.infos()

    def _template_store(self) -> builder.TemplateStore:
        self._require()
        assert self._templates is not None  # made by start(), before it is available
        return self._templates

    def _template(self, name: str) -> Template:
        return self._template_store().require(name)

    def _template_env(self, name: str) -> dict[str, str] | None:
        return self._templates.env(name) if self._templates else None

    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: base.BuildReport
    ) -> tuple[TemplateInfo, bool]:
        return await self._template_store().build(definition, no_cache, report)

    async def delete_template(self, name: str) -> None:
        await self._template_store().delete(name)

    # -------------------------------------------------------------- lifecycle

    def resolve_resources(self, sandbox: Sandbox) -> Resources:
        return self._limits.resolve(sandbox)

    async def create(self, sandbox: Sandbox) -> None:
        self._require()
        await self._containers.create(sandbox)

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        await self._containers.destroy(sandbox, graceful_timeout_s)

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        await self._containers.restart(sandbox, wipe)

    async def adopt(self, sandbox: Sandbox) -> bool:
        return await self._containers.adopt(sandbox)

    async def reconcile(self, live_ids: set[str]) -> None:
        """Frees what a daemon killed mid-operation left and no live sandbox owns."""
        if self._unavailable or not self._layout.state.parts:
            return
        await reconcile(self._layout, live_ids)
        # Only now are the layers of every adopted sandbox pinned.
        if self._templates is not None:
            await asyncio.to_thread(self._templates.collect_garbage)

    async def healthy(self, sandbox: Sandbox) -> bool:
        return await self._processes.healthy(sandbox)

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        if hard:
            # A new container on a new upper layer, under the same id: nothing of
            # the old one (files, processes, mounts) can survive.
            await self._containers.restart(sandbox, wipe=True)
        else:
            await self._processes.kill_all(sandbox)

    async def probe(self, sandbox: Sandbox) -> Probe:
        return monitor.probe(sandbox)

    async def usage(self, sandbox: Sandbox) -> Usage:
        return monitor.usage(sandbox)

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        return await self._limits.update(sandbox, cpu_cores, memory_mb, disk_mb)

    # -------------------------------------------------------------- snapshots

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

    # -------------------------------------------------------------- volumes

    async def volume_create(self, name: str, size_mb: int) -> None:
        self._require()
        await self._volumes.create(name, size_mb)

    async def volume_delete(self, name: str) -> None:
        await self._volumes.delete(name)

    def volume_used_bytes(self, name: str) -> int:
        return self._volumes.used_bytes(name)

    # -------------------------------------------------------------- networks

    async def create_network(self, network_id: str) -> None:
        self._require()
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

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        return self._processes.run(sandbox, command, tag, kill_on_close)

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        return await self._processes.start(sandbox, command, tag)

    def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        return self._processes.attach(sandbox, process_id, stdout_offset, stderr_offset, output)

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        await self._processes.write_stdin(sandbox, process_id, data, close)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        await self._processes.signal(sandbox, process_id, signal)

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return await self._processes.processes(sandbox)

    # -------------------------------------------------------------- files

    def _fs(self, sandbox: Sandbox) -> SandboxFS:
        # A sandbox started before uid ranges runs in the storage range itself.
        uid = int(sandbox.provider_data.get("uid_base") or rootfs_mod.UID_SHIFT)
        return SandboxFS(lambda: initproc.open_root(sandbox), uid)

    def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        return self._fs(sandbox).read(path, offset, length)

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        return await self._fs(sandbox).write(path, chunks, mode, make_parents, append)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        return await asyncio.to_thread(self._fs(sandbox).list_sync, path)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).stat_sync, path)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).mkdir_sync, path, parents)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        await asyncio.to_thread(self._fs(sandbox).remove_sync, path, recursive)

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).move_sync, source, destination)
