"""What every sandbox root needs whatever its image, made in a build's root.

The image is untrusted: its `etc` or `.computesdk` may be a symlink to a host
directory, its agent a dangling symlink. Everything here goes fd by fd from the
root, with no link followed; whatever stands where a directory (or a regular
file) must be and is not one is removed and made anew."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local import safefs


def sandbox_defaults(root: Path) -> None:
    """Mount points for the agent, a /workspace, and hostname files the daemon edits."""
    uid = rootfs_mod.UID_SHIFT
    with safefs.Tree.open(root, safefs.NO_LINKS, owner=(uid, uid)) as tree:
        for sub in ("workspace", ".computesdk", "etc", "tmp"):
            _real_dir(tree, tree.fd, sub, 0o1777 if sub == "tmp" else 0o755)
        agent_dir = tree.lookup_dir(".computesdk")
        try:
            # The bind-mount target of the agent binary.
            _real_file(tree, agent_dir, "agent", 0o755, b"")
        finally:
            os.close(agent_dir)
        etc = tree.lookup_dir("etc")
        try:
            for name, text in (
                ("hostname", b"sandbox\n"),
                ("hosts", b"127.0.0.1 localhost sandbox\n::1 localhost\n"),
                ("resolv.conf", b""),
            ):
                _real_file(tree, etc, name, 0o644, text)
        finally:
            os.close(etc)


def is_regular(tree: safefs.Tree, path: str) -> bool:
    """Whether path, looked up inside the tree, is a regular file."""
    try:
        fd = tree.open_at(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _kind(dirfd: int, name: str) -> int:
    """The file type at dirfd/name (the link itself for a symlink), 0 if none."""
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return 0


def _real_dir(tree: safefs.Tree, pfd: int, name: str, mode: int) -> None:
    kind = _kind(pfd, name)
    if kind == stat.S_IFDIR:
        return
    if kind:
        safefs.remove_tree(pfd, name)
    tree.mkdir_at(pfd, name, mode)


def _real_file(tree: safefs.Tree, pfd: int, name: str, mode: int, text: bytes) -> None:
    """Keeps a regular file the image has there; anything else is replaced by one
    holding text, created O_EXCL|O_NOFOLLOW, its owner and mode set on the fd."""
    kind = _kind(pfd, name)
    if kind == stat.S_IFREG:
        return
    if kind:
        safefs.remove_tree(pfd, name)
    fd = safefs.create_at(pfd, name)
    try:
        os.fchown(fd, *tree.owner)
        os.fchmod(fd, mode)
        view = memoryview(text)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
