"""`computesdk cp`, as docker cp (DESCRIPTION says how it copies). What comes off a
sandbox is untrusted on the host: cli_cp_pull writes it."""

from __future__ import annotations

import argparse
import os
import posixpath
import stat
import sys
import tarfile
from collections.abc import AsyncIterator
from typing import IO, Any

from ._cli_common import ERR, CLIError, UsageError, print_json
from .cli_cp_pull import (
    Counter,
    Refused,
    make_dir,
    make_link,
    opened_dir,
    pull_tree,
    tar_tree,
    write_file,
)
from .client import Client
from .errors import ComputeSDKError, SandboxFileNotFoundError
from .sandbox import Sandbox
from .types import FileInfo

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
DESCRIPTION = (
    "Copies files and directories between the host and a sandbox: cp SRC ID:DST onto "
    "it, cp ID:SRC DST off it; - in place of the host path is a tar stream on stdin or "
    "stdout. A directory copied to a path that does not exist becomes that path; to "
    "one that does, it goes inside it (SRC/. copies what is in it). A relative sandbox "
    "path starts at /workspace. Symlinks are copied as symlinks (-L follows SRC's). Off "
    "a sandbox, nothing is written through a symlink: an entry that would leave DST is "
    "refused, and DST itself, if a symlink, is followed only when written DST/."
)


