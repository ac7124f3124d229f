"""The file API of a local sandbox: what its processes see, from the host side.

The root is the sandbox's own `/` in its own mount namespace (an fd on
/proc/<init>/root), so volumes, read-only mounts and everything else in the
sandbox's mount table are served as the sandbox sees them. Every access goes
through safefs: openat2 with RESOLVE_IN_ROOT (a symlink planted inside resolves
inside), *at calls on the parent's fd, and regular files only (a FIFO or a
device is refused, never opened). Paths arrive normalised (providers/paths.py).

Writes are atomic: the data goes to a new file beside the target, which is
renamed over it once complete, so a crash or a cancelled stream leaves the old
file or the new one, never a mix. Files the daemon creates belong to the
sandbox's root user.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import AsyncIterator, Callable, Iterator

from computesdkd.domain.errors import (
    AlreadyExists,
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from computesdkd.domain.model import FileInfo, FileKind
from computesdkd.providers.local import idmap, safefs
from computesdkd.providers.local.rootfs import UID_SHIFT

CHUNK = 256 * 1024
MAX_ENTRIES = 100_000  # a ListDirectory answer is held in memory
MAX_LINKS = 40  # as the kernel's own limit on nested symlinks


def _os_error(exc: OSError, path: str) -> ComputeError:
    e = exc.errno
    if isinstance(exc, safefs.NotRegular):
        return FailedPrecondition(
            f"{path}: not a regular file (a FIFO, socket or device is not served)",
            reason="NOT_A_REGULAR_FILE",
            path=path,
        )
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
    if e == errno.EROFS:
        return FailedPrecondition(
            f"{path}: on a read-only mount", reason="READ_ONLY_FILESYSTEM", path=path
        )
    if e == errno.EXDEV:
        return FailedPrecondition(
            f"{path}: cannot be moved to another mount (a volume)",
            reason="CROSS_DEVICE_MOVE",
            path=path,
        )
    if e == errno.ELOOP:
        return InvalidArgument(
            f"{path}: cannot be resolved inside the sandbox",
            reason="PATH_OUTSIDE_SANDBOX",
            path=path,
        )
    if e in (errno.EACCES, errno.EPERM):
        return FailedPrecondition(
            f"{path}: permission denied", reason="PERMISSION_DENIED", path=path
        )
    if e == errno.EBUSY:
        return FailedPrecondition(f"{path}: a mount point", reason="PATH_BUSY", path=path)
    return Internal(f"{path}: {exc.strerror}")


@contextlib.contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _os_error(exc, path) from exc


def _kind(mode: int) -> FileKind:
    if stat.S_ISREG(mode):
        return FileKind.FILE
    if stat.S_ISDIR(mode):
        return FileKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return FileKind.SYMLINK
    return FileKind.OTHER


def _info(path: str, st: os.stat_result, link: str = "") -> FileInfo:
    return FileInfo(
        posixpath.basename(path) or "/",
        path,
        _kind(st.st_mode),
        st.st_size,
        stat.S_IMODE(st.st_mode),
        st.st_mtime,
        link,
    )


class SandboxFS:
    """open_root gives a new O_PATH fd on the sandbox's root for each operation.
    uid: the sandbox's root on the host. Each operation runs as it (filesystem ids
    only, capabilities kept), so what the daemon creates belongs to the sandbox,
    through the idmapped layers as the sandbox's own writes do."""

    def __init__(self, open_root: Callable[[], int], uid: int = UID_SHIFT):
        self._open_root = open_root
        self._uid = uid

    @contextlib.contextmanager
    def _tree(self) -> Iterator[safefs.Tree]:
        with idmap.acting_as(self._uid):
            fd = self._open_root()
            try:
                yield safefs.Tree(fd, safefs.IN_ROOT, (self._uid, self._uid))
            finally:
                os.close(fd)

    # ----------------------------------------------------------- operations

    def stat_sync(self, path: str) -> FileInfo:
        with _errors(path), self._tree() as tree:
            if path == "/":
                return _info(path, os.fstat(tree.fd))
            with tree.parent(path) as (pfd, name):
                if safefs.is_pseudo_fs(pfd):  # /proc/1/exe and the like tell too much
                    raise PermissionError(errno.EPERM, "a kernel interface", path)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                link = os.readlink(name, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else ""
                return _info(path, st, link)

    def list_sync(self, path: str) -> list[FileInfo]:
        with _errors(path), self._tree() as tree:
            fd = tree.open_at(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
            try:
                if safefs.is_pseudo_fs(fd):
                    raise PermissionError(errno.EPERM, "a kernel interface", path)
                out: list[FileInfo] = []
                with os.scandir(fd) as it:
                    for entry in it:
                        if len(out) >= MAX_ENTRIES:
                            raise ResourceExhausted(
                                f"{path} holds more than {MAX_ENTRIES} entries",
                                reason="DIRECTORY_TOO_LARGE",
                                path=path,
                            )
                        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                            st = entry.stat(follow_symlinks=False)
                            link = os.readlink(entry.name, dir_fd=fd) if entry.is_symlink() else ""
                            out.append(_info(posixpath.join(path, entry.name), st, link))
                return sorted(out, key=lambda f: f.name)
            finally:
                os.close(fd)

    def mkdir_sync(self, path: str, parents: bool) -> FileInfo:
        with _errors(path), self._tree() as tree:
            if parents:
                tree.mkdirs(path)
            else:
                with tree.parent(path) as (pfd, name):
                    tree.mkdir_at(pfd, name, 0o755)
        return self.stat_sync(path)

    def remove_sync(self, path: str, recursive: bool) -> None:
        with _errors(path), self._tree() as tree, tree.parent(path) as (pfd, name):
            if safefs.is_pseudo_fs(pfd):
                raise PermissionError(errno.EPERM, "a kernel interface", path)
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=pfd)
            elif recursive:
                safefs.remove_tree(pfd, name)
            else:
                os.rmdir(name, dir_fd=pfd)

    def move_sync(self, source: str, destination: str) -> FileInfo:
        with (
            _errors(source),
            self._tree() as tree,
            tree.parent(source) as (sfd, sname),
            tree.parent(destination) as (dfd, dname),
        ):
            if safefs.is_pseudo_fs(sfd) or safefs.is_pseudo_fs(dfd):
                raise PermissionError(errno.EPERM, "a kernel interface", source)
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        return self.stat_sync(destination)

    async def read(self, path: str, offset: int, length: int) -> AsyncIterator[bytes]:
        def open_file() -> int:
            with _errors(path), self._tree() as tree:
                return tree.open_regular(path, os.O_RDONLY | os.O_NONBLOCK)

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
        target = await asyncio.to_thread(self._open_for_write, path, mode, parents, append)
        written = 0
        done = False
        try:
            async for data in chunks:
                await asyncio.to_thread(_write_all, target.fd, data, path)
                written += len(data)
            done = True
        finally:
            # One hop to a worker: put in place (or cut back), close, describe.
            info = await asyncio.to_thread(self._finish, target, done)
        assert info is not None
        return info, written

    def _finish(self, target: _Target, commit: bool) -> FileInfo | None:
        with idmap.acting_as(self._uid):
            try:
                if commit:
                    target.commit()
            finally:
                target.abort()
        return self.stat_sync(target.path) if commit else None

    def _open_for_write(self, path: str, mode: int, parents: bool, append: bool) -> _Target:
        with _errors(path), self._tree() as tree:
            parent = posixpath.dirname(path)
            if parents and parent != "/":
                tree.mkdirs(parent)
            path = self._final(tree, path)
            with tree.parent(path) as (pfd, name):
                try:
                    st: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                if append and st is not None:
                    # Appending adds to the file in place; a write cut short is cut
                    # back to where it began. It must be a regular file.
                    fd = tree.open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
                    return _Target(path, fd, -1, "", "", appended_at=os.fstat(fd).st_size)
                return _Target.new(tree, pfd, name, path, mode or 0o644, st)

    def _final(self, tree: safefs.Tree, path: str) -> str:
        """path with a final symlink followed (inside the sandbox), so that a write
        replaces the file the link names, as `echo > link` would."""
        for _ in range(MAX_LINKS):
            with tree.parent(path) as (pfd, name):
                try:
                    target = os.readlink(name, dir_fd=pfd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINVAL):  # none, or not a link
                        return path
                    raise
            if not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(path), target)
            path = posixpath.normpath("/" + target.lstrip("/"))
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)


