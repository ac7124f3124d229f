"""File access inside a sandbox's root, from the host side, that cannot escape it.

Paths arrive normalised (providers/paths.py), so ".." that would climb above "/" is
refused outright. Every open then goes through openat2(2) with RESOLVE_IN_ROOT,
so symlinks planted by sandboxed code resolve inside the sandbox, never on the
host. Files the daemon creates belong to the sandbox's root user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import posixpath
import shutil
import stat
from collections.abc import AsyncIterator, Iterator

from ...errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from ...model import FileInfo, FileKind
from .rootfs import UID_SHIFT

_SYS_OPENAT2 = 437  # x86_64 and aarch64
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CHUNK = 256 * 1024


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _os_error(exc: OSError, path: str) -> ComputeError:
    e = exc.errno
    if e == errno.ENOENT:
        return NotFound(f"{path}: no such file or directory", reason="FILE_NOT_FOUND", path=path)
    if e == errno.EEXIST:
        return AlreadyExists(f"{path}: already exists", reason="FILE_EXISTS", path=path)
    if e == errno.ENOTDIR:
        return FailedPrecondition(f"{path}: not a directory", reason="NOT_A_DIRECTORY", path=path)
    if e == errno.EISDIR:
        return FailedPrecondition(f"{path}: is a directory", reason="IS_A_DIRECTORY", path=path)
    if e == errno.ENOTEMPTY:
        return FailedPrecondition(
            f"{path}: directory not empty", reason="DIRECTORY_NOT_EMPTY", path=path
        )
    if e in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted("the sandbox's disk is full", reason="DISK_FULL", path=path)
    if e in (errno.ELOOP, errno.EXDEV):
        return InvalidArgument(
            f"{path}: cannot be resolved inside the sandbox",
            reason="PATH_OUTSIDE_SANDBOX",
            path=path,
        )
    if e in (errno.EACCES, errno.EPERM):
        return FailedPrecondition(
            f"{path}: permission denied", reason="PERMISSION_DENIED", path=path
        )
    return Internal(f"{path}: {exc.strerror}")


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _os_error(exc, path) from exc


class SandboxFS:
    def __init__(self, rootfs: str) -> None:
        self.rootfs = rootfs

    # ----------------------------------------------------------- primitives

    def _root(self) -> int:
        return os.open(self.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _open(self, root: int, path: str, flags: int, mode: int = 0) -> int:
        how = _OpenHow(
            flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
        )
        fd = _libc.syscall(_SYS_OPENAT2, root, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(fd)

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """Yields (fd of the parent directory, final name)."""
        parent, name = posixpath.split(path)
        if not name:
            raise InvalidArgument(
                "the sandbox root itself cannot be changed", reason="INVALID_PATH"
            )
        root = self._root()
        try:
            pfd = self._open(root, parent, os.O_PATH | os.O_DIRECTORY)
        finally:
            os.close(root)
        try:
            yield pfd, name
        finally:
            os.close(pfd)

    def _info(self, path: str, st: os.stat_result, link: str = "") -> FileInfo:
        if stat.S_ISREG(st.st_mode):
            kind = FileKind.FILE
        elif stat.S_ISDIR(st.st_mode):
            kind = FileKind.DIRECTORY
        elif stat.S_ISLNK(st.st_mode):
            kind = FileKind.SYMLINK
        else:
            kind = FileKind.OTHER
        return FileInfo(
            posixpath.basename(path) or "/",
            path,
            kind,
            st.st_size,
            stat.S_IMODE(st.st_mode),
            st.st_mtime,
            link,
        )

    def _mkdirs(self, path: str) -> None:
        root = self._root()
        try:
            comps = [c for c in path.split("/") if c]
            for i in range(len(comps)):
                sub = "/" + "/".join(comps[: i + 1])
                try:
                    os.close(self._open(root, sub, os.O_PATH | os.O_DIRECTORY))
                    continue
                except FileNotFoundError:
                    pass
                with self._parent(sub) as (pfd, name), contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=pfd)
                    os.chown(name, UID_SHIFT, UID_SHIFT, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(root)

    # ----------------------------------------------------------- operations

    def stat_sync(self, path: str) -> FileInfo:
        with _errors(path):
            if path == "/":
                root = self._root()
                try:
                    return self._info(path, os.fstat(root))
                finally:
                    os.close(root)
            with self._parent(path) as (pfd, name):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                link = os.readlink(name, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else ""
                return self._info(path, st, link)

    def list_sync(self, path: str) -> list[FileInfo]:
        with _errors(path):
            root = self._root()
            try:
                fd = self._open(root, path, os.O_RDONLY | os.O_DIRECTORY)
            finally:
                os.close(root)
            try:
                out = []
                with os.scandir(fd) as it:
                    for entry in it:
                        st = entry.stat(follow_symlinks=False)
                        link = os.readlink(entry.name, dir_fd=fd) if entry.is_symlink() else ""
                        out.append(self._info(posixpath.join(path, entry.name), st, link))
                return sorted(out, key=lambda f: f.name)
            finally:
                os.close(fd)

    def mkdir_sync(self, path: str, parents: bool) -> FileInfo:
        with _errors(path):
            if parents:
                self._mkdirs(path)
            else:
                with self._parent(path) as (pfd, name):
                    os.mkdir(name, 0o755, dir_fd=pfd)
                    os.chown(name, UID_SHIFT, UID_SHIFT, dir_fd=pfd, follow_symlinks=False)
        return self.stat_sync(path)

    def remove_sync(self, path: str, recursive: bool) -> None:
        with _errors(path), self._parent(path) as (pfd, name):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if recursive:
                    shutil.rmtree(name, dir_fd=pfd)
                else:
                    os.rmdir(name, dir_fd=pfd)
            else:
                os.unlink(name, dir_fd=pfd)

    def move_sync(self, source: str, destination: str) -> FileInfo:
        with (
            _errors(source),
            self._parent(source) as (sfd, sname),
            self._parent(destination) as (dfd, dname),
        ):
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        return self.stat_sync(destination)

    async def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        def open_file() -> int:
            with _errors(path):
                root = self._root()
                try:
                    fd = self._open(root, path, os.O_RDONLY)
                finally:
                    os.close(root)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise _os_error(OSError(errno.EISDIR, "is a directory"), path)
                return fd

        fd = await asyncio.to_thread(open_file)
        try:
            pos, remaining = offset, length if length > 0 else -1
            while remaining != 0:
                n = CHUNK if remaining < 0 else min(CHUNK, remaining)
                data = await asyncio.to_thread(os.pread, fd, n, pos)
                if not data:
                    return
                pos += len(data)
                if remaining > 0:
                    remaining -= len(data)
                yield data
        finally:
            os.close(fd)

    async def write(
        self, path: str, chunks: AsyncIterator[bytes], mode: int, parents: bool, append: bool
    ) -> tuple[FileInfo, int]:
        def open_file() -> int:
            with _errors(path):
                parent = posixpath.dirname(path)
                if parents and parent != "/":
                    self._mkdirs(parent)
                root = self._root()
                try:
                    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
                    fd = self._open(root, path, flags, mode or 0o644)
                finally:
                    os.close(root)
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise _os_error(OSError(errno.EISDIR, "is a directory"), path)
                if st.st_uid < UID_SHIFT:  # new file: give it to the sandbox's root
                    os.fchown(fd, UID_SHIFT, UID_SHIFT)
                return fd

        def write_all(fd: int, data: bytes) -> None:
            with _errors(path):
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]

        fd = await asyncio.to_thread(open_file)
        written = 0
        try:
            async for data in chunks:
                await asyncio.to_thread(write_all, fd, data)
                written += len(data)
        finally:
            os.close(fd)
        return await asyncio.to_thread(self.stat_sync, path), written
