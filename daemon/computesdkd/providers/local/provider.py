"""The local provider: one runc container per sandbox (layout.py tells where
everything is). This class carries the provider contract; each call goes to the
part that does it: containers.py (create, boot, halt, adopt, destroy),
limits.py, monitor.py, snapshots.py, volumes.py, network.py, processes.py, and
fs.py for files, through the sandbox's own root."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from computesdkd.domain import events
from computesdkd.domain.errors import ComputeError, FailedPrecondition, Unavailable
from computesdkd.domain.model import (
    BuildStep,
    Command,
    FileInfo,
    Probe,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)
from computesdkd.providers import base
from computesdkd.providers import capabilities as caps
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.common.agentprocs import AgentProcesses, Processes
from computesdkd.providers.common.templates import TEMPLATES
from computesdkd.providers.local import builder, cgroups, disks, initproc, layout, monitor, parts
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.containers import Containers
from computesdkd.providers.local.disks import Disks
from computesdkd.providers.local.fs import SandboxFS
from computesdkd.providers.local.limits import (
    DEFAULT_MAX_DISK_MB,
    DEFAULTS,
    MAX_DISK_ENV,
    Limits,
    capped,
)
from computesdkd.providers.local.reconcile import reconcile
from computesdkd.providers.local.registry import insecure_registries
from computesdkd.providers.local.snapshots import Snapshots, ext4_problem
from computesdkd.providers.local.tplrecords import Template
from computesdkd.providers.local.volumes import Volumes
from computesdkd.support import logs

log = logs.get(__name__)
# How long a failed first-use build of a predefined template answers for itself.
FIRST_BUILD_RETRY_S = 60.0


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
        self._first_builds: dict[str, asyncio.Lock] = {}
        self._first_build_failed: dict[str, tuple[float, ComputeError]] = {}
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
        self._processes = Processes(lambda sb: self._layout.agent(sb.id), self._template_env)
        self.parts = [
            AgentProcesses(self._processes),
            _CheckedChanges(
                self._containers,
                self._processes,
                self._limits,
                self._disk_checked,
                self._built_on_first_use,
            ),
            _CheckedSnapshots(self._snapshots, self._containers, self._checked),
            parts.LocalVolumes(self._volumes, self._require),
            parts.LocalNetworks(self._layout, self._require),
            parts.LocalTemplates(self._template_store),
        ]

    def _emit(self, *args: object, **attrs: str) -> None:
        """An event the provider noticed on its own (an OOM kill, an upgrade)."""
        if self._ctx is not None:
            self._ctx.emit(*args, **attrs)

    async def _checked(self, sandbox_id: str, snapshot_id: str) -> None:
        """Before anything starts from a snapshot or saved state: its bytes are
        those it was taken with, else a `corruption` event and STATE_CORRUPT."""
        try:
            await self._snapshots.verify(snapshot_id)
        except FailedPrecondition as exc:
            what = "state" if snapshot_id.startswith("state-") else "snapshot"
            self._corrupt(sandbox_id, what, snapshot_id, exc)
            raise

    async def _disk_checked(self, sandbox: Sandbox, boot: Callable[[], Awaitable[None]]) -> None:
        """A sandbox boots again on its disk: the image must still be an ext4, and
        pass e2fsck when it is grown; else a `corruption` event and DISK_CORRUPT."""
        try:
            problem = _disk_problem(sandbox)
            if problem is not None:
                raise problem
            await boot()
        except FailedPrecondition as exc:
            if exc.reason == "DISK_CORRUPT":
                self._corrupt(sandbox.id, "disk", sandbox.id, exc)
            raise

    def _corrupt(self, sandbox_id: str, what: str, ident: str, exc: FailedPrecondition) -> None:
        log.error("corrupt data on the store", what=what, id=ident, error=exc.message)
        self._emit(
            sandbox_id,
            events.CORRUPTION,
            exc.message,
            what=what,
            id=ident,
            reason=exc.reason,
        )

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
        """What create will give: defaults filled in, capped at the host (quotas
        count this, not a request above the host)."""
        return capped(
            replace(
                asked,
                cpu_cores=asked.cpu_cores or DEFAULTS.cpu_cores,
                memory_mb=asked.memory_mb or DEFAULTS.memory_mb,
                disk_mb=asked.disk_mb or DEFAULTS.disk_mb,
            )
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

    async def _built_on_first_use(self, sandbox: Sandbox) -> None:
        """A predefined recipe (nextjs, full-stack-dev) is built the first time a
        sandbox asks for it, as docker pulls an image on its first run."""
        name, store = sandbox.spec.template, self._template_store()
        tpl = TEMPLATES.get(name)
        if tpl is None or tpl.recipe is None or store.built(name):
            return
        failed = self._first_build_failed.get(name)
        if failed is not None and time.monotonic() < failed[0]:
            # A failed build (no package network, say) is not run again by every
            # create: each holds the one build lock and every core.
            raise failed[1]
        async with self._first_builds.setdefault(name, asyncio.Lock()):
            if store.built(name):
                return
            bound = log.bind(sandbox_id=sandbox.id, template=name)
            bound.info("building a predefined template on its first use")

            def report(step: BuildStep) -> None:
                if step.line is None:
                    bound.info(
                        "template build", step=f"{step.step}/{step.total}", what=step.description
                    )

            try:
                await store.build(TemplateDefinition(name=name), False, report)
            except ComputeError as exc:
                self._first_build_failed[name] = (time.monotonic() + FIRST_BUILD_RETRY_S, exc)
                raise
            self._first_build_failed.pop(name, None)

    def _template_env(self, name: str) -> dict[str, str] | None:
        return self._templates.env(name) if self._templates else None

    # -------------------------------------------------------------- lifecycle

    async def create(self, sandbox: Sandbox) -> None:
        self._require()
        await self._built_on_first_use(sandbox)
        source = sandbox.provider_data.get("from_snapshot", "")
        if source:
            await self._checked(sandbox.id, source)
        await self._containers.create(sandbox)

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        await self._containers.destroy(sandbox, graceful_timeout_s)

    async def adopt(self, sandbox: Sandbox) -> bool:
        """A running sandbox the daemon finds again after a restart. Its disk is
        mounted and keeps working; an image whose superblock is gone on the store
        would not mount again, which a `corruption` event says now."""
        adopted = await self._containers.adopt(sandbox)
        problem = _disk_problem(sandbox) if adopted else None
        if problem is not None:
            self._corrupt(sandbox.id, "disk", sandbox.id, problem)
        return adopted

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


def _disk_problem(sandbox: Sandbox) -> FailedPrecondition | None:
    """DISK_CORRUPT when the sandbox's disk image is no ext4 at a glance."""
    why = ext4_problem(Path(sandbox.provider_data.get("bundle", "")) / "disk.img")
    if not why:
        return None
    return FailedPrecondition(
        f"the disk of sandbox {sandbox.id} is corrupt: {why}",
        reason="DISK_CORRUPT",
        sandbox_id=sandbox.id,
    )


