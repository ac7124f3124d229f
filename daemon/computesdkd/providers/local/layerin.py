"""Extracting a tar layer (the format: layers.py) into an overlay upper dir.

An image or an archive is written by someone else, and the tree being written
may hold whatever an earlier entry planted there. Each entry's parent is
resolved from the layer's root with NO_LINKS; files are created O_EXCL |
O_NOFOLLOW after whatever was there is unlinked; symlinks are made with
symlinkat and never followed; owners and modes are set on fds."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from computesdkd.domain.errors import InvalidArgument, ResourceExhausted
from computesdkd.providers.local import safefs
from computesdkd.providers.local.layers import (
    CHUNK,
    OPAQUE,
    OPAQUE_XATTR,
    WHITEOUT,
    BoundedTarInfo,
)
from computesdkd.providers.local.rootfs import ID_RANGE, UID_SHIFT


def _corrupt(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"archive entry {name!r} {why}", reason="ARCHIVE_CORRUPT")


def _shift(i: int, shift: int) -> int:
    return shift + min(max(i, 0), ID_RANGE - 1)


def _safe(name: str) -> str:
    norm = posixpath.normpath(name)
    if (
        not name
        or "\0" in name
        or norm.startswith(("/", "../"))
        or norm == ".."
        or "/../" in f"/{norm}/"
    ):
        raise _corrupt(name, "leaves the layer")
    return norm


_ENTRY_ERRORS = (errno.EFBIG, errno.ENAMETOOLONG, errno.EMLINK, errno.EINVAL, errno.EEXIST)


def read_layer(
    layer: Path, upper: Path, *, skip_devices: bool = False, shift: int = UID_SHIFT
) -> None:
    """Extracts an OCI-style tar layer (plain or gzip) into an empty overlay upper
    directory. skip_devices drops device nodes (an image's /dev is never used:
    sandboxes get a fresh one) instead of refusing the layer; no device node but
    a whiteout is ever made."""
    try:
        with (
            tarfile.open(layer, mode="r:*", tarinfo=BoundedTarInfo) as tar,
            safefs.Tree.open(upper, safefs.NO_LINKS) as root,
        ):
            x = _Extractor(tar, root.fd, skip_devices, shift)
            for info in tar:
                x.entry(info)
            x.finish()
    except (
        tarfile.TarError,
        EOFError,
        zlib.error,
        ValueError,
        UnicodeError,
        OverflowError,
    ) as exc:
        raise InvalidArgument(
            f"not a valid layer: {type(exc).__name__}: {exc}", reason="ARCHIVE_CORRUPT"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                "no space left to unpack the layer", reason="DISK_FULL"
            ) from exc
        if exc.errno in _ENTRY_ERRORS:  # what the entry asked for cannot be made
            raise InvalidArgument(
                f"not a valid layer: {exc.filename!r}: {exc.strerror}", reason="ARCHIVE_CORRUPT"
            ) from exc
        raise


class _Extractor:
    def __init__(self, tar: tarfile.TarFile, root: int, skip_devices: bool, shift: int) -> None:
        self.tar = tar
        self.root = root
        self.skip_devices = skip_devices
        self.shift = shift
        self.dirs: list[tuple[str, float]] = []  # mtimes, set once their contents are in

    def entry(self, info: tarfile.TarInfo) -> None:
        name = _safe(info.name)
        if name == ".":
            return  # the layer's root: the upper dir itself
        head, base = posixpath.split(name)
        if base == OPAQUE:
            with self._parent(name, head) as pfd:
                dfd = safefs.reopen(pfd, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.setxattr(dfd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(dfd)
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # aufs metadata (.wh..wh.plnk and the like): nothing to apply
        if base.startswith(WHITEOUT):
            target = base[len(WHITEOUT) :]
            if target in ("", ".", ".."):
                raise _corrupt(name, "whites out nothing")
            with self._parent(name, head) as pfd:
                _remove(pfd, target)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            return
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk() or info.isfifo()):
            if self.skip_devices:
                return
            raise _corrupt(name, "is a device")
        uid, gid = _shift(info.uid, self.shift), _shift(info.gid, self.shift)
        mode = info.mode & 0o7777
        mtime = min(max(float(info.mtime), 0.0), 2.0**34)
        with self._parent(name, head) as pfd:
            if info.isdir():
                self._dir(pfd, base, uid, gid, mode)
                self.dirs.append((name, mtime))
                return
            if info.islnk():
                # Resolved before anything at the link's own name is removed.
                source = self._link_source(name, info.linkname)
                try:
                    _remove(pfd, base)
                    safefs.link_at(source, pfd, base)
                except FileNotFoundError as exc:  # the source went with what it replaced
                    raise _corrupt(name, f"links to {info.linkname!r}, which it replaces") from exc
                finally:
                    os.close(source)
                return
            _remove(pfd, base)
            if info.issym():
                os.symlink(info.linkname, base, dir_fd=pfd)
                os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
                os.utime(base, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            elif info.isfifo():
                os.mkfifo(base, 0o600, dir_fd=pfd)
                os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
                safefs.chmod_at(pfd, base, mode)
                os.utime(base, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            else:
                self._file(pfd, base, info, (uid, gid, mode), mtime)

    @contextlib.contextmanager
    def _parent(self, name: str, head: str) -> Iterator[int]:
        """An O_PATH fd on the entry's parent, made (owned by the sandbox's root)
        where missing; a symlink or a file on the way refuses the entry."""
        fd = os.dup(self.root)
        try:
            for comp in head.split("/") if head else []:
                try:
                    sub = safefs.openat2(
                        fd, comp, os.O_PATH | os.O_DIRECTORY, resolve=safefs.NO_LINKS
                    )
                except FileNotFoundError:
                    self._dir(fd, comp, self.shift, self.shift, 0o755)
                    sub = safefs.openat2(
                        fd, comp, os.O_PATH | os.O_DIRECTORY, resolve=safefs.NO_LINKS
                    )
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                        raise _corrupt(name, "goes through a symlink or a file") from exc
                    raise
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _dir(self, pfd: int, base: str, uid: int, gid: int, mode: int) -> None:
        """A real directory at pfd/base (what else is there is removed), with owner
        and mode set on its fd."""
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            _remove(pfd, base)
            st = None
        if st is None:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _link_source(self, name: str, linkname: str) -> int:
        target = _safe(linkname)
        try:
            fd = safefs.openat2(
                self.root, target, os.O_PATH | os.O_NOFOLLOW, resolve=safefs.NO_LINKS
            )
        except OSError as exc:
            raise _corrupt(name, f"links to {linkname!r}, which is not in the layer") from exc
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            os.close(fd)
            raise _corrupt(name, f"links to {linkname!r}, which is not a file")
        return fd

    def _file(
        self, pfd: int, base: str, info: tarfile.TarInfo, attrs: tuple[int, int, int], mtime: float
    ) -> None:
        uid, gid, mode = attrs
        fd = safefs.create_at(pfd, base)
        try:
            os.fchown(fd, uid, gid)
            src = self.tar.extractfile(info)
            if src is None:
                raise _corrupt(info.name, "has no data")
            # A sparse entry's holes are skipped, not written: they stay holes.
            sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
            for off, n in sparse if sparse is not None else [(0, info.size)]:
                if n:
                    src.seek(off)
                    _copy(src, fd, off, n, info.name)
            os.ftruncate(fd, info.size)
            os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)

    def finish(self) -> None:
        for name, mtime in reversed(self.dirs):
            try:
                fd = safefs.openat2(
                    self.root, name, os.O_RDONLY | os.O_DIRECTORY, resolve=safefs.NO_LINKS
                )
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def _remove(pfd: int, name: str) -> None:
    """Whatever is at pfd/name goes (a directory with its contents), unfollowed."""
    with contextlib.suppress(FileNotFoundError):
        safefs.remove_tree(pfd, name)


def _copy(src: IO[bytes], fd: int, off: int, n: int, name: str) -> None:
    while n > 0:
        data = src.read(min(CHUNK, n))
        if not data:
            raise _corrupt(name, "is truncated")
        view = memoryview(data)
        while view:
            done = os.pwrite(fd, view, off)
            view = view[done:]
            off += done
        n -= len(data)