class _Target:
    """A file being written: a new file in the target's directory (unnamed where
    the filesystem allows), put in place of the target at commit; or, for
    appends, the file itself (dirfd -1)."""

    def __init__(
        self, path: str, fd: int, dirfd: int, name: str, tmp: str, appended_at: int = -1
    ) -> None:
        self.path, self.fd, self.dirfd, self.name, self.tmp = path, fd, dirfd, name, tmp
        self.appended_at = appended_at  # an append: the size the file had before it
        self._done = False

    @classmethod
    def new(
        cls,
        tree: safefs.Tree,
        pfd: int,
        name: str,
        path: str,
        mode: int,
        old: os.stat_result | None,
    ) -> _Target:
        dirfd = os.dup(pfd)
        try:
            fd, tmp = tree.create_temp(dirfd, name, mode)
            if old is not None and stat.S_ISREG(old.st_mode):
                safefs.copy_owner_mode(fd, old)  # a rewrite keeps who owns it
        except BaseException:
            os.close(dirfd)
            raise
        return cls(path, fd, dirfd, name, tmp)

    def commit(self) -> None:
        with _errors(self.path):
            if self.dirfd >= 0:  # a replacement, not an append
                safefs.commit_temp(self.dirfd, self.fd, self.tmp, self.name)
            self._done = True

    def abort(self) -> None:
        """Closes everything; a temporary that was never committed is removed."""
        if self.tmp and not self._done:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.dirfd)
        if self.appended_at >= 0 and not self._done:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.appended_at)
        os.close(self.fd)
        if self.dirfd >= 0:
            os.close(self.dirfd)
        self.fd = self.dirfd = -1
        self.tmp = ""


def _write_all(fd: int, data: bytes, path: str) -> None:
    with _errors(path):
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
