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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from computesdkd.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from computesdkd.domain.model import Sandbox, SandboxSpec, VolumeMount
from computesdkd.providers.base import VOLUMES
from computesdkd.support import logs

if TYPE_CHECKING:
    from computesdkd.manager import Manager

log = logs.get(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_SIZE_MB = 1024
MAX_SIZE_MB = 1024 * 1024
# Paths a volume may not cover: the system and the daemon's own mounts.
FORBIDDEN = ("/", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/.computesdk")
VOLUME_CREATED, VOLUME_DELETED, VOLUME_MOUNTED = (
    "volume.created",
    "volume.deleted",
    "volume.mounted",
)


@dataclass(frozen=True)
class VolumeRecord:
    name: str
    provider: str
    size_mb: int
    persistent: bool
    created_at: float
    # For an ephemeral volume: the sandbox it goes with.
    owner: str = ""


class Volumes:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.store = manager.store

    def _record(self, name: str) -> VolumeRecord | None:
        for kind, n, value in self.store.settings(""):
            if kind == "volume" and n == name:
                return VolumeRecord(**value)
        return None

    def get(self, name: str) -> VolumeRecord:
        rec = self._record(name)
        if rec is None:
            raise NotFound(f"volume {name!r} not found", reason="VOLUME_NOT_FOUND", volume=name)
        return rec

    def all(self) -> list[VolumeRecord]:
        recs = [VolumeRecord(**v) for k, _, v in self.store.settings("") if k == "volume"]
        return sorted(recs, key=lambda r: r.name)

    def mounted_by(self, name: str) -> list[str]:
        return sorted(
            sb.id
            for sb in self.manager.sandboxes_by_id().values()
            if any(m.name == name for m in sb.spec.volumes)
        )

    def used_bytes(self, rec: VolumeRecord) -> int:
        return self.manager.providers[rec.provider].volume_used_bytes(rec.name)

    async def create(
        self, name: str, size_mb: int, persistent: bool, provider: str = "", owner: str = ""
    ) -> VolumeRecord:
        if not NAME.match(name):
            raise InvalidArgument(
                "volume names are 1-63 of a-z, 0-9, '.', '_', '-'", reason="INVALID_NAME"
            )
        size_mb = size_mb or DEFAULT_SIZE_MB
        if not 1 <= size_mb <= MAX_SIZE_MB:
            raise InvalidArgument(f"size_mb is 1 to {MAX_SIZE_MB}", reason="INVALID_SIZE")
        if self._record(name) is not None:
            raise AlreadyExists(f"volume {name!r} exists", reason="VOLUME_EXISTS", volume=name)
        provider = provider or self.manager.default_provider
        p = self.manager.providers[provider]
        if VOLUMES not in p.capabilities:
            raise p._unsupported("volumes")
        await p.volume_create(name, size_mb)
        rec = VolumeRecord(name, provider, size_mb, persistent, time.time(), owner)
        self.store.put_setting("", "volume", name, asdict(rec))
        # A daemon-wide event (no sandbox), unless an ephemeral volume's sandbox made it.
        self.manager.bus.emit(
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
        await self.manager.providers[rec.provider].volume_delete(name)
        self.store.delete_setting("", "volume", name)
        self.manager.bus.emit(rec.owner, VOLUME_DELETED, volume=name)

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
                rec = await self.create(m.name, m.size_mb, False, spec.provider, sandbox_id)
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
