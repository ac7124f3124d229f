"""OCI images as template bases: references, manifests and configs.

An image is read from a local OCI image layout or a `docker save` tarball, or
pulled from a registry over the distribution API (imagesources.py, registry.py);
every blob lands in the blob store (blobs.py).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from computesdkd.domain.env import is_env_name
from computesdkd.domain.errors import FailedPrecondition, InvalidArgument
from computesdkd.providers.local.blobs import DIGEST, BlobStore

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
# Layers tarfile can read: plain and gzip. zstd layers are refused by name.
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
DOCKER_HUB = "registry-1.docker.io"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImageRef:
    transport: str  # "oci", "docker-archive" or "registry"
    path: str = ""
    registry: str = ""
    repository: str = ""
    reference: str = ""  # tag or digest

    def __str__(self) -> str:
        if self.transport == "registry":
            sep = "@" if self.reference.startswith("sha256:") else ":"
            return f"{self.registry}/{self.repository}{sep}{self.reference}"
        return f"{self.transport}:{self.path}" + (f":{self.reference}" if self.reference else "")


@dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass
class Image:
    ref: ImageRef
    # The manifest's digest (for a docker-archive, the config's: its image id).
    digest: str
    config_digest: str
    config: dict[str, Any]
    layers: list[Layer] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in (self.config.get("config") or {}).get("Env") or []:
            key, _, value = str(item).partition("=")
            if is_env_name(key):
                out[key] = value
        return out


def _bad(ref: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"base_image {ref!r}: {why}", reason="IMAGE_REFERENCE_INVALID")


def parse(ref: str) -> ImageRef:
    if ref.startswith("oci:"):
        path, _, tag = ref[4:].partition(":")
        if not path:
            raise _bad(ref, "oci: needs a directory")
        return ImageRef("oci", path=path, reference=tag)
    if ref.startswith("docker-archive:"):
        path, _, tag = ref[len("docker-archive:") :].partition(":")
        if not path:
            raise _bad(ref, "docker-archive: needs a file")
        return ImageRef("docker-archive", path=path, reference=tag)
    name = ref.removeprefix("docker://")
    if not name or name != name.strip() or " " in name:
        raise _bad(ref, "not an image reference")
    # The first component is a registry when it looks like a host (as docker reads it).
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    if "@" in path:
        path, _, reference = path.partition("@")
        if not DIGEST.match(reference):
            raise _bad(ref, "a digest must be sha256:<64 hex>")
    else:
        last = path.rsplit("/", 1)[-1]
        reference = "latest"
        if ":" in last:
            path, _, reference = path.rpartition(":")
    if not re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*", path):
        raise _bad(ref, f"repository {path!r} is not a valid name")
    return ImageRef("registry", registry=registry, repository=path, reference=reference)


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def pick_platform(index: dict[str, Any], ref: str) -> dict[str, Any]:
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture", _arch()) == _arch():
            return dict(m)
    raise FailedPrecondition(
        f"image {ref} has no linux/{_arch()} variant", reason="IMAGE_PLATFORM_UNAVAILABLE"
    )


def manifest_image(ref: ImageRef, digest: str, manifest: dict[str, Any], blobs: BlobStore) -> Image:
    try:
        config = blobs.read_json(manifest["config"]["digest"])
        layers = [
            Layer(str(x["digest"]), str(x.get("mediaType", LAYER_TYPES[1])), int(x.get("size", 0)))
            for x in manifest.get("layers") or []
        ]
        if not isinstance(config, dict):
            raise TypeError("the config is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FailedPrecondition(
            f"image {ref}: a malformed manifest or config ({exc})", reason="IMAGE_INVALID"
        ) from exc
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise FailedPrecondition(
                f"image {ref} has a layer of type {layer.media_type}, which this daemon "
                "cannot unpack (plain and gzip tar layers only)",
                reason="IMAGE_LAYER_UNSUPPORTED",
            )
    return Image(ref, digest, str(manifest["config"]["digest"]), config, layers)
