"""An overlay upper layer to and from a portable tar layer.

The tar follows the OCI image layer conventions, so the layer means the same
thing anywhere: a deleted file is a `.wh.NAME` entry, an opaque directory holds
`.wh..wh..opq`, and owners are the sandbox's own ids (root is 0), not the
shifted host ids the upper layer stores. Hardlinks are tar hardlinks, and a
file with holes is a GNU sparse 1.0 entry (PAX), so a 1 GiB sparse file costs
its data, not 1 GiB.

Both directions go through safefs, fd by fd, and follow no symlink on the host:
an image or an archive is written by someone else, and the tree being written
may hold whatever an earlier entry planted there. Each entry's parent is
resolved from the layer's root with NO_LINKS; files are created O_EXCL |
O_NOFOLLOW after whatever was there is unlinked; symlinks are made with
symlinkat and never followed; owners and modes are set on fds. On the way out,
every file is opened O_PATH and only a regular one is reopened for reading, so
a FIFO or a device in the tree never blocks the export.
"""

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
from typing import IO, Any, BinaryIO

from computesdkd.domain.errors import InvalidArgument, ResourceExhausted
from computesdkd.providers.local import safefs
from computesdkd.providers.local.rootfs import ID_RANGE, UID_SHIFT

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
CHUNK = 1 << 20
# A pax extended header or a GNU long name is read whole into memory: capped.
MAX_META_BYTES = 1 << 20
# A sparse map is read into memory too. The writer merges holes smaller than
# MIN_HOLE (doubling it as needed) so that it never writes more segments.
MAX_SPARSE_SEGMENTS = 1 << 16
MIN_HOLE = 64 * 1024
# Past this stored size a ustar header needs a pax "size", which tarfile's
# reader applies after GNU.sparse.realsize: such files are written whole.
MAX_SPARSE_STORED = 0o77777777777
_nti: Any = getattr(tarfile, "nti")  # noqa: B009 - not in the stubs
_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


def _corrupt(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"archive entry {name!r} {why}", reason="ARCHIVE_CORRUPT")


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's reader, with what it takes into memory from the archive capped:
    pax headers, GNU long names and sparse maps."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and not 0 <= self.size <= MAX_META_BYTES:
            raise tarfile.ReadError(f"a {self.size}-byte extended header")
        return super()._proc_member(tf)  # type: ignore[misc,no-any-return]

    def _proc_sparse(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        fileobj: Any = tf.fileobj
        while isextended:
            if len(structs) > MAX_SPARSE_SEGMENTS:
                raise tarfile.ReadError("a sparse map of too many segments")
            buf = fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) < tarfile.BLOCKSIZE:
                raise tarfile.ReadError("a truncated sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset = _nti(buf[pos : pos + 12])
                    numbytes = _nti(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = fileobj.tell()
        tf.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], tf: tarfile.TarFile
    ) -> None:
        fileobj: Any = tf.fileobj
        buf = b""
        numbers: list[int] = []
        want = -1
        while want < 0 or len(numbers) < want:
            if b"\n" not in buf:
                if len(buf) > 40:
                    raise tarfile.ReadError("a bad sparse map")
                more = fileobj.read(tarfile.BLOCKSIZE)
                if not more:
                    raise tarfile.ReadError("a truncated sparse map")
                buf += more
                continue
            line, buf = buf.split(b"\n", 1)
            if not line.isdigit() or len(line) > 20:
                raise tarfile.ReadError("a bad sparse map")
            if want < 0:
                want = 2 * int(line)
                if want > 2 * MAX_SPARSE_SEGMENTS:
                    raise tarfile.ReadError("a sparse map of too many segments")
            else:
                numbers.append(int(line))
        next.offset_data = fileobj.tell()
        next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]


def _unshift(i: int, shift: int) -> int:
    return i - shift if shift <= i < shift + ID_RANGE else 0


def _shift(i: int, shift: int) -> int:
    return shift + min(max(i, 0), ID_RANGE - 1)


# ------------------------------------------------------------------ writing


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


# ------------------------------------------------------------------ reading


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
