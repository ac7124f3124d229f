"""An overlay upper layer to and from a portable tar layer.

The tar follows the OCI image layer conventions, so the layer means the same
thing anywhere: a deleted file is a `.wh.NAME` entry, an opaque directory holds
`.wh..wh..opq`, and owners are the sandbox's own ids (root is 0), not the
shifted host ids the upper layer stores.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from ...errors import InvalidArgument
from .rootfs import ID_RANGE, UID_SHIFT

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


def _unshift(i: int) -> int:
    return i - UID_SHIFT if UID_SHIFT <= i < UID_SHIFT + ID_RANGE else 0


def write_layer(upper: Path, out: BinaryIO) -> None:
    """Writes the upper layer as an OCI-style tar to out (a stream)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(upper):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, upper)
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arc = os.path.normpath(os.path.join(rel_dir, name))
                st = os.lstat(path)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    # An overlay whiteout: the base's file was deleted.
                    info = tarfile.TarInfo(os.path.join(os.path.dirname(arc), WHITEOUT + name))
                    info.mode = 0o600
                    tar.addfile(info)
                    continue
                info = tar.gettarinfo(path, arcname=arc)
                info.uid, info.gid = _unshift(st.st_uid), _unshift(st.st_gid)
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if stat.S_ISDIR(st.st_mode):
                    with contextlib.suppress(OSError):
                        if os.getxattr(path, OPAQUE_XATTR) == b"y":
                            marker = tarfile.TarInfo(os.path.join(arc, OPAQUE))
                            marker.mode = 0o600
                            tar.addfile(marker)


def _safe(name: str) -> str:
    norm = os.path.normpath(name)
    if norm.startswith(("/", "..")) or "/../" in f"/{norm}/" or norm == "":
        raise InvalidArgument(f"archive entry {name!r} leaves the layer", reason="ARCHIVE_CORRUPT")
    return norm


def _check_parents(upper: Path, name: str) -> None:
    """Extraction runs on the host: a symlink met on the way (planted by an earlier
    entry) would send a write outside the sandbox, so every parent must be a
    real directory."""
    here = upper
    for part in Path(name).parent.parts:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(
                f"archive entry {name!r} goes through a symlink or file", reason="ARCHIVE_CORRUPT"
            )


def read_layer(layer: Path, upper: Path, *, skip_devices: bool = False) -> None:
    """Extracts an OCI-style tar layer (plain or gzip) into an empty overlay upper
    directory. skip_devices drops device nodes (an image's /dev is never used:
    sandboxes get a fresh one) instead of refusing the layer."""
    with tarfile.open(layer, mode="r:*") as tar:
        for info in tar:
            name = _safe(info.name)
            if name == ".":
                continue  # the layer's root: the upper dir itself
            _check_parents(upper, name)
            base = os.path.basename(name)
            parent = upper / os.path.dirname(name)
            if base == OPAQUE:
                parent.mkdir(parents=True, exist_ok=True)
                os.setxattr(parent, OPAQUE_XATTR, b"y")
                continue
            if base.startswith(WHITEOUT):
                parent.mkdir(parents=True, exist_ok=True)
                target = parent / base[len(WHITEOUT) :]
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                if skip_devices:
                    continue
                raise InvalidArgument(
                    f"archive entry {name!r} is a device or fifo", reason="ARCHIVE_CORRUPT"
                )
            if info.islnk():
                info.linkname = _safe(info.linkname)
                _check_parents(upper, info.linkname + "/x")
            target = upper / name
            if target.is_symlink():  # never write through a link an earlier entry made
                target.unlink()
            info.name = name
            info.uid = UID_SHIFT + min(max(info.uid, 0), ID_RANGE - 1)
            info.gid = UID_SHIFT + min(max(info.gid, 0), ID_RANGE - 1)
            tar.extract(info, upper, set_attrs=True, numeric_owner=True, filter="fully_trusted")
