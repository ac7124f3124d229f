"""Host-side helpers of the local provider: mounts and short-lived tools."""

from __future__ import annotations

import asyncio
import ctypes
import os

from ...errors import Internal

_libc = ctypes.CDLL(None, use_errno=True)


_MNT_DETACH = 2


def mount(source: str, target: str, fstype: str, options: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, options.encode()) != 0:
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
