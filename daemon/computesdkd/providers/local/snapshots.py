"""Snapshots of local sandboxes: a reflink clone of the sandbox's disk image,
kept in the store under the id the daemon chose, with a fingerprint of its bytes
beside it (checked before anything starts from it: bytes changed on the store
are refused, not booted)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from computesdkd.domain.errors import FailedPrecondition, NotFound
from computesdkd.domain.model import Sandbox
from computesdkd.providers.local import disks, layerout, storage
from computesdkd.providers.local.host import umount
from computesdkd.providers.local.layout import Layout

T = TypeVar("T")

# The fingerprint hashes the image in blocks of this size, skipping blocks of
# zeros: it reads only what the sparse image holds, and does not depend on how the
# store lays the image out (a hole and written zeros hash the same).
BLOCK = 64 * 1024
_ZEROS = bytes(BLOCK)
SIDECAR = ".sha256"
EXT4_MAGIC_OFFSET, EXT4_MAGIC = 1024 + 0x38, b"\x53\xef"
# Hashing takes time in proportion to what a sandbox wrote (about 1 GB/s a core):
# threads of its own, so a tenant's full disks never hold the default executor
# every other blocking call of the daemon shares.
_HASHING = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fingerprint")


async def _hashing(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_HASHING, fn)


def fingerprint(image: Path) -> str:
    h = hashlib.sha256()
    with image.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        done = 0  # blocks below this one are hashed
        while done * BLOCK < size:
            try:
                start = os.lseek(fd, done * BLOCK, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data past here
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            for i in range(max(done, start // BLOCK), (end - 1) // BLOCK + 1):
                data = os.pread(fd, BLOCK, i * BLOCK)
                if data != _ZEROS[: len(data)]:
                    h.update(i.to_bytes(8, "little"))
                    h.update(data)
                done = i + 1
    return h.hexdigest()


def ext4_problem(image: Path) -> str:
    """What is wrong with an ext4 image at a glance (its superblock), or ""."""
    try:
        with image.open("rb") as f:
            f.seek(EXT4_MAGIC_OFFSET)
            magic = f.read(2)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    return "" if magic == EXT4_MAGIC else "its ext4 superblock is not there"


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

        written = await asyncio.to_thread(take)
        await _hashing(lambda: self._seal(dst))
        return written

    def _seal(self, image: Path) -> None:
        tmp = image.with_name(image.name + SIDECAR + ".tmp")
        tmp.write_text(fingerprint(image))
        tmp.rename(image.with_name(image.name + SIDECAR))

    async def verify(self, snapshot_id: str) -> None:
        """Raises FailedPrecondition STATE_CORRUPT when the snapshot's stored bytes
        are not those it was taken with (a snapshot older than fingerprints is
        only checked for its superblock)."""
        image = self.path(snapshot_id)

        def problem() -> str:
            sidecar = image.with_name(image.name + SIDECAR)
            with contextlib.suppress(FileNotFoundError):
                if fingerprint(image) != sidecar.read_text().strip():
                    return "its bytes do not match the fingerprint taken with it"
            return ext4_problem(image)

        why = await _hashing(problem)
        if why:
            raise FailedPrecondition(
                f"snapshot {snapshot_id} is corrupt on the store: {why}",
                reason="STATE_CORRUPT",
                snapshot_id=snapshot_id,
            )

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
        if not snaps.exists():
            return []
        # A fingerprint is listed only when its image is gone (a delete cut short),
        # so that it is freed too; so is a half-written one (.tmp).
        return sorted(
            p.name.removesuffix(".img")
            for p in snaps.iterdir()
            if not (p.name.endswith(SIDECAR) and (snaps / p.name.removesuffix(SIDECAR)).exists())
        )

    async def delete(self, snapshot_id: str) -> None:
        image = self._image(snapshot_id)
        image.unlink(missing_ok=True)
        image.with_name(image.name + SIDECAR).unlink(missing_ok=True)
        (self._layout.store / "snapshots" / snapshot_id).unlink(missing_ok=True)
