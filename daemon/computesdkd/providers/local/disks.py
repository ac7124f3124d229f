"""Sandbox disks: sparse ext4 images, loop-mounted, holding the overlay's upper layer.

A new disk is a clone of a snapshot, a clone of an empty image made once per
size (on a store that reflinks), or a fresh mkfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from computesdkd.domain.errors import FailedPrecondition, Internal
from computesdkd.providers.local import host, layerin, safefs, storage
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.host import run, umount
from computesdkd.providers.local.layout import Layout
from computesdkd.support import logs
from computesdkd.support.testhooks import crash

log = logs.get(__name__)

MIB = 1024 * 1024
CAP_SYS_RESOURCE = 24
# Empty disk images kept to clone from: the default size always, and this many of
# the other sizes, most recently used first (a client cycling sizes cannot fill
# the store).
EMPTY_DISK_CACHE = 3
# A sandbox's disk: with a journal, an image cloned while the sandbox writes is
# what a power cut would leave, and mounting it replays to a consistent
# filesystem (that is what lets a snapshot skip freezing the sandbox); lazy
# tables, which mount_image never zeroes, keep mkfs off the store.
DISK_OPTIONS = ("-J", "size=8", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")
# A volume keeps mkfs's own journal size: the disk's 8 MiB would be half of a
# 16 MiB volume. Lazy tables and journal: the image is a new sparse file, whose
# holes read as zeros, so a 10 GB volume costs a few MB, not its 64 MB journal.
VOLUME_OPTIONS = ("-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")


async def mkfs(img: Path, size_mb: int, options: tuple[str, ...]) -> None:
    """A sparse image of size_mb holding an empty ext4, for mount_image."""
    with img.open("wb") as f:
        f.truncate(size_mb * MIB)
    # 4 KiB blocks even on small disks: the direct-I/O loop device has 4 KiB
    # sectors, and mkfs would pick 1 KiB under 512 MiB.
    await run("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", *options, str(img))


def _fs_bytes(image: Path) -> int:
    """The size of the ext4 in an image, from its superblock (0 if unreadable)."""
    try:
        with image.open("rb") as f:
            f.seek(1024)
            sb = f.read(0x158)
    except OSError:
        return 0
    if len(sb) < 0x158 or sb[0x38:0x3A] != b"\x53\xef":
        return 0
    blocks = int.from_bytes(sb[4:8], "little")
    if int.from_bytes(sb[0x60:0x64], "little") & 0x80:  # INCOMPAT_64BIT
        blocks |= int.from_bytes(sb[0x150:0x154], "little") << 32
    return blocks * (1024 << int.from_bytes(sb[24:28], "little"))


async def _fit(image: Path) -> None:
    """Grows an unmounted image's ext4 to the image's size, when the image was made
    larger (a disk grown while its sandbox ran, on a host where the mounted ext4
    could not grow): offline, resize2fs needs no capability."""
    fs = _fs_bytes(image)
    if fs and image.stat().st_size - fs >= MIB:
        await preen(image)
        await run("resize2fs", str(image))
        log.info("grew a disk while it was unmounted", image=image.name, mb=fs // MIB)


async def preen(image: Path) -> None:
    """e2fsck -fp, as resize2fs wants first. Exit 1 is "errors fixed" (a journal
    replayed, counters set): fine; above that the image is corrupt."""
    proc = await asyncio.create_subprocess_exec(
        "e2fsck", "-fp", str(image),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode == 1:  # e.g. lost+found, which prepare_layers removes
        log.debug("e2fsck fixed a disk image", said=out.decode(errors="replace")[-500:])
    if proc.returncode not in (0, 1):
        text = out.decode(errors="replace").strip()[-500:]
        raise FailedPrecondition(
            f"the disk image {image.name} fails its check (e2fsck exit {proc.returncode}): {text}",
            reason="DISK_CORRUPT",
        )


def can_grow_live() -> bool:
    """Whether this daemon may grow a mounted ext4: the kernel's online resize
    wants CAP_SYS_RESOURCE, which some hosts (containers, microVMs) withhold from
    everyone, root included."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


async def mount_image(image: Path, target: Path) -> None:
    """Loop-mounts an ext4 image with direct I/O: its writes reach the store without
    a second page cache, so memory is counted once and a snapshot (which must see
    them on the store) has nothing left to flush but the ext4's own dirty pages.
    The device autoclears: it goes with the unmount, even when a test or a crash
    skips ours."""
    await _fit(image)
    flags = host.LO_FLAGS_AUTOCLEAR | host.LO_FLAGS_DIRECT_IO
    with host.loop_device(str(image), flags) as device:
        # noinit_itable: mkfs left the inode tables lazy; zeroing them in the
        # background would write tens of MB to the store for every new sandbox.
        host.mount(device, str(target), "ext4", "noinit_itable", host.MS_NOSUID | host.MS_NODEV)


