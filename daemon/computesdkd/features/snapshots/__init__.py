"""Snapshots and saved states.

A snapshot belongs to its sandbox and goes when the sandbox is destroyed; a
saved state is a snapshot with the sandbox's template, env and resources that
outlives it, to start new sandboxes from (CreateSandbox restore_from). The
provider keeps the data (for local: a copy-on-write clone of the sandbox's
disk); the daemon keeps the records, in SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from structlog.contextvars import bound_contextvars

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.placement import Placement
from computesdkd.core.processes import Processes
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    ComputeError,
    InvalidArgument,
    NotFound,
    not_found,
    template_not_found,
)
from computesdkd.domain.model import Resources, Sandbox, SandboxSpec
from computesdkd.features.snapshots import archive
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

SNAPSHOT_CREATED, SNAPSHOT_RESTORED, SNAPSHOT_DELETED = (
    "snapshot.created",
    "snapshot.restored",
    "snapshot.deleted",
)
STATE_SAVED, STATE_IMPORTED = "state.saved", "state.imported"
MAX_LABEL = 256


@dataclass(frozen=True)
class SnapshotRecord:
    id: str
    sandbox_id: str
    name: str
    description: str
    created_at: float
    size_bytes: int


@dataclass(frozen=True)
class StateRecord:
    id: str
    name: str
    sandbox_id: str
    provider: str
    template: str
    env: dict[str, str]
    resources: Resources
    created_at: float
    size_bytes: int
    # The provider-side snapshot holding the files.
    snapshot_id: str


class Snapshots:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        placement: Placement,
        processes: Processes,
        store: Store,
        bus: EventBus,
        scratch: Path,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._placement = placement
        placement.restorer = self.spec_from_state
        self._processes = processes
        self._store = store
        self._bus = bus
        self._scratch = scratch

    def _check_label(self, name: str, description: str) -> None:
        if len(name) > MAX_LABEL or len(description) > 4 * MAX_LABEL:
            raise InvalidArgument(
                "snapshot name or description is too long", reason="LABEL_TOO_LONG"
            )

    async def create(self, sandbox_id: str, name: str, description: str) -> SnapshotRecord:
        self._check_label(name, description)
        async with self._registry.lock(sandbox_id):
            sb, provider = self._registry.running(sandbox_id)
            snap_id = "snap-" + secrets.token_hex(8)
            with bound_contextvars(sandbox_id=sandbox_id):
                size = await self._providers.guarded(
                    provider,
                    require(provider, caps.Snapshots, "snapshots").snapshot_create(sb, snap_id),
                )
                rec = SnapshotRecord(snap_id, sandbox_id, name, description, time.time(), size)
                self._store.sandbox_records("snapshots").put(sandbox_id, snap_id, asdict(rec))
                self._bus.emit(sandbox_id, SNAPSHOT_CREATED, snapshot_id=snap_id, name=name)
                log.info("snapshot created", snapshot_id=snap_id, size_bytes=size)
        return rec

    def list_for(self, sandbox_id: str) -> list[SnapshotRecord]:
        self._registry.get(sandbox_id)
        recs = [
            SnapshotRecord(**v) for _, v in self._store.sandbox_records("snapshots").of(sandbox_id)
        ]
        return sorted(recs, key=lambda r: (r.created_at, r.id), reverse=True)

    def _get(self, sandbox_id: str, snapshot_id: str) -> SnapshotRecord:
        for rec in self.list_for(sandbox_id):
            if rec.id == snapshot_id:
                return rec
        raise NotFound(
            f"sandbox {sandbox_id!r} has no snapshot {snapshot_id!r}",
            reason="SNAPSHOT_NOT_FOUND",
            snapshot_id=snapshot_id,
        )

    async def restore(self, sandbox_id: str, snapshot_id: str) -> Sandbox:
        self._get(sandbox_id, snapshot_id)
        async with self._registry.lock(sandbox_id):
            sb, provider = self._registry.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                self._processes.forget(sandbox_id)
                await self._providers.guarded(
                    provider,
                    require(provider, caps.Snapshots, "snapshots").snapshot_restore(
                        sb, snapshot_id
                    ),
                )
                self._store.sandboxes.put(sb)
                self._bus.emit(sandbox_id, SNAPSHOT_RESTORED, snapshot_id=snapshot_id)
        return sb

    async def delete(self, sandbox_id: str, snapshot_id: str) -> None:
        self._get(sandbox_id, snapshot_id)
        _, provider = self._registry.running(sandbox_id)
        await require(provider, caps.Snapshots, "snapshots").snapshot_delete(snapshot_id)
        self._store.sandbox_records("snapshots").delete(sandbox_id, snapshot_id)
        self._bus.emit(sandbox_id, SNAPSHOT_DELETED, snapshot_id=snapshot_id)

    async def collect_garbage(self) -> None:
        """At start: frees snapshots no record owns (a daemon killed between taking
        one and recording it, a clone or export cut short) and archives in transit."""
        owned = {s.snapshot_id for s in self.states()}
        for sb in self._registry.all():
            owned |= {name for name, _ in self._store.sandbox_records("snapshots").of(sb.id)}
        for name, provider in self._providers.by_name.items():
            snaps = provider.part(caps.Snapshots)
            held = snaps.snapshot_ids() if snaps is not None else []
            for snap in held:
                if snap not in owned:
                    log.info("freeing an unowned snapshot", snapshot_id=snap, provider=name)
                    await self._free(name, snap)
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch.mkdir(mode=0o700, exist_ok=True)

    async def drop_all(self, sb: Sandbox) -> None:
        """Frees the snapshot files of a sandbox being destroyed (its records go with
        its rows). Saved states are separate and stay."""
        for snap_id, _ in self._store.sandbox_records("snapshots").of(sb.id):
            await self._free(sb.spec.provider, snap_id)

    async def _free(self, provider_name: str, snapshot_id: str) -> None:
        provider = self._providers.by_name.get(provider_name)
        if provider is not None:
            try:
                await require(provider, caps.Snapshots, "snapshots").snapshot_delete(snapshot_id)
            except Exception as exc:
                log.warning("could not free a snapshot", snapshot_id=snapshot_id, error=repr(exc))

    # ------------------------------------------------------------ saved states

    async def save_state(self, sandbox_id: str, name: str) -> StateRecord:
        self._check_label(name, "")
        async with self._registry.lock(sandbox_id):
            sb, provider = self._registry.running(sandbox_id)
            snap_id = "state-" + secrets.token_hex(8)
            size = await self._providers.guarded(
                provider,
                require(provider, caps.Snapshots, "snapshots").snapshot_create(sb, snap_id),
            )
        rec = StateRecord(
            id=snap_id,
            name=name,
            sandbox_id=sandbox_id,
            provider=sb.spec.provider,
            template=sb.spec.template,
            env=dict(sb.spec.env),
            resources=sb.spec.resources,
            created_at=time.time(),
            size_bytes=size,
            snapshot_id=snap_id,
        )
        self._store.records("states").put(
            rec.id, {**asdict(rec), "resources": asdict(rec.resources)}
        )
        self._bus.emit(sandbox_id, STATE_SAVED, state_id=rec.id, name=name)
        return rec

    def states(self) -> list[StateRecord]:
        out = []
        for _, v in self._store.records("states").all():
            out.append(StateRecord(**{**v, "resources": Resources(**v["resources"])}))
        return sorted(out, key=lambda r: (r.created_at, r.id), reverse=True)

    def template_users(self, provider: str, template: str) -> list[str]:
        return [
            f"state {st.id}"
            for st in self.states()
            if st.provider == provider and st.template == template
        ]

    def state(self, state_id: str) -> StateRecord:
        for rec in self.states():
            if rec.id == state_id:
                return rec
        raise not_found("state", state_id)

    async def delete_state(self, state_id: str) -> None:
        rec = self.state(state_id)
        await self._free(rec.provider, rec.snapshot_id)
        self._store.records("states").delete(state_id)

    def spec_from_state(self, spec: SandboxSpec) -> tuple[SandboxSpec, str]:
        """The spec a restore_from create runs with, and the snapshot to start from."""
        rec = self.state(spec.restore_from)
        if spec.provider and spec.provider != rec.provider:
            raise InvalidArgument(
                f"state {rec.id} was saved on provider {rec.provider!r}; restore it there "
                "(export and import it to move it)",
                reason="STATE_PROVIDER_MISMATCH",
            )
        env = {**rec.env, **spec.env}
        res = spec.resources if spec.resources != Resources() else rec.resources
        return (
            replace(spec, provider=rec.provider, template=rec.template, env=env, resources=res),
            rec.snapshot_id,
        )

    # ------------------------------------------------------------ export and import

    async def export_state(self, state_id: str, sandbox_id: str) -> AsyncIterator[bytes]:
        """The state (or the sandbox, as it is now) as a portable archive."""
        manifest: dict[str, Any]
        if state_id:
            rec = self.state(state_id)
            provider = self._providers.by_name[rec.provider]
            snap, temporary = rec.snapshot_id, False
            manifest = {
                "name": rec.name,
                "provider": rec.provider,
                "template": rec.template,
                "env": rec.env,
                "resources": asdict(rec.resources),
                "metadata": {},
            }
        else:
            sb, provider = self._registry.running(sandbox_id)
            snap, temporary = "export-" + secrets.token_hex(8), True
            async with self._registry.lock(sandbox_id):
                await self._providers.guarded(
                    provider,
                    require(provider, caps.Snapshots, "snapshots").snapshot_create(sb, snap),
                )
            manifest = {
                "name": "",
                "provider": sb.spec.provider,
                "template": sb.spec.template,
                "env": sb.spec.env,
                "resources": asdict(sb.spec.resources),
                "metadata": sb.spec.metadata,
            }
        work = Path(tempfile.mkdtemp(dir=self._scratch))
        try:
            layer = work / "layer.tar"
            await require(provider, caps.Snapshots, "state export").snapshot_export(snap, layer)
            manifest["exported_at"] = time.time()
            for piece in archive.pack(layer, manifest):
                yield piece
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if temporary:
                with contextlib.suppress(ComputeError):
                    await require(provider, caps.Snapshots, "snapshots").snapshot_delete(snap)

    async def import_state(
        self,
        archive_path: Path,
        provider: str,
        metadata: dict[str, str],
        tenant: str = "",
        may_use: Callable[[str], bool] = lambda template: True,
    ) -> Sandbox:
        """A new sandbox from an exported state. may_use says whether the importer
        may start from the template the archive names (another tenant's may not)."""
        work = Path(tempfile.mkdtemp(dir=self._scratch))
        try:
            manifest, layer = await asyncio.to_thread(archive.unpack, archive_path, work)
            try:
                spec = SandboxSpec(
                    provider=provider or str(manifest["provider"]),
                    template=str(manifest["template"]),
                    metadata={**manifest.get("metadata", {}), **metadata},
                    timeout_ms=0,
                    keep_alive=False,
                    resources=Resources(**manifest["resources"]),
                    env={str(k): str(v) for k, v in manifest["env"].items()},
                    tenant=tenant,
                )
            except (TypeError, AttributeError) as exc:
                raise InvalidArgument(
                    f"not a valid state archive: bad manifest ({exc})", reason="ARCHIVE_CORRUPT"
                ) from exc
            if not may_use(spec.template):
                raise template_not_found(spec.template, spec.provider or self._providers.default)
            sb = await self._placement.create_imported(spec, layer)
            self._bus.emit(sb.id, STATE_IMPORTED, template=spec.template)
            return sb
        finally:
            shutil.rmtree(work, ignore_errors=True)
