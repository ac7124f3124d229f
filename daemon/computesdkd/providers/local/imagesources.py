"""Image bases on this host, and fetching any image reference: a local OCI
image layout or a `docker save` tarball, read fd by fd within what the client
named, or an image in a registry (registry.py)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import stat
import tarfile
import zlib
from pathlib import Path
from typing import IO

from computesdkd.domain.errors import FailedPrecondition, NotFound
from computesdkd.providers.local import layers, registry, safefs
from computesdkd.providers.local.blobs import MAX_MANIFEST_BYTES, BlobStore
from computesdkd.providers.local.images import (
    INDEXES,
    LAYER_TYPES,
    Image,
    ImageRef,
    Layer,
    Progress,
    manifest_image,
    pick_platform,
)

# A docker-archive holds a manifest, configs and layers: a few entries a layer.
MAX_ARCHIVE_ENTRIES = 10_000


def _read_oci_layout(ref: ImageRef, blobs: BlobStore, progress: Progress) -> Image:
    # The directory is the one the client named; what is inside it is the image's:
    # looked up within it (its symlinks resolve there, never on the host), and
    # only regular files are read (a FIFO would block, a device never ends).
    try:
        root_fd = os.open(ref.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFound(
            f"{ref.path} is not an OCI image layout: {exc}", reason="IMAGE_NOT_FOUND"
        ) from exc
    try:
        return _read_oci_tree(ref, safefs.Tree(root_fd, safefs.IN_ROOT), blobs, progress)
    finally:
        os.close(root_fd)


def _read_oci_tree(ref: ImageRef, root: safefs.Tree, blobs: BlobStore, progress: Progress) -> Image:
    try:
        layout = json.loads(root.read_bounded("oci-layout", MAX_MANIFEST_BYTES))
        index = json.loads(root.read_bounded("index.json", MAX_MANIFEST_BYTES))
        if not isinstance(layout, dict) or not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        raise NotFound(
            f"{ref.path} is not an OCI image layout: {exc}", reason="IMAGE_NOT_FOUND"
        ) from exc
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise FailedPrecondition(f"{ref.path}: unknown OCI layout version", reason="IMAGE_INVALID")

    def take(digest: str, size: object = 0) -> None:
        src = "blobs/sha256/" + blobs.path(digest).name
        if blobs.has(digest):
            return
        try:
            fd = root.open_regular(src, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise FailedPrecondition(
                f"{ref.path} lacks blob {digest} ({exc.strerror})", reason="IMAGE_INVALID"
            ) from exc
        with os.fdopen(fd, "rb") as f:
            blobs.put_file(f, digest, size if isinstance(size, int) and size > 0 else 0)

    candidates = index.get("manifests") or []
    if ref.reference:
        candidates = [
            m
            for m in candidates
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
            == ref.reference
        ]
    if len(candidates) != 1:
        raise NotFound(
            f"{ref.path} has {len(candidates)} images named {ref.reference or '(any)'}; "
            "name exactly one with oci:PATH:TAG",
            reason="IMAGE_NOT_FOUND",
        )
    try:
        desc = candidates[0]
        for _ in range(8):  # an index of indexes, but not without end
            if desc.get("mediaType") not in INDEXES:
                break
            take(desc["digest"], desc.get("size"))
            desc = pick_platform(blobs.read_json(desc["digest"]), str(ref))
        take(desc["digest"], desc.get("size"))
        manifest = blobs.read_json(desc["digest"])
        take(manifest["config"]["digest"], manifest["config"].get("size"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise FailedPrecondition(
            f"{ref.path}: a malformed index or manifest ({exc})", reason="IMAGE_INVALID"
        ) from exc
    image = manifest_image(ref, desc["digest"], manifest, blobs)
    for i, layer in enumerate(image.layers):
        progress(f"layer {i + 1}/{len(image.layers)} {layer.digest[7:19]}", 0, layer.size)
        take(layer.digest, layer.size)
    return image


def _read_docker_archive(ref: ImageRef, blobs: BlobStore, progress: Progress) -> Image:
    try:
        # The path is the client's; it must name a regular file (a FIFO would block).
        pfd = os.open(ref.path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(pfd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            raw = os.fdopen(safefs.reopen(pfd, os.O_RDONLY), "rb")
        finally:
            os.close(pfd)
    except OSError as exc:
        raise NotFound(
            f"{ref.path} is not a docker-archive tarball: {exc}", reason="IMAGE_NOT_FOUND"
        ) from exc
    with raw:
        try:
            tar = tarfile.open(  # noqa: SIM115 - _read_docker_tar closes it
                fileobj=raw, mode="r:*", tarinfo=layers.BoundedTarInfo
            )
        except tarfile.TarError as exc:
            raise NotFound(
                f"{ref.path} is not a docker-archive tarball: {exc}", reason="IMAGE_NOT_FOUND"
            ) from exc
        return _read_docker_tar(ref, tar, blobs, progress)


def _read_docker_tar(
    ref: ImageRef, tar: tarfile.TarFile, blobs: BlobStore, progress: Progress
) -> Image:
    try:
        with tar:
            return _docker_archive_image(ref, tar, blobs, progress)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FailedPrecondition(
            f"{ref.path}: a corrupt docker-archive ({exc})", reason="IMAGE_INVALID"
        ) from exc
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        raise FailedPrecondition(
            f"{ref.path}: a malformed manifest.json or config ({type(exc).__name__}: {exc})",
            reason="IMAGE_INVALID",
        ) from exc


def _docker_archive_image(
    ref: ImageRef, tar: tarfile.TarFile, blobs: BlobStore, progress: Progress
) -> Image:
    # Every entry is listed once (bounded), so that looking one up never runs on.
    for n, _ in enumerate(tar, start=1):
        if n > MAX_ARCHIVE_ENTRIES:
            raise FailedPrecondition(
                f"{ref.path} has more than {MAX_ARCHIVE_ENTRIES} entries", reason="IMAGE_INVALID"
            )

    def member(name: str) -> IO[bytes]:
        if not isinstance(name, str):
            raise TypeError(f"{name!r} is not a name")
        try:
            info = tar.getmember(os.path.normpath(name))
        except KeyError:
            raise FailedPrecondition(f"{ref.path} lacks {name}", reason="IMAGE_INVALID") from None
        f = tar.extractfile(info)
        if f is None:
            raise FailedPrecondition(f"{ref.path}: {name} is not a file", reason="IMAGE_INVALID")
        return f

    def small(name: str) -> bytes:
        data = member(name).read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(
                f"{ref.path}: {name} is larger than {MAX_MANIFEST_BYTES} bytes",
                reason="IMAGE_INVALID",
            )
        return data

    try:
        entries = json.loads(small("manifest.json"))
    except ValueError as exc:
        raise FailedPrecondition(
            f"{ref.path}: manifest.json is not JSON", reason="IMAGE_INVALID"
        ) from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TypeError("manifest.json is not a list of images")
    if ref.reference:
        entries = [e for e in entries if ref.reference in (e.get("RepoTags") or [])]
    if len(entries) != 1:
        raise NotFound(
            f"{ref.path} holds {len(entries)} images tagged {ref.reference or '(any)'}; "
            "name exactly one with docker-archive:PATH:REPO:TAG",
            reason="IMAGE_NOT_FOUND",
        )
    entry = entries[0]
    config_bytes = small(entry["Config"])
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    if not isinstance(config, dict):
        raise TypeError("the config is not an object")
    with blobs.writer(config_digest) as w:
        w.write(config_bytes)
    layers = []
    names = entry.get("Layers") or []
    for i, name in enumerate(names):
        progress(f"layer {i + 1}/{len(names)} {name}", 0, 0)
        digest = blobs.put_file(member(name))
        media = LAYER_TYPES[0] if _is_plain_tar(blobs.path(digest)) else LAYER_TYPES[1]
        layers.append(Layer(digest, media, blobs.path(digest).stat().st_size))
    return Image(ref, config_digest, config_digest, config, layers)


def _is_plain_tar(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) != b"\x1f\x8b"


async def fetch(
    ref: ImageRef, blobs: BlobStore, progress: Progress, insecure: frozenset[str]
) -> Image:
    """The image's manifest, config and layers, all in the blob store. insecure:
    registries reached over plain HTTP besides loopback."""
    if ref.transport == "oci":
        return await asyncio.to_thread(_read_oci_layout, ref, blobs, progress)
    if ref.transport == "docker-archive":
        return await asyncio.to_thread(_read_docker_archive, ref, blobs, progress)
    return await registry.pull(ref, blobs, progress, insecure)
