"""Host-side helpers of the local provider: mounts and short-lived tools."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import struct
from collections.abc import Iterator

from ...errors import Internal

_libc = ctypes.CDLL(None, use_errno=True)


_MNT_DETACH = 2


MS_NOSUID = 2
MS_NODEV = 4


def mount(source: str, target: str, fstype: str, options: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not mounted; ENOENT: gone
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


async def run(*argv: str, timeout: float = 30.0, log_fd: int | None = None) -> str:
    """Runs a helper. With log_fd, its output (and the container's, for runc run) goes there."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=pipe if log_fd is None else log_fd,
        stderr=pipe if log_fd is None else log_fd,
        start_new_session=True,  # sandboxes must not share the daemon's terminal signals
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise Internal(
            f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: "
            f"{(err or b'').decode(errors='replace').strip()}"
        )
    return (out or b"").decode()


# Loop devices, set up with ioctls instead of losetup(8): a create saves two
# helper processes (~4 ms together here) on its critical path.
_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
# struct loop_config: u32 fd, u32 block_size, struct loop_info64 info (232 bytes:
# lo_flags at 52, lo_file_name[64] at 56), u64 reserved[8].
_LOOP_CONFIG_SIZE = 304
_INFO = 8
_EBUSY = 16


@contextlib.contextmanager
def loop_device(image: str, flags: int, block_size: int = 4096) -> Iterator[str]:
    """Attaches image to a free loop device and yields its path, holding the device
    open meanwhile. With LO_FLAGS_AUTOCLEAR the device goes once nothing holds it:
    mount it inside the with block, and it goes with the unmount (or at once, if
    the mount failed)."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            device, loop = _configure_free_loop(control, backing, image, flags, block_size)
        finally:
            os.close(control)
    finally:
        os.close(backing)
    try:
        yield device
    finally:
        os.close(loop)


def _configure_free_loop(
    control: int, backing: int, image: str, flags: int, block_size: int
) -> tuple[str, int]:
    for _ in range(32):  # another process may take the free device first
        index = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
        device = f"/dev/loop{index}"
        loop = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        config = bytearray(_LOOP_CONFIG_SIZE)
        struct.pack_into("=II", config, 0, backing, block_size)
        struct.pack_into("=I", config, _INFO + 52, flags)
        name = image.encode()[-63:]
        config[_INFO + 56 : _INFO + 56 + len(name)] = name
        try:
            fcntl.ioctl(loop, _LOOP_CONFIGURE, bytes(config))
        except OSError as exc:
            os.close(loop)
            if exc.errno != _EBUSY:
                raise
            continue
        return device, loop
    raise OSError(_EBUSY, "no free loop device after 32 tries")
