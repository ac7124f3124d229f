"""Volumes of the local provider. Each is an ext4 image (its size is the limit)
mounted once on the host, and seen by every sandbox that uses it through an
idmapped view of its own, bound in by runc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path

from computesdkd.domain.errors import Internal, ResourceExhausted
from computesdkd.domain.model import Sandbox
from computesdkd.providers.local import disks, idmap, storage
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.host import umount
from computesdkd.providers.local.layout import Layout


def unmount_views(rt: Path) -> None:
    """Each volume's view for this sandbox (before anything removes rt: a recursive
    remove would walk into a mounted volume)."""
    with contextlib.suppress(FileNotFoundError):
        for point in (rt / "volumes").iterdir():
            umount(str(point))


class Volumes:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def _dir(self, name: str) -> Path:
        return self._layout.store / "volumes" / name

    async def create(self, name: str, size_mb: int) -> None:
        """The image is sparse: a 10 GB volume takes what is written to it. Its size
        is a promise the store may overcommit, but never beyond the store's whole
        size (such a volume could never be filled)."""
        with contextlib.suppress(OSError):
            total_mb = shutil.disk_usage(self._layout.store).total // disks.MIB
            if size_mb > total_mb:
                raise ResourceExhausted(
                    f"volume {name!r} of {size_mb} MiB is larger than the whole sandbox "
                    f"store ({total_mb} MiB)",
                    reason="VOLUME_TOO_LARGE",
                    volume=name,
                    limit_mb=str(total_mb),
                )
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=True)
        img = d / "volume.img"
        if not img.exists():
            await disks.mkfs(img, size_mb, disks.VOLUME_OPTIONS)
        await self._mount(name)

    async def remount(self) -> None:
        """Volume mounts do not outlive a reboot of the host; puts them back."""
        for d in sorted((self._layout.store / "volumes").iterdir()):
            if (d / "volume.img").exists():
                with contextlib.suppress(Internal, OSError):
                    await self._mount(d.name)

    async def _mount(self, name: str) -> None:
        # Only root passes: each sandbox reaches the volume through its own
        # idmapped view in its runtime dir, never through this path.
        d = self._dir(name)
        os.chmod(d, 0o700)
        (d / "data").mkdir(exist_ok=True)
        if storage.is_mountpoint(d / "data"):
            return
        await disks.mount_image(d / "volume.img", d / "data")
        # Root in a sandbox owns the volume's root directory.
        os.chown(d / "data", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        with contextlib.suppress(OSError):
            (d / "data" / "lost+found").rmdir()

    async def delete(self, name: str) -> None:
        d = self._dir(name)
        umount(str(d / "data"))
        await asyncio.to_thread(shutil.rmtree, d, True)

    def used_bytes(self, name: str) -> int:
        try:
            st = os.statvfs(self._dir(name) / "data")
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def bind_views(self, sandbox: Sandbox, rt: Path, userns: int) -> list[tuple[str, str, bool]]:
        """Mounts, in the runtime dir, each of the sandbox's volumes (the daemon lists
        them in provider_data["volumes"]) as its ids see it; returns (host view,
        path inside, read-only) for runc to bind in."""
        out = []
        for i, (name, path, ro) in enumerate(
            json.loads(sandbox.provider_data.get("volumes", "[]"))
        ):
            point = rt / "volumes" / str(i)
            point.mkdir(mode=0o700, exist_ok=True)
            umount(str(point))
            mnt = idmap.idmapped_clone(
                str(self._dir(name) / "data"),
                userns,
                idmap.MOUNT_ATTR_NOSUID | idmap.MOUNT_ATTR_NODEV,
            )
            try:
                idmap.attach(mnt, str(point))
            finally:
                os.close(mnt)
            out.append((str(point), path, bool(ro)))
        return out