def printable(text: str) -> str:
    """text with its control characters (a terminal's escape sequences) escaped."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def split(arg: str) -> tuple[str | None, str]:
    """(sandbox id, path) for ID:PATH; (None, path) for a host path or `-`. As in
    docker, a colon after a slash is part of a host path (./a:b, /tmp/a:b)."""
    head, sep, tail = arg.partition(":")
    if sep and head and "/" not in head:
        return head, tail
    return None, arg


def in_sandbox(path: str) -> str:
    """An absolute sandbox path; a relative one starts at /workspace, as in the API."""
    return posixpath.normpath(posixpath.join("/workspace", path or "."))


def _contents(path: str) -> bool:
    """SRC/. : what is in the directory, not the directory."""
    return path == "." or path.endswith("/.")


async def _stat(sb: Sandbox, path: str, follow: bool) -> tuple[FileInfo, str]:
    info = await sb.files.stat(path)
    for _ in range(40):
        if not follow or info.type != "symlink":
            return info, path
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), info.link_target))
        info = await sb.files.stat(path)
    raise CLIError(f"{path}: too many levels of symbolic links")


async def _maybe(sb: Sandbox, path: str) -> FileInfo | None:
    try:
        return (await _stat(sb, path, follow=True))[0]
    except SandboxFileNotFoundError:
        return None


# ------------------------------------------------------------ off the sandbox


async def pull(sb: Sandbox, raw: str, dst: str, follow: bool) -> Counter:
    info, src = await _stat(sb, in_sandbox(raw), follow)
    name = posixpath.basename(src)
    if dst == "-":
        return await tar_tree(sb.files, src, info, name or "root", sys.stdout.buffer)
    if not dst.endswith("/") and os.path.islink(dst):
        # Perhaps one an earlier copy brought from the sandbox: never followed
        # unless the user says it names a directory.
        raise Refused(f"refusing to write through the symlink {dst} (DST/ copies into its target)")
    n = Counter()
    host_dir = os.path.isdir(dst)
    if info.type == "directory":
        if os.path.lexists(dst) and not host_dir:
            raise CLIError(f"cannot copy the directory {src} onto the file {dst}")
        if not host_dir:
            os.mkdir(dst)  # its parent must exist, as in docker
        with opened_dir(dst, None) as top:
            if host_dir and name and not _contents(raw):
                make_dir(name, top)
                with opened_dir(name, top) as inside:
                    await pull_tree(sb.files, src, inside, n)
            else:
                await pull_tree(sb.files, src, top, n)
    elif info.type == "symlink":
        parent, base = (
            (dst, name) if host_dir else (os.path.dirname(dst) or ".", os.path.basename(dst))
        )
        with opened_dir(parent, None) as fd:
            make_link(info.link_target, base, fd)
    elif info.type == "file":
        mode = (info.mode & 0o777) or 0o644
        if host_dir:
            with opened_dir(dst, None) as fd:
                await write_file(sb.files, src, name, fd, mode, n, info.size)
        elif dst.endswith("/"):
            raise CLIError(f"{dst}: no such directory")
        else:
            await write_file(sb.files, src, dst, None, mode, n, info.size)
    else:
        raise CLIError(f"{src} is not a file, directory or symlink")
    return n


# ------------------------------------------------------------ onto the sandbox


async def _link(sb: Sandbox, target: str, path: str) -> None:
    # The file API makes no symlinks; ln in the sandbox does.
    # --: a target such as --version or -t/etc is a target, not an option of ln.
    r = await sb.exec(["ln", "-sfn", "--", target, path], check=False)
    if not r.ok:
        raise CLIError(f"could not make the symlink {path} in the sandbox: {r.stderr.strip()!r}")


async def _chunks(f: IO[bytes], n: Counter) -> AsyncIterator[bytes]:
    while data := f.read(1 << 20):
        n.bytes += len(data)
        yield data


async def _push_file(sb: Sandbox, name: str, parent: int | None, path: str, n: Counter) -> None:
    fd = (
        os.open(name, _READ, dir_fd=parent)
        if parent is not None
        else os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    )
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CLIError(f"{name}: not a regular file")
        await sb.files.write(path, _chunks(f, n), mode=st.st_mode & 0o777)
    n.files += 1


async def _push_tree(sb: Sandbox, dir_fd: int, path: str, n: Counter) -> None:
    """The host directory dir_fd's contents into the sandbox's path, never
    following a host symlink (it is copied as one)."""
    await sb.files.mkdir(path, parents=True)
    with os.scandir(dir_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        target = posixpath.join(path, e.name)
        if e.is_symlink():
            await _link(sb, os.readlink(e.name, dir_fd=dir_fd), target)
        elif e.is_dir(follow_symlinks=False):
            with opened_dir(e.name, dir_fd) as sub:
                await _push_tree(sb, sub, target, n)
        elif e.is_file(follow_symlinks=False):
            await _push_file(sb, e.name, dir_fd, target, n)


def _member(name: str) -> str:
    path = posixpath.normpath(name)
    if path.startswith("/") or path == ".." or path.startswith("../"):
        raise Refused(f"refusing the tar entry {name!r}: it would leave the destination")
    return path


async def push_tar(sb: Sandbox, stream: IO[bytes], dst: str) -> Counter:
    """A tar stream (docker's `cp - ID:DST`) extracted into the directory dst."""
    info = await _maybe(sb, dst)
    if info is None or info.type != "directory":
        raise CLIError(f"{dst}: the destination of a tar stream must be a directory")
    n = Counter()
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for m in tar:
            rel = _member(m.name)
            path = dst if rel == "." else posixpath.join(dst, rel)
            if m.isdir():
                await sb.files.mkdir(path, parents=True)
            elif m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                await sb.files.write(path, f.read(), mode=m.mode & 0o777)
                n.files += 1
                n.bytes += m.size
            elif m.issym():
                await _link(sb, m.linkname, path)
            else:
                print(
                    f"computesdk: skipped {m.name!r}: not a file, directory or symlink",
                    file=sys.stderr,
                )
    return n


async def push(sb: Sandbox, src: str, raw: str, follow: bool) -> Counter:
    dst = in_sandbox(raw)
    if src == "-":
        if sys.stdin.isatty():
            raise UsageError("cp - ID:DIR reads a tar stream from stdin, not a terminal")
        return await push_tar(sb, sys.stdin.buffer, dst)
    st = os.stat(src) if follow else os.lstat(src)
    there = await _maybe(sb, dst)
    into = there is not None and there.type == "directory"
    name = os.path.basename(os.path.abspath(src))
    n = Counter()
    if stat.S_ISDIR(st.st_mode):
        if there is not None and not into:
            raise CLIError(f"cannot copy the directory {src} onto the file {dst}")
        target = posixpath.join(dst, name) if into and not _contents(src) else dst
        with opened_dir(src, None) as fd:
            await _push_tree(sb, fd, target, n)
    elif stat.S_ISLNK(st.st_mode):
        await _link(sb, os.readlink(src), posixpath.join(dst, name) if into else dst)
    elif stat.S_ISREG(st.st_mode):
        if not into and raw.endswith("/"):
            raise CLIError(f"{raw}: no such directory in the sandbox")
        await _push_file(sb, src, None, posixpath.join(dst, name) if into else dst, n)
    else:
        raise CLIError(f"{src} is not a file, directory or symlink")
    return n


async def cmd_cp(c: Client, a: argparse.Namespace) -> int:
    (src_id, src), (dst_id, dst) = split(a.src), split(a.dst)
    if (src_id is None) == (dst_id is None):
        raise UsageError(
            "cp copies between the host and one sandbox: cp SRC ID:DST or cp ID:SRC DST"
        )
    sid = src_id or dst_id
    assert sid is not None
    sb = await c.get(sid)
    try:
        n = await (
            pull(sb, src, dst, a.follow_link) if src_id else push(sb, src, dst, a.follow_link)
        )
    except ComputeSDKError as exc:
        # Its message names paths the sandbox chose (a link's target, a listed name):
        # never raw on the user's terminal. JSON escapes them itself.
        if not a.json:
            exc.message = printable(exc.message)
        raise
    except CLIError as exc:
        raise type(exc)(printable(str(exc))) from None
    if a.json and "-" not in (a.src, a.dst):
        print_json({"source": a.src, "destination": a.dst, "files": n.files, "bytes": n.bytes})
    elif ERR.is_terminal:
        ERR.print(f"copied {n.files} file{'s' if n.files != 1 else ''}, {n.bytes} bytes")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cp",
        parents=[common],
        help="copy files between the host and a sandbox: cp SRC ID:DST | cp ID:SRC DST",
        description=DESCRIPTION,
    )
    p.add_argument(
        "src", metavar="SRC", help="a host path, ID:PATH, or - for a tar stream on stdin"
    )
    p.add_argument(
        "dst", metavar="DST", help="a host path, ID:PATH, or - for a tar stream on stdout"
    )
    p.add_argument(
        "-L", "--follow-link", action="store_true", help="follow a symlink that SRC names"
    )
    p.set_defaults(fn=cmd_cp)
