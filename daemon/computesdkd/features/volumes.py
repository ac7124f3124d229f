"""Named volumes: size-limited filesystems that sandboxes mount at a path.

A persistent volume outlives every sandbox and the daemon; an ephemeral one
(made by a create that names a volume that does not exist, with a size) goes
with the sandbox that made it. Several sandboxes may mount one volume at once,
each read-write or read-only. Records live in SQLite; the provider keeps the
data (for local: an ext4 image, so the limit is hard: writers get ENOSPC).
"""

from __future__ import annotations

import asyncio
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
    Aborted,
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
# A size string: a number and a unit, decimal (GB = 10^9) or binary (GiB = 2^30);
# no unit means size_mb's MB. The length is bounded before the regex runs.
SIZE = re.compile(r"^\s*(\d{1,16}(?:\.\d{1,6})?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE | re.ASCII)
UNITS = {"b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MIB = 1024 * 1024
# Paths a volume may not cover: the system and the daemon's own mounts.
FORBIDDEN = ("/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/.computesdk")
VOLUME_CREATED, VOLUME_DELETED = "volume.created", "volume.deleted"


def parse_size(text: str) -> int:
    """A volume size string ("10GB", "10GiB", "512MB", "1TB", "2048") in whole
    MiB (the unit size_mb and the store count in), rounded up."""
    shown = text if len(text) <= 32 else text[:32] + "..."  # never echo a huge input
    m = SIZE.match(text) if len(text) <= 64 else None
    if m is None:
        raise InvalidArgument(
            f"volume size {shown!r} is not a size: use a number and MB, GB, TB "
            "(powers of 1000) or MiB, GiB, TiB (powers of 1024); a bare number is MB",
            reason="INVALID_VOLUME_SIZE",
        )
    # A bare number is size_mb's unit, so that size "2048" and size_mb 2048 agree.
    unit = (m.group(2) or "mib").lower()
    scale: int = UNITS[unit[0]] if "i" not in unit else 1024 ** "bkmgt".index(unit[0])
    # Exact decimal arithmetic: "1.5GB" is not a float's idea of it.
    whole, _, frac = m.group(1).partition(".")
    num, den = int(whole + frac), 10 ** len(frac)
    size_mb: int = -(-num * scale // (den * MIB))
    if not 1 <= size_mb <= MAX_SIZE_MB:
        raise InvalidArgument(
            f"volume size {shown!r} is out of range: 1 MiB to {MAX_SIZE_MB // (1024 * 1024)} TiB",
            reason="INVALID_VOLUME_SIZE",
        )
    return size_mb


def size_of(m: VolumeMount) -> int:
    """The size a mount asks for a volume it makes: `size` wins over size_mb; zero
    when it gives none."""
    if m.size:
        return parse_size(m.size)
    if m.size_mb > MAX_SIZE_MB:
        raise InvalidArgument(
            f"size_mb {m.size_mb} is above {MAX_SIZE_MB}", reason="INVALID_VOLUME_SIZE"
        )
    return m.size_mb


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
        """Checks a create's mounts, makes the volumes it names that do not exist
        yet, and returns what the provider mounts (provider_data["volumes"]).

        Every mount is checked before any volume is made. A volume that exists is
        mounted as it is, whatever size the mount gives (sizes are for making);
        one that does not is made (of the default size when the mount gives
        none), unless the mount says must_exist (mountExisting)."""
        seen: set[str] = set()
        out = []
        sizes = []
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
            size_mb = size_of(m)
            if m.must_exist and self._record(m.name) is None and m.name not in self._making:
                raise NotFound(
                    f"volume {m.name!r} not found: mountExisting (must_exist) mounts "
                    "only a volume that exists; create it first, or drop "
                    "mountExisting to make it on first use",
                    reason="VOLUME_NOT_FOUND",
                    volume=m.name,
                )
            sizes.append(size_mb)
            out.append([m.name, path, m.read_only])
        for m, size_mb in zip(spec.volumes, sizes, strict=True):
            rec = await self._made(m, size_mb, spec, sandbox_id)
            if rec.provider != spec.provider:
                raise FailedPrecondition(
                    f"volume {m.name!r} lives on provider {rec.provider!r}",
                    reason="VOLUME_PROVIDER_MISMATCH",
                )
        return json.dumps(out)

    async def _made(
        self, m: VolumeMount, size_mb: int, spec: SandboxSpec, sandbox_id: str
    ) -> VolumeRecord:
        """The volume a mount names, made now if it is not there. Two creates that
        make the same new volume at once both mount it: the second waits."""
        for _ in range(1200):  # 60 s for another create to finish making it
            rec = self._record(m.name)
            if rec is not None:
                if size_mb and size_mb != rec.size_mb:
                    log.info(
                        "mounting an existing volume as it is",
                        volume=m.name,
                        size_mb=rec.size_mb,
                        asked_mb=size_mb,
                    )
                return rec
            if m.name not in self._making:
                owner = "" if m.persistent else sandbox_id  # an ephemeral one goes with it
                return await self.create(
                    m.name, size_mb, m.persistent, spec.provider, owner, spec.tenant
                )
            await asyncio.sleep(0.05)
        raise Aborted(f"volume {m.name!r} is still being made", reason="ABORTED")

    async def sandbox_gone(self, sb: Sandbox) -> None:
        """Ephemeral volumes go with the sandbox that made them, once unused: with the
        last sandbox to mount one, when its maker went first."""
        if not sb.spec.volumes:  # only a create that mounts volumes can make one
            return
        mounted = {m.name for m in sb.spec.volumes}
        for rec in self.all():
            if (
                not rec.persistent
                and (rec.owner == sb.id or rec.name in mounted)
                and not self.mounted_by(rec.name)
            ):
                try:
                    await self.delete(rec.name)
                except Exception as exc:
                    log.warning("could not free a volume", volume=rec.name, error=repr(exc))


__all__ = ["VolumeMount", "VolumeRecord", "Volumes"]
