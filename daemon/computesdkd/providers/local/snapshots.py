"""Snapshots of local sandboxes: a reflink clone of the sandbox's disk image,
kept in the store under the id the daemon chose."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from computesdkd.domain.errors import NotFound
from computesdkd.domain.model import Sandbox
from computesdkd.providers.local import disks, layerout, storage
from computesdkd.providers.local.host import umount
from computesdkd.providers.local.layout import Layout


class Snapshots:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def _image(self, snapshot_id: str) -> Path:
        return self._layout.store / "snapshots" / f"{snapshot_id}.img"

    def path(self, snapshot_id: str) -> Path:
        """The snapshot's image, which must exist."""
        path = self._image(snapshot_id)
        if not snapshot_id.replace("-", "").isalnum() or not path.exists():
            raise NotFound(f"snapshot {snapshot_id!r} has no data", reason="SNAPSHOT_NOT_FOUND")
        return path

    async def create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        """Takes the snapshot; returns the bytes the sandbox had written."""
        bundle = Path(sandbox.provider_data["bundle"])
        dst = self._image(snapshot_id)

        def take() -> int:
            # Everything written before this call reaches the image, then one
            # atomic clone (XFS holds the image's I/O lock while it remaps). No
            # freeze: on this kernel a freeze waits out RCU grace periods (~25 ms).
            storage.syncfs(bundle / "disk")
            storage.clone_file(bundle / "disk.img", dst, self._layout.reflink)
            st = os.statvfs(bundle / "disk")
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        return await asyncio.to_thread(take)

    async def export(self, snapshot_id: str, layer: Path) -> None:
        """Writes the snapshot's files (its upper layer) as an OCI-style tar layer."""
        # A twin of the snapshot is mounted read-write, so that its journal is
        # replayed there and the snapshot itself stays as it was taken.
        tmp = self._layout.store / "tmp"
        tmp.mkdir(exist_ok=True)
        twin = tmp / f"export-{snapshot_id}.img"
        mnt = tmp / f"export-{snapshot_id}"
        mnt.mkdir(exist_ok=True)
        try:
            await asyncio.to_thread(
                storage.clone_file, self.path(snapshot_id), twin, self._layout.reflink
            )
            await disks.mount_image(twin, mnt)
            try:

                def write() -> None:
                    with layer.open("wb") as out:
                        layerout.write_layer(mnt / "upper", out)

                await asyncio.to_thread(write)
            finally:
                umount(str(mnt))
        finally:
            twin.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def ids(self) -> list[str]:
        snaps = self._layout.store / "snapshots"
        # Half-written clones (*.tmp) of a daemon that died are listed to be freed too.
        return (
            sorted(p.name.removesuffix(".img") for p in snaps.iterdir()) if snaps.exists() else []
        )

    async def delete(self, snapshot_id: str) -> None:
        self._image(snapshot_id).unlink(missing_ok=True)
        (self._layout.store / "snapshots" / snapshot_id).unlink(missing_ok=True)