class _CheckedSnapshots(parts.LocalSnapshots):
    """Checks a snapshot's bytes before it is restored or exported."""

    def __init__(
        self,
        snapshots: Snapshots,
        containers: Containers,
        checked: Callable[[str, str], Awaitable[None]],
    ) -> None:
        super().__init__(snapshots, containers)
        self._checked = checked

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        await self._checked(sandbox.id, snapshot_id)
        await super().snapshot_restore(sandbox, snapshot_id)

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        await self._checked("", snapshot_id)
        await super().snapshot_export(snapshot_id, layer)


class _CheckedChanges(parts.LocalChanges):
    """Checks a sandbox's disk as it boots on it again (a restart), and builds a
    predefined template the restart names on its first use."""

    def __init__(
        self,
        containers: Containers,
        processes: Processes,
        limits: Limits,
        checked: Callable[[Sandbox, Callable[[], Awaitable[None]]], Awaitable[None]],
        built_on_first_use: Callable[[Sandbox], Awaitable[None]],
    ) -> None:
        super().__init__(containers, processes, limits)
        self._checked = checked
        self._built_on_first_use = built_on_first_use

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """On the same disk: grown first to a larger disk_mb asked (its ext4 grows
        as it is mounted again); a disk never shrinks, so the sandbox's disk_mb is
        what its image holds when that is more."""
        await self._built_on_first_use(sandbox)  # a restart may name a new template
        if wipe:
            await super().restart(sandbox, wipe)
            return
        image = Path(sandbox.provider_data["bundle"]) / "disk.img"
        wanted = self._limits.resolve(sandbox).disk_mb
        if wanted > disks.image_mb(image):
            disks.enlarge(image, wanted)
        boot = functools.partial(parts.LocalChanges.restart, self, sandbox, wipe)
        await self._checked(sandbox, boot)
        held = disks.image_mb(image)
        if sandbox.resources.disk_mb < held:
            sandbox.resources = replace(sandbox.resources, disk_mb=held)
