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
from typing import IO, Any

from computesdkd.domain.errors import InvalidArgument

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


MAX_FORMAT_BYTES = 4096
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_PAX_BYTES = 64 * 1024


class _Bounded(tarfile.TarInfo):
    """The archive's own headers: only what pack() writes (regular files, a pax
    header for a size too large for ustar), and no extended header is read into
    memory past a cap."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE) and 0 <= self.size <= MAX_PAX_BYTES:
            return super()._proc_member(tf)  # type: ignore[misc,no-any-return]
        if self.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise tarfile.ReadError(f"an entry of type {self.type!r}")
        return super()._proc_member(tf)  # type: ignore[misc,no-any-return]

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax: dict[str, str], tf: Any) -> None:
        raise tarfile.ReadError("a sparse entry")


def _corrupt(why: str) -> InvalidArgument:
    return InvalidArgument(f"not a valid state archive: {why}", reason="ARCHIVE_CORRUPT")


def _read_capped(f: IO[bytes], info: tarfile.TarInfo, limit: int) -> bytes:
    if info.size > limit:
        raise _corrupt(f"{info.name} is {info.size} bytes (at most {limit})")
    return f.read(limit)


def unpack(archive: Path, workdir: Path) -> tuple[dict[str, Any], Path]:
    """Checks the archive and returns its manifest and the extracted layer file."""
    layer = workdir / "layer.tar"
    seen: list[str] = []
    manifest: Any = {}
    digest = hashlib.sha256()
    layer_size = 0
    try:
        with tarfile.open(archive, mode="r:", tarinfo=_Bounded) as tar:
            for info in tar:
                seen.append(info.name)
                # A sparse entry would stand for far more bytes than the archive
                # holds: only plain ones, whose data is all there.
                f = tar.extractfile(info) if info.isreg() and info.sparse is None else None
                if f is None:
                    raise _corrupt(f"unexpected entry {info.name!r}")
                if info.name == FORMAT_ENTRY and len(seen) == 1:
                    head = json.loads(_read_capped(f, info, MAX_FORMAT_BYTES))
                    if not isinstance(head, dict) or head.get("format") != FORMAT:
                        raise _corrupt("it is not a computesdk state")
                    if head.get("version") != VERSION:
                        raise InvalidArgument(
                            f"state archive version {str(head.get('version'))[:32]} is not "
                            f"supported (this daemon reads version {VERSION})",
                            reason="ARCHIVE_VERSION_UNSUPPORTED",
                        )
                elif info.name == LAYER_ENTRY and len(seen) == 2:
                    with layer.open("wb") as out:
                        while data := f.read(CHUNK):
                            digest.update(data)
                            layer_size += len(data)
                            out.write(data)
                elif info.name == MANIFEST_ENTRY and len(seen) == 3:
                    manifest = json.loads(_read_capped(f, info, MAX_MANIFEST_BYTES))
                else:
                    raise _corrupt(f"unexpected entry {info.name[:256]!r}")
    except (
        tarfile.TarError,
        EOFError,
        OSError,
        ValueError,
        UnicodeDecodeError,
        RecursionError,
    ) as exc:
        raise _corrupt(f"{type(exc).__name__}: {str(exc)[:512]}") from exc
    if seen != [FORMAT_ENTRY, LAYER_ENTRY, MANIFEST_ENTRY]:
        raise _corrupt(
            f"entries {[n[:256] for n in seen[:8]]}, "
            f"want {[FORMAT_ENTRY, LAYER_ENTRY, MANIFEST_ENTRY]}"
        )
    _check_manifest(manifest)
    want = manifest["layers"][0]
    if want.get("size") != layer_size or want.get("sha256") != digest.hexdigest():
        raise _corrupt("the layer's size or sha256 does not match the manifest")
    return manifest, layer


def _check_manifest(manifest: Any) -> None:
    """The manifest's shape, so that nothing past here meets a type it did not expect."""

    def strings(value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )

    if not isinstance(manifest, dict):
        raise _corrupt("the manifest is not an object")
    for key in ("provider", "template", "env", "resources"):
        if key not in manifest:
            raise _corrupt(f"the manifest has no {key!r}")
    layers = manifest.get("layers")
    if not (isinstance(layers, list) and len(layers) == 1 and isinstance(layers[0], dict)):
        raise _corrupt("the manifest must name exactly one layer")
    if not isinstance(manifest["provider"], str) or not isinstance(manifest["template"], str):
        raise _corrupt("the manifest's provider and template must be strings")
    if not strings(manifest["env"]) or not strings(manifest.get("metadata", {})):
        raise _corrupt("the manifest's env and metadata must map strings to strings")
    if not isinstance(manifest["resources"], dict):
        raise _corrupt("the manifest's resources must be an object")
