"""`cp ID:SRC DST`: a sandbox's files onto the host, where the sandbox's content is
untrusted. Every name the sandbox lists must be one plain path component (no
`..`, no `/`, nothing absolute); directories are entered only through file
descriptors opened with O_NOFOLLOW, and files are opened O_NOFOLLOW in them, so no
write ever goes through a symlink, whether the sandbox's or one planted earlier in
the same copy. A symlink is copied as a symlink, never followed."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import IO, Protocol

from ._cli_common import CLIError
from .types import FileInfo

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo of that name fails (ENXIO) instead of hanging the copy.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Refused(CLIError):
    """An entry the copy will not write: it would leave the destination."""


class SandboxFiles(Protocol):
    """What a pull reads: sandbox.files, or a test's stand-in for a hostile one."""

    async def list(self, path: str) -> list[FileInfo]: ...

    def read_stream(self, path: str) -> AsyncIterator[bytes]: ...


def safe_name(name: str) -> str:
    """name, if it is one path component that stays where it is written."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise Refused(f"refusing the sandbox's entry {name!r}: it would leave the destination")
    return name


@contextlib.contextmanager
def opened_dir(name: str, parent: int | None) -> Iterator[int]:
    """A directory's fd, never through a symlink (parent None: the user's own path,
    which may be one)."""
    try:
        fd = (
            os.open(name, _DIR, dir_fd=parent)
            if parent is not None
            else os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and parent is not None:
            raise Refused(
                f"refusing to write through {name!r}: it is not a directory here"
            ) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def make_dir(name: str, parent: int, mode: int = 0o755) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode | 0o700, dir_fd=parent)


def make_link(target: str, name: str, parent: int) -> None:
    """A symlink, in place of a file or link of that name (never a directory)."""
    try:
        os.symlink(target, name, dir_fd=parent)
    except FileExistsError:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise Refused(f"refusing to replace the directory {name!r} with a symlink") from None
        os.unlink(name, dir_fd=parent)  # unlink never follows a link
        os.symlink(target, name, dir_fd=parent)


class Counter:
    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0


async def _bounded(files: SandboxFiles, src: str, size: int) -> AsyncIterator[bytes]:
    """src's bytes, no more than the size the sandbox listed: a file it keeps
    extending while it is read (or an agent that streams without end) cannot fill
    the host's disk or memory, as docker's tar header bounds docker cp."""
    if size <= 0:
        return
    async with contextlib.aclosing(files.read_stream(src)) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            chunk = chunk[:size]
            size -= len(chunk)
            yield chunk
            if not size:
                return


async def write_file(
    files: SandboxFiles,
    src: str,
    name: str,
    parent: int | None,
    mode: int,
    n: Counter,
    size: int,
) -> None:
    """The file src (listed at size bytes) into name under parent (None: name is the
    user's own path). Runs of zeros are skipped, not written, so a sparse file
    stays sparse on the host."""
    try:
        if parent is None:
            fd = os.open(name, _NEW, mode)
        else:
            fd = os.open(name, _NEW, mode, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"refusing to write through the symlink {name!r}") from None
        raise
    with os.fdopen(fd, "wb") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"refusing to write into {name!r}: not a regular file")
        async for chunk in _bounded(files, src, size):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            n.bytes += len(chunk)
        out.truncate()  # the length, after a hole at the end
    n.files += 1


# Deeper than this is refused, not walked: each level holds a directory fd and a
# frame, and the sandbox can make (or keep making) a tree as deep as it likes.
MAX_DEPTH = 512


def _deeper(depth: int, src: str) -> int:
    if depth >= MAX_DEPTH:
        raise Refused(f"refusing {src!r}: deeper than {MAX_DEPTH} directories")
    return depth + 1


async def pull_tree(files: SandboxFiles, src: str, dir_fd: int, n: Counter, depth: int = 0) -> None:
    """The contents of the sandbox's directory src into the host directory dir_fd."""
    depth = _deeper(depth, src)
    for e in await files.list(src):
        name = safe_name(e.name)
        path = posixpath.join(src, name)
        if e.type == "directory":
            make_dir(name, dir_fd)
            with opened_dir(name, dir_fd) as sub:
                await pull_tree(files, path, sub, n, depth)
                os.fchmod(sub, (e.mode & 0o777) or 0o755)
        elif e.type == "file":
            await write_file(files, path, name, dir_fd, (e.mode & 0o777) or 0o644, n, e.size)
        elif e.type == "symlink":
            make_link(e.link_target, name, dir_fd)
        # Anything else (a device, a fifo, a socket) has no content to copy.


# ------------------------------------------------------------ a tar stream (cp ID:SRC -)


def _info(name: str, e: FileInfo) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = e.mode & 0o777
    ti.mtime = int(e.modified.replace(tzinfo=UTC).timestamp())
    return ti


async def tar_tree(
    files: SandboxFiles, src: str, top: FileInfo, name: str, out: IO[bytes]
) -> Counter:
    """src as a tar stream on out, under name (docker's `cp ID:SRC -`)."""
    n = Counter()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        async def add(path: str, e: FileInfo, arcname: str, depth: int = 0) -> None:
            ti = _info(arcname, e)
            if e.type == "directory":
                depth = _deeper(depth, path)
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
                for child in await files.list(path):
                    child_name = safe_name(child.name)
                    child_path = posixpath.join(path, child_name)
                    await add(child_path, child, f"{arcname}/{child_name}", depth)
            elif e.type == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.link_target
                tar.addfile(ti)
            elif e.type == "file":
                # Streamed, not held whole, under the size listed (tarfile.addfile's
                # own steps): cut back meanwhile, it is padded with zeros; grown,
                # it is cut at that size; either way the archive stays whole.
                ti.size = e.size
                header = ti.tobuf(tar.format, tar.encoding, tar.errors)
                tar.fileobj.write(header)
                left = e.size
                async for chunk in _bounded(files, path, e.size):
                    tar.fileobj.write(chunk)
                    left -= len(chunk)
                while left:
                    tar.fileobj.write(bytes(min(left, 1 << 20)))
                    left -= min(left, 1 << 20)
                blocks, rest = divmod(e.size, tarfile.BLOCKSIZE)
                if rest:
                    tar.fileobj.write(tarfile.NUL * (tarfile.BLOCKSIZE - rest))
                    blocks += 1
                tar.offset += len(header) + blocks * tarfile.BLOCKSIZE
                n.files += 1
                n.bytes += e.size

        await add(src, top, safe_name(name))
    out.flush()
    return n