def prepare_layers(disk: Path) -> None:
    """On a new disk: the overlay's upper and work dirs, owned by the storage root
    (the overlay works in them through the sandbox's idmapping)."""
    for sub in ("upper", "work"):
        (disk / sub).mkdir(exist_ok=True)
        os.chown(disk / sub, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
    with contextlib.suppress(OSError):
        (disk / "lost+found").rmdir()


def fresh_workdir(disk: Path) -> None:
    """The overlay's work dir holds nothing between mounts; a disk made before uid
    ranges has one owned by host root, which an idmapped overlay cannot use."""
    fd = safefs.open_trusted_dir(disk)
    try:
        with contextlib.suppress(FileNotFoundError):
            safefs.remove_tree(fd, "work")
        os.mkdir("work", 0o700, dir_fd=fd)
        os.chown("work", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT, dir_fd=fd)
    finally:
        os.close(fd)


async def grow(bundle: Path, disk_mb: int) -> None:
    """Grows a mounted disk (and its ext4) to disk_mb; can_grow_live() must hold."""
    device = next((src for point, src in host.mounts() if point == str(bundle / "disk")), "")
    if not device.startswith("/dev/loop"):
        raise Internal(f"cannot find the loop device of {bundle / 'disk'}")
    enlarge(bundle / "disk.img", disk_mb)
    await run("losetup", "-c", device)
    await run("resize2fs", device)


def image_mb(image: Path) -> int:
    return image.stat().st_size // MIB


def enlarge(image: Path, disk_mb: int) -> None:
    """Makes the image disk_mb (sparse); its ext4 grows at the next mount_image, or
    at once by grow(). Safe while mounted: the loop device keeps its size until
    told."""
    with image.open("r+b") as f:
        if os.fstat(f.fileno()).st_size < disk_mb * MIB:
            f.truncate(disk_mb * MIB)


class Disks:
    """Makes sandbox disks, keeping the cache of empty images to clone from."""

    def __init__(self, layout: Layout, default_mb: int) -> None:
        self._layout = layout
        self._default_mb = default_mb  # the size the cache always keeps
        self._empty_lock: dict[int, asyncio.Lock] = {}
        self._empty_users: dict[int, int] = {}  # creates cloning each cached size now

    async def new(self, bundle: Path, disk_mb: int, source: Path | None) -> None:
        """The upper layer's disk: a clone of a snapshot, or a new empty ext4."""
        img = bundle / "disk.img"
        reflink = self._layout.reflink
        if source is not None:
            await asyncio.to_thread(storage.clone_file, source, img, reflink)
            if img.stat().st_size < disk_mb * MIB:
                with img.open("r+b") as f:
                    f.truncate(disk_mb * MIB)
                await preen(img)  # e2fsck -fp exits 1 for the lost+found it makes
                await run("resize2fs", str(img))
        elif reflink:
            # A clone of an empty disk made once per size: cheaper than mkfs.
            self._empty_users[disk_mb] = self._empty_users.get(disk_mb, 0) + 1
            try:
                empty = await self._empty_disk(disk_mb)
                await asyncio.to_thread(storage.clone_file, empty, img, True)
            finally:
                self._empty_users[disk_mb] -= 1
                if not self._empty_users[disk_mb]:
                    del self._empty_users[disk_mb]
        else:
            await mkfs(img, disk_mb, DISK_OPTIONS)
        crash("create.disk")

    async def _empty_disk(self, disk_mb: int) -> Path:
        path = self._layout.store / "cache" / f"empty-{disk_mb}.img"
        async with self._empty_lock.setdefault(disk_mb, asyncio.Lock()):
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                await mkfs(tmp, disk_mb, DISK_OPTIONS)
                mnt = path.with_suffix(".mnt")
                mnt.mkdir(exist_ok=True)
                await mount_image(tmp, mnt)
                try:
                    prepare_layers(mnt)
                finally:
                    umount(str(mnt))
                    mnt.rmdir()
                tmp.rename(path)
                self._prune()  # only a new size can overfill the cache
            else:
                os.utime(path)  # its mtime is its last use, across restarts too
        return path

    def _prune(self) -> None:
        """Keeps the default size and the EMPTY_DISK_CACHE most recently used other
        sizes; deletes the rest, never one being made or cloned from right now."""
        sizes: list[tuple[float, int, Path]] = []
        for img in (self._layout.store / "cache").glob("empty-*.img"):
            with contextlib.suppress(ValueError, OSError):
                sizes.append((img.stat().st_mtime, int(img.stem.removeprefix("empty-")), img))
        others = sorted((e for e in sizes if e[1] != self._default_mb), reverse=True)
        for _, size, img in others[EMPTY_DISK_CACHE:]:
            lock = self._empty_lock.get(size)
            if self._empty_users.get(size) or (lock is not None and lock.locked()):
                continue
            img.unlink(missing_ok=True)
            self._empty_lock.pop(size, None)
            log.info("dropped a cached empty disk", disk_mb=size)

    async def import_layer(self, bundle: Path, layer: Path) -> None:
        """Fills a new disk's upper layer from a tar layer, before the first boot."""
        disk = bundle / "disk"
        disk.mkdir(parents=True, exist_ok=True)
        await mount_image(bundle / "disk.img", disk)
        try:
            prepare_layers(disk)
            await asyncio.to_thread(layerin.read_layer, layer, disk / "upper")
        finally:
            umount(str(disk))
