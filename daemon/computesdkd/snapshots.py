"""Snapshots and saved states.

A snapshot belongs to its sandbox and goes when the sandbox is destroyed; a
saved state is a snapshot with the sandbox's template, env and resources that
outlives it, to start new sandboxes from (CreateSandbox restore_from). The
provider keeps the data (for local: a copy-on-write clone of the sandbox's
disk); the daemon keeps the records, in SQLite.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from structlog.contextvars import bound_contextvars

from . import logs
from .errors import InvalidArgument, NotFound
from .model import Resources, Sandbox, SandboxSpec

if TYPE_CHECKING:
    from .manager import Manager

log = logs.get(__name__)

SNAPSHOT_CREATED, SNAPSHOT_RESTORED, SNAPSHOT_DELETED = (
    "snapshot.created",
    "snapshot.restored",
    "snapshot.deleted",
)
STATE_SAVED, RESTARTED, CLONED_FROM_SNAPSHOT = "state.saved", "restarted", "cloned"
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
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.store = manager.store

    def _check_label(self, name: str, description: str) -> None:
        if len(name) > MAX_LABEL or len(description) > 4 * MAX_LABEL:
            raise InvalidArgument(
                "snapshot name or description is too long", reason="LABEL_TOO_LONG"
            )

    async def create(self, sandbox_id: str, name: str, description: str) -> SnapshotRecord:
        self._check_label(name, description)
        async with self.manager.sandbox_lock(sandbox_id):
            sb, provider = self.manager.running(sandbox_id)
            snap_id = "snap-" + secrets.token_hex(8)
            with bound_contextvars(sandbox_id=sandbox_id):
                size = await self.manager.guarded(provider, provider.snapshot_create(sb, snap_id))
                rec = SnapshotRecord(snap_id, sandbox_id, name, description, time.time(), size)
                self.store.put_setting(sandbox_id, "snapshot", snap_id, asdict(rec))
                self.manager.bus.emit(sandbox_id, SNAPSHOT_CREATED, snapshot_id=snap_id, name=name)
                log.info("snapshot created", snapshot_id=snap_id, size_bytes=size)
        return rec

    def list_for(self, sandbox_id: str) -> list[SnapshotRecord]:
        self.manager.get(sandbox_id)
        recs = [
            SnapshotRecord(**v)
            for kind, _, v in self.store.settings(sandbox_id)
            if kind == "snapshot"
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
        async with self.manager.sandbox_lock(sandbox_id):
            sb, provider = self.manager.running(sandbox_id)
            with bound_contextvars(sandbox_id=sandbox_id):
                self.manager.forget_processes(sandbox_id)
                await self.manager.guarded(provider, provider.snapshot_restore(sb, snapshot_id))
                self.store.put_sandbox(sb)
                self.manager.bus.emit(sandbox_id, SNAPSHOT_RESTORED, snapshot_id=snapshot_id)
        return sb

    async def delete(self, sandbox_id: str, snapshot_id: str) -> None:
        self._get(sandbox_id, snapshot_id)
        _, provider = self.manager.running(sandbox_id)
        await provider.snapshot_delete(snapshot_id)
        self.store.delete_setting(sandbox_id, "snapshot", snapshot_id)
        self.manager.bus.emit(sandbox_id, SNAPSHOT_DELETED, snapshot_id=snapshot_id)

    async def drop_all(self, sb: Sandbox) -> None:
        """Frees the snapshot files of a sandbox being destroyed (its records go with
        its rows). Saved states are separate and stay."""
        for kind, snap_id, _ in self.store.settings(sb.id):
            if kind == "snapshot":
                await self._free(sb.spec.provider, snap_id)

    async def _free(self, provider_name: str, snapshot_id: str) -> None:
        provider = self.manager.providers.get(provider_name)
        if provider is not None:
            try:
                await provider.snapshot_delete(snapshot_id)
            except Exception as exc:
                log.warning("could not free a snapshot", snapshot_id=snapshot_id, error=repr(exc))

    # ------------------------------------------------------------ saved states

    async def save_state(self, sandbox_id: str, name: str) -> StateRecord:
        self._check_label(name, "")
        async with self.manager.sandbox_lock(sandbox_id):
            sb, provider = self.manager.running(sandbox_id)
            snap_id = "state-" + secrets.token_hex(8)
            size = await self.manager.guarded(provider, provider.snapshot_create(sb, snap_id))
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
        self.store.put_setting(
            "", "state", rec.id, {**asdict(rec), "resources": asdict(rec.resources)}
        )
        self.manager.bus.emit(sandbox_id, STATE_SAVED, state_id=rec.id, name=name)
        return rec

    def states(self) -> list[StateRecord]:
        out = []
        for kind, _, v in self.store.settings(""):
            if kind == "state":
                out.append(StateRecord(**{**v, "resources": Resources(**v["resources"])}))
        return sorted(out, key=lambda r: (r.created_at, r.id), reverse=True)

    def state(self, state_id: str) -> StateRecord:
        for rec in self.states():
            if rec.id == state_id:
                return rec
        raise NotFound(f"state {state_id!r} not found", reason="STATE_NOT_FOUND", state_id=state_id)

    async def delete_state(self, state_id: str) -> None:
        rec = self.state(state_id)
        await self._free(rec.provider, rec.snapshot_id)
        self.store.delete_setting("", "state", state_id)

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
