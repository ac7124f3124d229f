"""The portable state archive: a tar of three entries, in this order.

    computesdk-state.json   {"format": "computesdk-state", "version": 1}
    layers/0.tar            the sandbox's files as an OCI-style layer
    manifest.json           template, env, resources, metadata, and for each
                            layer its size and sha256

The manifest comes last so that export can stream the layer while hashing it.
Import reads the whole archive first and checks everything before it makes
anything, so a corrupt or truncated archive leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

FORMAT = "computesdk-state"
VERSION = 1
FORMAT_ENTRY = "computesdk-state.json"
LAYER_ENTRY = "layers/0.tar"
MANIFEST_ENTRY = "manifest.json"
CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def pack(layer: Path, manifest: dict[str, Any]) -> Iterator[bytes]:
    """Yields the archive in pieces; the layer is read once, while it is hashed."""
    fmt = json.dumps({"format": FORMAT, "version": VERSION}).encode()
    yield _header(FORMAT_ENTRY, len(fmt)) + fmt + _padding(len(fmt))
    size = layer.stat().st_size
    yield _header(LAYER_ENTRY, size)
    digest = hashlib.sha256()
    with layer.open("rb") as f:
        while data := f.read(CHUNK):
            digest.update(data)
            yield data
    yield _padding(size)
    full = {
        **manifest,
        "format": FORMAT,
        "version": VERSION,
        "layers": [{"path": LAYER_ENTRY, "size": size, "sha256": digest.hexdigest()}],
    }
    body = json.dumps(full, indent=2, sort_keys=True).encode()
    yield _header(MANIFEST_ENTRY, len(body)) + body + _padding(len(body))
    yield b"\0" * (2 * BLOCK)


def _corrupt(why: str) -> InvalidArgument:
    return InvalidArgument(f"not a valid state archive: {why}", reason="ARCHIVE_CORRUPT")


def unpack(archive: Path, workdir: Path) -> tuple[dict[str, Any], Path]:
    """Checks the archive and returns its manifest and the extracted layer file."""
    layer = workdir / "layer.tar"
    seen: list[str] = []
    manifest: dict[str, Any] = {}
    digest = hashlib.sha256()
    layer_size = 0
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for info in tar:
                seen.append(info.name)
                f = tar.extractfile(info) if info.isreg() else None
                if f is None:
                    raise _corrupt(f"unexpected entry {info.name!r}")
                if info.name == FORMAT_ENTRY and len(seen) == 1:
                    head = json.loads(f.read(4096))
                    if head.get("format") != FORMAT:
                        raise _corrupt("it is not a computesdk state")
                    if head.get("version") != VERSION:
                        raise InvalidArgument(
                            f"state archive version {head.get('version')} is not supported "
                            f"(this daemon reads version {VERSION})",
                            reason="ARCHIVE_VERSION_UNSUPPORTED",
                        )
                elif info.name == LAYER_ENTRY and len(seen) == 2:
                    with layer.open("wb") as out:
                        while data := f.read(CHUNK):
                            digest.update(data)
                            layer_size += len(data)
                            out.write(data)
                elif info.name == MANIFEST_ENTRY and len(seen) == 3:
                    manifest = json.loads(f.read(1024 * 1024))
                else:
                    raise _corrupt(f"unexpected entry {info.name!r}")
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(f"{type(exc).__name__}: {exc}") from exc
    if seen != [FORMAT_ENTRY, LAYER_ENTRY, MANIFEST_ENTRY]:
        raise _corrupt(f"entries {seen}, want {[FORMAT_ENTRY, LAYER_ENTRY, MANIFEST_ENTRY]}")
    layers = manifest.get("layers") or [{}]
    want = layers[0]
    if want.get("size") != layer_size or want.get("sha256") != digest.hexdigest():
        raise _corrupt("the layer's size or sha256 does not match the manifest")
    for key in ("provider", "template", "env", "resources"):
        if key not in manifest:
            raise _corrupt(f"the manifest has no {key!r}")
    return manifest, layer
