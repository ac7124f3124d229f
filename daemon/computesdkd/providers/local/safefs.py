"""The one way the daemon touches a tree it does not trust.

A sandbox's files, an image's layers and an archive's entries are written by
code the daemon does not control, and may change under it while it works. The
rule: the daemon never resolves a path in such a tree by following symlinks on
the host. Every access here starts from a directory fd and goes through
openat2(2):

- IN_ROOT: symlinks resolve as they would inside the tree (RESOLVE_IN_ROOT), so
  "/etc -> /" means the tree's own root, never the host's; magic links
  (/proc/PID/fd/N) are refused.
- NO_LINKS: no symlink is followed at all, and nothing climbs above the start
  (RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): for trees the daemon assembles
  (image layers, build roots, volumes).

The rest is fd-relative: *at calls on the parent's fd, fchown/fchmod on the
object's own fd, and files that must be regular are first opened O_PATH (which
never blocks, opens no device and runs no driver code), checked with fstat, and
only then reopened for I/O through the O_PATH fd. Reads into memory are capped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator

_SYS_OPENAT2 = 437  # x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
NO_LINKS = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

# Filesystems whose "files" are kernel interfaces: the daemon (host root) never
# writes there on a sandbox's behalf, whatever the sandbox's mount table says.
_PSEUDO_FS = {
    0x9FA0,  # proc
    0x62656572,  # sysfs
    0x27E0EB,  # cgroup
    0x63677270,  # cgroup2
    0x1CD1,  # devpts
    0x19800202,  # mqueue
    0x73636673,  # securityfs
    0x64626720,  # debugfs
    0xCAFE4A11,  # bpf
    0x74726163,  # tracefs
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


class NotRegular(OSError):
    """The path names something other than a regular file (a FIFO, a device...)."""


class TooLarge(OSError):
    """A file is larger than the caller lets into memory."""


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = IN_ROOT) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)  # a name that is not UTF-8 comes as surrogate escapes
    while True:
        fd = _libc.syscall(_SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a rename raced the lookup (the kernel's own retry signal).
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)


def open_trusted_dir(path: str | os.PathLike[str]) -> int:
    """An O_PATH fd on a directory whose path the daemon itself made (its state and
    runtime dirs). The last component is not followed."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def reopen(pathfd: int, flags: int) -> int:
    """Opens, for I/O, the very inode an O_PATH fd holds (no path is looked up again)."""
    return os.open(f"/proc/self/fd/{pathfd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def fs_type(fd: int) -> int:
    buf = _StatFs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type) & 0xFFFFFFFF


def is_pseudo_fs(fd: int) -> bool:
    return fs_type(fd) in _PSEUDO_FS


def chmod_fd(pathfd: int, mode: int) -> None:
    """fchmod for an O_PATH fd (which fchmod itself refuses): through our own fd link."""
    os.chmod(f"/proc/self/fd/{pathfd}", mode)


