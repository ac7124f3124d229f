"""Host-side helpers of the local provider: mounts and short-lived tools."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from computesdkd.domain.errors import Internal
from computesdkd.providers.local import safefs
from computesdkd.support.testhooks import crash

_libc = ctypes.CDLL(None, use_errno=True)


_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8  # a mount point swapped for a link is not followed


MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096


def mount(source: str, target: str, fstype: str, options: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")
    crash(f"mount.{fstype}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), _MNT_DETACH | _UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not mounted; ENOENT: gone
            raise OSError(err, f"umount {target}: {os.strerror(err)}")
        return
    crash("umount")


def _unescape(field: str) -> str:
    """A mountinfo field as the path it names (the kernel octal-escapes blanks)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every mount in the daemon's mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), _unescape(fields[sep + 2])))
    return out


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
    crash(_step(argv))
    return (out or b"").decode()


def run_sync(
    *argv: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a helper from a worker thread (the build network's ip, iptables,
    nsenter); with check, a failure raises Internal with what it said."""
    try:
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Internal(f"{argv[0]}: {exc}") from exc
    if check and proc.returncode != 0:
        raise Internal(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _step(argv: tuple[str, ...] | list[str]) -> str:
    """The test hook's name of a helper run: run.mkfs.ext4, run.runc.delete, ..."""
    tool = os.path.basename(argv[0])
    if tool == "runc":
        words = list(argv[3:] if len(argv) > 3 and argv[1] == "--root" else argv[1:])
        return f"run.runc.{words[0] if words else ''}"
    return f"run.{tool}"


async def spawn(argv: list[str], fds: Mapping[int, int], timeout: float = 30.0) -> None:
    """Runs a helper with exactly these fds (target number -> open fd; stdin is
    /dev/null) and waits for it to succeed. asyncio's subprocesses cannot place an
    fd at a given number, and runc --preserve-fds wants the socket at 3."""
    pid = _spawn(argv, fds)
    pidfd = os.pidfd_open(pid)
    try:
        await wait_pidfd(pidfd, timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        await asyncio.to_thread(os.waitpid, pid, 0)
        raise
    finally:
        os.close(pidfd)
    code = _reap(pid)
    if code != 0:
        raise Internal(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited with {code}")
    crash(_step(argv))  # test-only hook (testhooks.py)


async def wait_pidfd(pidfd: int, timeout: float) -> None:
    """Waits until the process behind pidfd ends (its pidfd becomes readable), or
    raises TimeoutError."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await asyncio.wait_for(ended, timeout)
    finally:
        loop.remove_reader(pidfd)


def _reap(pid: int) -> int:
    """The exit code of a child whose pidfd said it ended (so this does not block)."""
    _, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status)


def _spawn(argv: list[str], fds: Mapping[int, int]) -> int:
    path = shutil.which(argv[0])
    if path is None:
        raise Internal(f"{argv[0]} is not installed")
    # Above every target first, so that one dup2 cannot clobber another's source.
    high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for target, fd in fds.items()}
    try:
        actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in high.items()]
        return os.posix_spawn(path, argv, dict(os.environ), file_actions=actions, setsid=True)
    finally:
        for fd in high.values():
            os.close(fd)


def listen_unix(path: Path, mode: int | None = None) -> socket.socket:
    """A listening Unix socket at path, in a directory only root can write. mode is
    set through an fd, so it lands on this socket and nowhere else."""
    dirfd = safefs.open_trusted_dir(path.parent)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=dirfd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"/proc/self/fd/{dirfd}/{path.name}")
            if mode is not None:
                safefs.chmod_at(dirfd, path.name, mode)
            sock.listen(512)
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dirfd)


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
        crash("loop.attached")
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


_LOOP_CLR_FD = 0x4C01


def loop_devices() -> Iterator[tuple[str, str]]:
    """(device, backing file) of every attached loop device. A backing file that was
    removed while attached ends in " (deleted)"."""
    for d in Path("/sys/block").glob("loop*"):
        with contextlib.suppress(OSError):
            backing = (d / "loop" / "backing_file").read_text().rstrip("\n")
            yield f"/dev/{d.name}", backing


def loop_detach(device: str) -> None:
    """Detaches a loop device; one still in use (mounted, open) is only marked to
    autoclear, so it goes with its last user and never under one."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
    finally:
        os.close(fd)
