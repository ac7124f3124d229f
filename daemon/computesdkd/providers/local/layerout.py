"""Writing an overlay upper layer as a tar layer (the format: layers.py), fd by
fd and following no symlink: every file is opened O_PATH and only a regular
one is reopened for reading, so a FIFO or a device in the tree never blocks the
export."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from computesdkd.providers.local import safefs
from computesdkd.providers.local.layers import (
    CHUNK,
    MAX_SPARSE_SEGMENTS,
    OPAQUE,
    OPAQUE_XATTR,
    WHITEOUT,
)
from computesdkd.providers.local.rootfs import ID_RANGE, UID_SHIFT

# Holes smaller than this are written as data (doubled as needed), so that a
# sparse map never has more than MAX_SPARSE_SEGMENTS segments.
MIN_HOLE = 64 * 1024
# Past this stored size a ustar header needs a pax "size", which tarfile's
# reader applies after GNU.sparse.realsize: such files are written whole.
MAX_SPARSE_STORED = 0o77777777777


def _unshift(i: int, shift: int) -> int:
    return i - shift if shift <= i < shift + ID_RANGE else 0


def write_layer(upper: Path, out: BinaryIO, *, shift: int = UID_SHIFT) -> None:
    """Writes the upper layer as an OCI-style tar to out (a stream)."""
    with (
        safefs.Tree.open(upper, safefs.NO_LINKS) as root,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        w = _Writer(tar, shift)
        stack = [""]
        while stack:
            rel = stack.pop()
            dfd = safefs.openat2(
                root.fd, rel or ".", os.O_RDONLY | os.O_DIRECTORY, resolve=safefs.NO_LINKS
            )
            try:
                with os.scandir(dfd) as it:
                    entries = sorted((not e.is_dir(follow_symlinks=False), e.name) for e in it)
                subdirs = []
                for _, name in entries:
                    arc = f"{rel}/{name}" if rel else name
                    if w.add(dfd, name, arc):
                        subdirs.append(arc)
            finally:
                os.close(dfd)
            stack.extend(reversed(subdirs))


class _Writer:
    def __init__(self, tar: tarfile.TarFile, shift: int) -> None:
        self.tar = tar
        self.shift = shift
        self.links: dict[tuple[int, int], str] = {}

    def add(self, dfd: int, name: str, arc: str) -> bool:
        """Writes dfd/name as arc; True when it is a directory to descend into."""
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                # An overlay whiteout: the base's file was deleted.
                self.tar.addfile(_plain(posixpath.join(posixpath.dirname(arc), WHITEOUT + name)))
                return False
            if stat.S_ISSOCK(mode):
                return False  # tar has no sockets; nothing can use one from an archive
            info = tarfile.TarInfo(arc)
            info.mode = stat.S_IMODE(mode)
            info.uid, info.gid = _unshift(st.st_uid, self.shift), _unshift(st.st_gid, self.shift)
            info.mtime = st.st_mtime
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                self.tar.addfile(info)
                with contextlib.suppress(OSError):
                    if os.getxattr(f"/proc/self/fd/{fd}", OPAQUE_XATTR) == b"y":
                        self.tar.addfile(_plain(posixpath.join(arc, OPAQUE)))
                return True
            if stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(name, dir_fd=dfd)
                self.tar.addfile(info)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in self.links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = self.links[key]
                    self.tar.addfile(info)
                    return False
                if st.st_nlink > 1:
                    self.links[key] = arc
                rfd = safefs.reopen(fd, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    self._regular(info, rfd, st.st_size)
                finally:
                    os.close(rfd)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                self.tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self.tar.addfile(info)
            return False
        finally:
            os.close(fd)

    def _regular(self, info: tarfile.TarInfo, fd: int, size: int) -> None:
        segments = data_map(fd, size)
        stored = sum(n for _, n in segments)
        if stored == size:
            info.size = size
            self.tar.addfile(info, _Reader(_file_chunks(fd, [(0, size)])))
            return
        # GNU sparse 1.0: the map (count, then offset and size of each data
        # segment, in decimal lines, padded to a block) leads the data.
        if not segments or segments[-1][0] + segments[-1][1] < size:
            segments.append((size, 0))  # as GNU tar marks a trailing hole
        lines = [len(segments)] + [x for seg in segments for x in seg]
        head = "".join(f"{x}\n" for x in lines).encode()
        head += b"\0" * (-len(head) % tarfile.BLOCKSIZE)
        if len(head) + stored > MAX_SPARSE_STORED:
            info.size = size
            self.tar.addfile(info, _Reader(_file_chunks(fd, [(0, size)])))
            return
        real = info.name
        parent, base = posixpath.split(real)
        info.name = posixpath.join(parent, "GNUSparseFile.0", base)
        # "path" first: tarfile applies pax keys in order, and GNU.sparse.name
        # must win over the placeholder (which tarfile would add for a long name).
        info.pax_headers = {
            "path": info.name,
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": real,
            "GNU.sparse.realsize": str(size),
        }
        info.size = len(head) + stored
        self.tar.addfile(info, _Reader(_chain(head, _file_chunks(fd, segments))))


def _plain(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    return info


def data_map(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the file's data, by SEEK_DATA/SEEK_HOLE, holes smaller
    than MIN_HOLE (or more, to stay under MAX_SPARSE_SEGMENTS) counted as data."""
    raw: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                break
            if exc.errno == errno.EINVAL:  # a filesystem without SEEK_DATA
                return [(0, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        raw.append((start, end - start))
        pos = end
    min_hole = MIN_HOLE
    while True:
        merged: list[tuple[int, int]] = []
        for off, n in raw:
            if merged and off - sum(merged[-1]) < min_hole:
                merged[-1] = (merged[-1][0], off + n - merged[-1][0])
            else:
                merged.append((off, n))
        if len(merged) <= MAX_SPARSE_SEGMENTS:
            return merged
        min_hole *= 2


def _file_chunks(fd: int, segments: list[tuple[int, int]]) -> Iterator[bytes]:
    for off, n in segments:
        while n > 0:
            data = os.pread(fd, min(CHUNK, n), off)
            if not data:
                raise OSError(errno.EIO, "the file shrank while it was archived")
            yield data
            off += len(data)
            n -= len(data)


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


class _Reader:
    """A file-like read() over chunks: what tarfile.addfile copies from."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            chunk = next(self.chunks, b"")
            if not chunk:
                break
            self.buf += chunk
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
