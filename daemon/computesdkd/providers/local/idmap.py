"""A host uid/gid range of its own for every sandbox, over one shared copy of the layers.

Everything on disk (the base, template layers, each sandbox's upper layer,
volumes, snapshots) stays owned by the storage range, UID_SHIFT.. (root in a
sandbox is UID_SHIFT on disk). Each running sandbox gets a slot: a range of
65536 host ids that no other sandbox uses, as Kubernetes user namespaces and
podman's auto userns do. Its container maps 0 -> that range, and every layer it
sees is an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP) that maps the
storage range onto the slot's: one copy of the base serves every range, a file
a sandbox writes lands on disk in the storage range, and snapshots, clones and
volumes move between sandboxes without a chown.

So no two sandboxes share a host uid: per-user kernel limits (inotify
instances, mqueue bytes, keys) are per sandbox, and code that escaped one
sandbox as its root owns nothing of another's.

The overlay is made with the new mount API: its layers are detached idmapped
mounts passed by fd (fsconfig FSCONFIG_SET_FD "lowerdir+"), so they never enter
the host's mount table.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from computesdkd.domain.errors import ResourceExhausted
from computesdkd.providers.local.rootfs import ID_RANGE, UID_SHIFT
from computesdkd.support import logs

log = logs.get(__name__)

# Slot n is host ids SLOT_BASE + n*ID_RANGE ..; far above the storage range and
# any real user of the host.
SLOT_BASE = 1 << 24
MAX_SLOTS = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYS_CAPGET, _SYS_CAPSET = 125, 126
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 428, 429, 430, 431, 432
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_O_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_FSCONFIG_SET_FD, _FSCONFIG_CMD_CREATE = 5, 6
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _sys(nr: int, *args: object) -> int:
    rc = _libc.syscall(nr, *args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def host_base(slot: int) -> int:
    return SLOT_BASE + slot * ID_RANGE


class Slots:
    """Which slot each live sandbox holds. Slots are host-wide: every daemon on the
    host (each state dir has its own) leases them through flock'd files in one
    root-only dir, so two daemons never hand out one range. A lease file names its
    holder (runtime key, sandbox id); one whose daemon died while its sandbox runs
    on (the sandbox's runtime dir is still there) stays taken. The lowest free
    slot is handed out, so a steady churn reuses a few slots."""

    def __init__(self, lease_dir: Path, runtime_root: Path, owner: str) -> None:
        self._dir = lease_dir
        self._runtime_root = runtime_root
        self._owner = owner  # this daemon's runtime key
        self._by_sandbox: dict[str, tuple[int, int]] = {}  # id -> (slot, lease fd)

    def take(self, sandbox_id: str, base: int = 0) -> int:
        """The host base of sandbox_id's range: the one it had (base), or a new one."""
        held = self._by_sandbox.get(sandbox_id)
        if held is not None:
            return host_base(held[0])
        if base:
            slot = (base - SLOT_BASE) // ID_RANGE
            fd = self._lease(slot, sandbox_id, adopting=True)
            if fd is None:
                log.error("another daemon holds this sandbox's uid range", slot=slot)
                fd = -1
            self._by_sandbox[sandbox_id] = (slot, fd)
            return base
        mine = {slot for slot, _ in self._by_sandbox.values()}
        for slot in range(MAX_SLOTS):
            if slot in mine:
                continue
            fd = self._lease(slot, sandbox_id)
            if fd is not None:
                self._by_sandbox[sandbox_id] = (slot, fd)
                return host_base(slot)
        raise ResourceExhausted(
            f"all {MAX_SLOTS} host uid ranges are in use", reason="UID_RANGES_EXHAUSTED"
        )

    def _lease(self, slot: int, sandbox_id: str, adopting: bool = False) -> int | None:
        fd = os.open(
            self._dir / str(slot), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder = os.pread(fd, 512, 0).decode(errors="replace").split()
            if not adopting and len(holder) == 2 and self._lives(*holder):
                raise BlockingIOError
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self._owner} {sandbox_id}\n".encode(), 0)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _lives(self, owner: str, sandbox_id: str) -> bool:
        # A sandbox's runtime dir goes with its destroy, also after a crash (the
        # next start's reconcile); until then its range is in use.
        return (self._runtime_root / owner / sandbox_id).exists()

    def likely(self, count: int) -> list[int]:
        """The host bases the next new sandboxes will most likely get (slots whose
        lease file is empty): a guess, for making their namespaces ahead."""
        mine = {slot for slot, _ in self._by_sandbox.values()}
        out: list[int] = []
        for slot in range(MAX_SLOTS):
            if len(out) == count:
                break
            try:
                if slot in mine or (self._dir / str(slot)).stat().st_size:
                    continue
            except FileNotFoundError:
                pass
            out.append(host_base(slot))
        return out

    def release(self, sandbox_id: str) -> None:
        held = self._by_sandbox.pop(sandbox_id, None)
        if held is not None and held[1] >= 0:
            os.ftruncate(held[1], 0)
            os.close(held[1])  # and with it the lock


class UserNamespaces:
    """The user namespaces of the slots, as fds the daemon holds for as long as it
    runs (a slot's are made on its first use, ~2 ms each):

    - mapping(base): storage ids -> the slot's range, for idmapped mounts.
    - container(base): 0 -> the slot's range, owned by the slot's root, which runc
      joins (by a /proc/self/fd path) instead of making one as host root: the
      kernel charges per-user limits (inotify instances, user namespaces, ...) at
      every level up to the owner of each namespace, so owned by host root, every
      sandbox would draw on one budget whatever its uids.

    A slot's container namespace serves one sandbox at a time (a slot is leased to
    one) and then the next in that slot: what a user namespace could carry over
    between them, keyrings, is refused by seccomp (keyctl, add_key)."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, int], int] = {}
        self._lock = asyncio.Lock()

    async def mapping(self, base: int) -> int:
        return await self._get("mapping", base)

    async def container(self, base: int) -> int:
        return await self._get("container", base)

    async def _get(self, kind: str, base: int) -> int:
        async with self._lock:
            fd = self._fds.get((kind, base))
            if fd is None:
                inside, owner = (UID_SHIFT, 0) if kind == "mapping" else (0, base)
                fd = self._fds[(kind, base)] = await _make_userns(inside, base, owner)
            return fd

    async def warm(self, bases: list[int]) -> None:
        """Makes these slots' namespaces ahead (at start, off any create)."""
        for base in bases:
            with contextlib.suppress(OSError, TimeoutError):
                await self.mapping(base)
                await self.container(base)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


async def container_userns(base: int) -> int:
    """A user namespace for one container: 0 -> base, owned by base (see
    UserNamespaces). The caller closes the fd."""
    return await _make_userns(0, base, owner=base)


async def _make_userns(inside: int, base: int, owner: int) -> int:
    """A user namespace owned by host uid owner, with uid and gid maps `inside base
    ID_RANGE`. A short-lived child makes it (a threaded daemon cannot unshare a
    user namespace itself) and holds it while root writes its maps; the ns fd
    outlives the child."""
    argv = ["unshare", "--user", "--", "sh", "-c", "echo ready; read _"]
    if owner:
        argv = ["setpriv", f"--reuid={owner}", f"--regid={owner}", "--clear-groups", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if await asyncio.wait_for(proc.stdout.readline(), 10) != b"ready\n":
            raise OSError("unshare --user did not start")
        line = f"{inside} {base} {ID_RANGE}\n".encode()
        for kind in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{proc.pid}/{kind}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def idmapped_clone(path: str, userns_fd: int, attrs: int = 0, dirfd: int = _AT_FDCWD) -> int:
    """A detached copy of the mount at path, its ids mapped through userns_fd."""
    fd = _sys(_SYS_OPEN_TREE, dirfd, path.encode(), _OPEN_TREE_CLONE | _O_CLOEXEC)
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | attrs, 0, 0, userns_fd)
        _sys(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach(mount_fd: int, target: str) -> None:
    """Puts a detached mount at target (a directory the daemon owns)."""
    _sys(_SYS_MOVE_MOUNT, mount_fd, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH)


def mount_overlay(lowers: list[int], upper: int, work: int, target: str, creator: int) -> None:
    """An overlay of layer fds at target, nosuid,nodev. creator: the host uid the
    overlay acts as for its own work (copy-up, the work dir); it must be mapped in
    the upper layer's idmapping, which host root is not."""
    fs = _sys(_SYS_FSOPEN, b"overlay", 1)
    try:
        for fd in lowers:
            _sys(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FD, b"lowerdir+", None, fd)
        _sys(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FD, b"upperdir", None, upper)
        _sys(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FD, b"workdir", None, work)
        with acting_as(creator):  # the superblock keeps the creds it was made with
            _sys(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0)
        mnt = _sys(_SYS_FSMOUNT, fs, 1, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    finally:
        os.close(fs)
    try:
        attach(mnt, target)
    finally:
        os.close(mnt)


@contextlib.contextmanager
def acting_as(uid: int) -> Iterator[None]:
    """This thread's filesystem ids become uid (and gid) with every capability kept,
    so that files it creates through an idmapped mount belong to the sandbox's
    root. setfsuid is per thread; the ids are back to root on the way out."""
    _libc.setfsuid(uid)
    _libc.setfsgid(uid)
    try:
        # A non-zero fsuid drops the filesystem capabilities from the effective
        # set; they are still permitted, so take them back for this thread.
        header = _CapHeader(0x20080522, 0)
        data = (_CapData * 2)()
        _sys(_SYS_CAPGET, ctypes.byref(header), data)
        for d in data:
            d.effective = d.permitted
        _sys(_SYS_CAPSET, ctypes.byref(header), data)
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