def chmod_at(dirfd: int, name: str, mode: int) -> None:
    """Changes the mode of dirfd/name without following a link there. A symlink is
    refused: on Linux a symlink's own mode means nothing, and chmod would follow it."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "refusing to chmod a symlink", name)
        chmod_fd(fd, mode)
    finally:
        os.close(fd)


class Tree:
    """A tree the daemon does not trust, held by an fd on its root."""

    def __init__(self, root_fd: int, resolve: int = IN_ROOT, owner: tuple[int, int] = (0, 0)):
        self.fd = root_fd
        self.resolve = resolve
        # Who files the daemon creates belong to (the sandbox's root, on the host).
        self.owner = owner

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, root: str | os.PathLike[str], resolve: int = IN_ROOT, owner: tuple[int, int] = (0, 0)
    ) -> Iterator[Tree]:
        fd = open_trusted_dir(root)
        try:
            yield cls(fd, resolve, owner)
        finally:
            os.close(fd)

    def open_at(self, path: str, flags: int, mode: int = 0) -> int:
        return openat2(self.fd, path, flags, mode, self.resolve)

    def lookup(self, path: str) -> int:
        """An O_PATH fd on path; a final symlink is resolved (inside the tree)."""
        return self.open_at(path, os.O_PATH)

    def lookup_dir(self, path: str) -> int:
        return self.open_at(path, os.O_PATH | os.O_DIRECTORY)

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """(fd of path's parent directory, final name): for *at calls on the name
        itself, which then never follow it."""
        head, name = posixpath.split(path.rstrip("/") or "/")
        if not name or name in (".", ".."):
            raise OSError(errno.EINVAL, "no parent to act in", path)
        pfd = self.lookup_dir(head or "/")
        try:
            yield pfd, name
        finally:
            os.close(pfd)

    def open_regular(self, path: str, flags: int) -> int:
        """An fd for I/O on path, which must be a regular file. Nothing else is
        opened for real: a FIFO would block, a device would run its driver."""
        pfd = self.lookup(path)
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(errno.EINVAL, "not a regular file", path)
            if is_pseudo_fs(pfd):  # /proc/N/mem is "regular" too
                raise PermissionError(errno.EPERM, "a kernel interface, not a file", path)
            return reopen(pfd, flags)
        finally:
            os.close(pfd)

    def read_bounded(self, path: str, limit: int) -> bytes:
        """The whole of a regular file, refused when it is larger than limit."""
        fd = self.open_regular(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = b""
            while len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    return data
                data += chunk
            raise TooLarge(errno.EFBIG, f"larger than {limit} bytes", path)
        finally:
            os.close(fd)

    def mkdirs(self, path: str, mode: int = 0o755) -> None:
        """mkdir -p, each component made in its parent's fd and given to the owner."""
        comps = [c for c in path.split("/") if c]
        for i in range(len(comps)):
            sub = "/" + "/".join(comps[: i + 1])
            try:
                os.close(self.lookup_dir(sub))
                continue
            except FileNotFoundError:
                pass
            with self.parent(sub) as (pfd, name), contextlib.suppress(FileExistsError):
                self.mkdir_at(pfd, name, mode)

    def mkdir_at(self, pfd: int, name: str, mode: int) -> None:
        if is_pseudo_fs(pfd):
            raise PermissionError(errno.EPERM, "a kernel interface, not a directory", name)
        os.mkdir(name, mode, dir_fd=pfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.fchown(fd, *self.owner)
            os.fchmod(fd, mode)  # what the umask took away
        finally:
            os.close(fd)

    def create_temp(self, pfd: int, name: str, mode: int) -> tuple[int, str]:
        """A new, empty file in directory pfd, to be put in place of name once
        complete (commit_temp). Owner and mode are set on the fd before any data
        goes in. Where the filesystem can, the file has no name until then
        (O_TMPFILE), so a crash leaves nothing behind; the name returned is then
        empty."""
        if is_pseudo_fs(pfd):
            raise PermissionError(errno.EPERM, "a kernel interface, not a directory", name)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            tmp = ""
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd, tmp = self._named_temp(pfd, name)
        try:
            os.fchown(fd, *self.owner)
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            if tmp:
                os.unlink(tmp, dir_fd=pfd)
            raise
        return fd, tmp

    @staticmethod
    def _named_temp(pfd: int, name: str) -> tuple[int, str]:
        for _ in range(8):
            tmp = temp_name(name)
            try:
                return create_at(pfd, tmp), tmp
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, "no free temporary name", name)


def create_at(pfd: int, name: str) -> int:
    """A new file pfd/name, for writing, 0600 until its owner sets more: O_EXCL and
    O_NOFOLLOW, so nothing that was there (a link planted meanwhile) is written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, 0o600, dir_fd=pfd)


def temp_name(name: str) -> str:
    return f".{name[:200]}.computesdk-{secrets.token_hex(6)}"


def commit_temp(pfd: int, fd: int, tmp: str, name: str) -> None:
    """Puts a file from create_temp in place of pfd/name, atomically: rename(2)
    over the old one. An unnamed file is first linked in under a temporary name."""
    if not tmp:
        tmp = temp_name(name)
        link_at(fd, pfd, tmp)
    try:
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=pfd)
        raise


MAX_DEPTH = 512


def remove_tree(dirfd: int, name: str, depth: int = 0, dev: int = -1) -> None:
    """rm -r of dirfd/name, fd by fd: no link is followed, nothing but directories
    is opened (O_DIRECTORY fails at once on a FIFO swapped in), and what is swapped
    meanwhile is only ever unlinked, never entered. It never enters another
    filesystem (a mount still there fails with EBUSY, its content untouched)."""
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dirfd,
        )
    except NotADirectoryError:
        os.unlink(name, dir_fd=dirfd)
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # ELOOP: a symlink, unlinked like a file
            raise
        os.unlink(name, dir_fd=dirfd)
        return
    try:
        if is_pseudo_fs(fd):
            raise PermissionError(errno.EPERM, "a kernel interface, not a directory", name)
        here = os.fstat(fd).st_dev
        if dev >= 0 and here != dev:
            raise OSError(errno.EBUSY, "a mount point: not entered", name)
        with os.scandir(fd) as entries:
            names = [e.name for e in entries]
        if names and depth >= MAX_DEPTH:
            raise OSError(errno.ELOOP, f"more than {MAX_DEPTH} levels deep", name)
        for child in names:
            remove_tree(fd, child, depth + 1, here)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


def copy_owner_mode(fd: int, st: os.stat_result) -> None:
    """Gives a replacement file the owner and mode of the one it replaces."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


_AT_EMPTY_PATH = 0x1000


def link_at(fd: int, dirfd: int, name: str) -> None:
    """A hardlink at dirfd/name to the very inode fd holds (an O_PATH fd, e.g. from
    openat2 with NO_LINKS and O_NOFOLLOW): linkat(2) with AT_EMPTY_PATH, so no path
    is looked up again and a symlink is linked, never followed."""
    if _libc.linkat(fd, b"", dirfd, os.fsencode(name), _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def remove_dir(path: str | os.PathLike[str]) -> None:
    """rm -rf of a directory the daemon made (a bundle, a runtime dir), through
    remove_tree: a mount left inside stops it rather than being emptied."""
    head, name = os.path.split(os.fspath(path).rstrip("/"))
    try:
        parent = open_trusted_dir(head or "/")
    except FileNotFoundError:
        return
    try:
        remove_tree(parent, name)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)
