"""Named volumes: size-limited filesystems that sandboxes mount at a path.

A persistent volume outlives every sandbox and the daemon; an ephemeral one
(made by a create that names a volume that does not exist, with a size) goes
with the sandbox that made it. Several sandboxes may mount one volume at once,
each read-write or read-only. Records live in SQLite; the provider keeps the
data (for local: an ext4 image, so the limit is hard: writers get ENOSPC).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from computesdkd.core.bus import EventBus
from computesdkd.core.guard import Providers
from computesdkd.core.registry import Registry
from computesdkd.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    already_exists,
    not_found,
)
from computesdkd.domain.model import Sandbox, SandboxSpec, VolumeMount
from computesdkd.providers import capabilities as caps
from computesdkd.providers.capabilities import require
from computesdkd.store import Store
from computesdkd.support import logs

log = logs.get(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_SIZE_MB = 1024
MAX_SIZE_MB = 1024 * 1024
# Paths a volume may not cover: the system and the daemon's own mounts.
FORBIDDEN = ("/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/.computesdk")
VOLUME_CREATED, VOLUME_DELETED = "volume.created", "volume.deleted"


@dataclass(frozen=True)
class VolumeRecord:
    name: str
    provider: str
    size_mb: int
    persistent: bool
    created_at: float
    # For an ephemeral volume: the sandbox it goes with.
    owner: str = ""
    # Whose space it counts against (quotas); empty for the admin.
    tenant: str = ""


class Volumes:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        store: Store,
        bus: EventBus,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._store = store
        self._bus = bus
        # Names being made now, with their tenant and size: a second create of the
        # same name is refused before the first's await, and quotas count them.
        self._making: dict[str, tuple[str, int]] = {}
        # Says whether a tenant may have a volume of this size more (quotas).
        self.admission: list[Callable[[str, int], None]] = []
        # Told each volume that is gone, however it went (its owner row goes too).
        self.on_deleted: list[Callable[[str], None]] = []

    def _record(self, name: str) -> VolumeRecord | None:
        for n, value in self._store.records("volumes").all():
            if n == name:
                return VolumeRecord(**value)
        return None

    def get(self, name: str) -> VolumeRecord:
        rec = self._record(name)
        if rec is None:
            raise not_found("volume", name)
        return rec

    def all(self) -> list[VolumeRecord]:
        recs = [VolumeRecord(**v) for _, v in self._store.records("volumes").all()]
        return sorted(recs, key=lambda r: r.name)

    def mounted_by(self, name: str) -> list[str]:
        return sorted(
            sb.id for sb in self._registry.all() if any(m.name == name for m in sb.spec.volumes)
        )

    def used_bytes(self, rec: VolumeRecord) -> int:
        return require(
            self._providers.by_name[rec.provider], caps.Volumes, "volumes"
        ).volume_used_bytes(rec.name)

    def mb_of(self, tenant: str) -> int:
        """The space a tenant's volumes take, those being made included."""
        made = sum(r.size_mb for r in self.all() if r.tenant == tenant)
        return made + sum(size for t, size in self._making.values() if t == tenant)

    async def create(
        self,
        name: str,
        size_mb: int,
        persistent: bool,
        provider: str = "",
        owner: str = "",
        tenant: str = "",
    ) -> VolumeRecord:
        if not NAME.match(name):
            raise InvalidArgument(
                "volume names are 1-63 of a-z, 0-9, '.', '_', '-'", reason="INVALID_NAME"
            )
        size_mb = size_mb or DEFAULT_SIZE_MB
        if not 1 <= size_mb <= MAX_SIZE_MB:
            raise InvalidArgument(f"size_mb is 1 to {MAX_SIZE_MB}", reason="INVALID_SIZE")
        if name in self._making or self._record(name) is not None:
            raise already_exists("volume", name)
        provider = provider or self._providers.default
        volumes = require(self._providers.by_name[provider], caps.Volumes, "volumes")
        for admit in self.admission:  # no await from here to the reservation
            admit(tenant, size_mb)
        self._making[name] = (tenant, size_mb)
        try:
            await volumes.volume_create(name, size_mb)
            rec = VolumeRecord(name, provider, size_mb, persistent, time.time(), owner, tenant)
            self._store.records("volumes").put(name, asdict(rec))
        finally:
            del self._making[name]
        # A daemon-wide event (no sandbox), unless an ephemeral volume's sandbox made it.
        self._bus.emit(
            owner,
            VOLUME_CREATED,
            volume=name,
            size_mb=str(size_mb),
            persistent=str(persistent).lower(),
        )
        return rec

    async def delete(self, name: str) -> None:
        rec = self.get(name)
        users = self.mounted_by(name)
        if users:
            raise FailedPrecondition(
                f"volume {name!r} is mounted by {', '.join(users)}",
                reason="VOLUME_IN_USE",
                volume=name,
            )
        await require(self._providers.by_name[rec.provider], caps.Volumes, "volumes").volume_delete(
            name
        )
        self._store.records("volumes").delete(name)
        for hook in self.on_deleted:
            hook(name)
        self._bus.emit(rec.owner, VOLUME_DELETED, volume=name)

    async def prepare_sandbox(self, sb: Sandbox) -> None:
        """Before a create: what the provider mounts goes in provider_data."""
        if sb.spec.volumes:
            sb.provider_data["volumes"] = await self.prepare(sb.spec, sb.id)

    async def prepare(self, spec: SandboxSpec, sandbox_id: str) -> str:
        """Checks a create's mounts, makes its ephemeral volumes, and returns what
        the provider mounts (provider_data["volumes"])."""
        seen: set[str] = set()
        out = []
        for m in spec.volumes:
            path = posixpath.normpath(m.mount_path) if m.mount_path.startswith("/") else ""
            if (
                not path
                or ".." in path.split("/")
                or any(path == f or (f != "/" and path.startswith(f + "/")) for f in FORBIDDEN)
            ):
                raise InvalidArgument(
                    f"volume {m.name!r} cannot be mounted at {m.mount_path!r}",
                    reason="INVALID_MOUNT_PATH",
                )
            if path in seen:
                raise InvalidArgument(f"two volumes at {path}", reason="INVALID_MOUNT_PATH")
            seen.add(path)
            rec = self._record(m.name)
            if rec is None:
                if not m.size_mb:
                    raise NotFound(
                        f"volume {m.name!r} not found (give size_mb to make an ephemeral one)",
                        reason="VOLUME_NOT_FOUND",
                        volume=m.name,
                    )
                rec = await self.create(
                    m.name, m.size_mb, False, spec.provider, sandbox_id, spec.tenant
                )
            if rec.provider != spec.provider:
                raise FailedPrecondition(
                    f"volume {m.name!r} lives on provider {rec.provider!r}",
                    reason="VOLUME_PROVIDER_MISMATCH",
                )
            out.append([m.name, path, m.read_only])
        return json.dumps(out)

    async def sandbox_gone(self, sb: Sandbox) -> None:
        """Ephemeral volumes go with the sandbox that made them, once unused."""
        if not sb.spec.volumes:  # only a create that mounts volumes can make one
            return
        for rec in self.all():
            if not rec.persistent and rec.owner == sb.id and not self.mounted_by(rec.name):
                try:
                    await self.delete(rec.name)
                except Exception as exc:
                    log.warning("could not free a volume", volume=rec.name, error=repr(exc))


__all__ = ["VolumeMount", "VolumeRecord", "Volumes"]
