"""Where local sandboxes keep their disks: a filesystem that can clone a file in
constant time (reflink), so that snapshots, restores and clones cost the same
whatever a sandbox has written.

Each sandbox's upper layer is an ext4 image (its size is the disk limit). On a
reflink filesystem, FICLONE makes a copy-on-write twin of that image in well
under a millisecond: the filesystem shares the blocks and counts references,
and frees a block when no image uses it any more. The inner ext4 has a
journal and is synced first, so the twin holds everything written before the
snapshot and mounts to a consistent filesystem.

When the state directory's own filesystem cannot reflink, the store is an XFS
filesystem (reflink=1) in a sparse image, loop-mounted under the state
directory. Without XFS in the kernel, clones fall back to a sparse copy (cost
grows with what was written) and say so in the log.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from computesdkd.providers.local import host
from computesdkd.support import logs

log = logs.get(__name__)

FICLONE = 0x40049409
# Sparse size of the XFS store; it takes host space only as sandboxes write.
MAX_STORE_BYTES = 256 * 1024**3


def can_reflink(directory: Path) -> bool:
    a, b = directory / ".reflink-probe-a", directory / ".reflink-probe-b"
    try:
        a.write_bytes(b"x" * 4096)
        with a.open("rb") as src, b.open("wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        for p in (a, b):
            with contextlib.suppress(OSError):
                p.unlink()


def is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    return any(point == target for point, _ in host.mounts())


def ensure_store(local_state: Path) -> tuple[Path, bool]:
    """The store directory, and whether it reflinks. Idempotent across restarts."""
    store = local_state / "store"
    store.mkdir(parents=True, exist_ok=True)
    os.chmod(store, 0o711)
    if is_mountpoint(store) or can_reflink(store):
        return store, can_reflink(store)
    image = local_state / "store.xfs"
    try:
        if not image.exists():
            free = shutil.disk_usage(local_state).free
            with image.open("wb") as f:
                f.truncate(min(MAX_STORE_BYTES, max(free, 8 * 1024**3)))
            subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)],
                           check=True, capture_output=True)  # fmt: skip
        subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(image), str(store)],
                       check=True, capture_output=True)  # fmt: skip
        os.chmod(store, 0o711)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "no reflink store: snapshots and clones will copy data",
            error=str(exc),
            detail=detail.decode(errors="replace").strip(),
        )
        return store, False
    return store, can_reflink(store)


def clone_file(src: Path, dst: Path, reflink: bool) -> None:
    """dst becomes a copy of src: copy-on-write when the store allows, else sparse."""
    tmp = dst.with_name(dst.name + ".tmp")
    if reflink:
        with src.open("rb") as s, tmp.open("wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    else:
        subprocess.run(["cp", "--sparse=always", str(src), str(tmp)], check=True)
    os.chmod(tmp, 0o600)
    tmp.rename(dst)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(mountpoint: Path) -> None:
    """Writes one filesystem's dirty data and commits its journal."""
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {mountpoint}: {os.strerror(err)}")
    finally:
        os.close(fd)
