"""The local provider: one runc container per sandbox (layout.py tells where
everything is). This class carries the provider contract; each call goes to the
part that does it: containers.py (create, boot, halt, adopt, destroy),
limits.py, monitor.py, snapshots.py, volumes.py, network.py, processes.py, and
fs.py for files, through the sandbox's own root."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from computesdkd.domain.errors import Unavailable
from computesdkd.domain.model import (
    Command,
    FileInfo,
    Probe,
    Resources,
    Sandbox,
    TemplateInfo,
    Usage,
)
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common.templates import TEMPLATES
from computesdkd.providers.local import builder, cgroups, initproc, layout, monitor, parts
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
class LocalProvider(Provider, caps.Files, caps.Metering):
    name = "local"
    traits = frozenset(
        {
            caps.EXEC_STDIN,
            caps.SIGNALS,
            caps.RESOURCE_LIMITS,
            caps.OOM_EVENTS,
            caps.NETWORK_ISOLATION,
            caps.DISK_LIMIT,
            caps.RESET_HARD,
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
        self.parts = [
            parts.LocalProcesses(self._processes),
            parts.LocalChanges(self._containers, self._processes, self._limits),
            parts.LocalSnapshots(self._snapshots, self._containers),
            parts.LocalVolumes(self._volumes, self._require),
            parts.LocalNetworks(self._layout, self._require),
            parts.LocalTemplates(self._template_store),
        ]

    def _emit(self, *args: object, **attrs: str) -> None:
        """An event the provider noticed on its own (an OOM kill, an upgrade)."""
        if self._ctx is not None:
            self._ctx.emit(*args, **attrs)

    # -------------------------------------------------------------- set-up

    async def start(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        # Checked before anything is set up, which as another user would fail with
        # an error that hides the cause.
        self._unavailable = layout.needs_root() or "not started"
        if self._unavailable != "not started":
            log.warning("local provider unavailable", why=self._unavailable)
            return
        try:
            await self._start(ctx)
        except asyncio.CancelledError:
            self._unavailable = "it did not finish starting in time"
            raise
        except Exception as exc:
            self._unavailable = f"it failed to start ({exc})"
            raise

    async def _start(self, ctx: ProviderContext) -> None:
        layout.private_images(self._base.parent)
        layout.warn_subuid_overlap()
        await self._layout.prepare(ctx.state_dir)
        self._templates = builder.TemplateStore(
            self._layout.store,
            self._layout.builds,
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
        self._layout.release()

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

    def expected_resources(self, asked: Resources) -> Resources:
        return replace(
            asked,
            cpu_cores=asked.cpu_cores or DEFAULTS.cpu_cores,
            memory_mb=asked.memory_mb or DEFAULTS.memory_mb,
            disk_mb=asked.disk_mb or DEFAULTS.disk_mb,
        )

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

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        self._require()
        await self._containers.create(sandbox)

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        await self._containers.destroy(sandbox, graceful_timeout_s)

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

    async def probe(self, sandbox: Sandbox) -> Probe:
        return monitor.probe(sandbox)

    async def usage(self, sandbox: Sandbox) -> Usage:
        return monitor.usage(sandbox)

    # -------------------------------------------------------------- processes

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        return self._processes.run(sandbox, command, tag, kill_on_close)

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
