"""OCI images as template bases: read from a local OCI image layout or a
`docker save` tarball, or pulled from a registry over the distribution API.

Every blob lands in a content-addressed store (blobs/sha256/<hex>) and is
checked against its digest on the way in, so a tampered or truncated download
never reaches a sandbox, and a layer two images share is fetched once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import stat
import tarfile
import urllib.parse
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from computesdkd.domain.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from computesdkd.providers.local import layers as layers_mod
from computesdkd.providers.local import safefs

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
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# A docker-archive holds a manifest, configs and layers: a few entries a layer.
MAX_ARCHIVE_ENTRIES = 10_000
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Registries reached over plain HTTP, as dockerd treats them: loopback always,
# others when the operator lists them (comma separated HOST:PORT).
INSECURE_ENV = "COMPUTESDK_INSECURE_REGISTRIES"

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
            if key:
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


class BlobStore:
    """Blobs by digest. put() verifies before it publishes."""

    def __init__(self, root: Path) -> None:
        self.root = root / "sha256"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not DIGEST.match(digest):
            raise InvalidArgument(f"bad digest {digest!r}", reason="IMAGE_INVALID")
        return self.root / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, digest: str = "") -> _BlobWriter:
        """Without a digest, the blob is named by what its bytes hash to (a
        docker-archive names layers by path, not digest)."""
        if digest:
            self.path(digest)  # refuses a malformed digest before any byte is written
        return _BlobWriter(self, digest)

    def put_file(self, source: IO[bytes], digest: str = "", limit: int = 0) -> str:
        """Copies source in; returns its digest. With a limit (the descriptor's
        size), a source that runs on past it is refused, not read to its end."""
        if digest and self.has(digest):
            return digest
        with self.writer(digest) as w:
            while chunk := source.read(1 << 20):
                w.write(chunk)
                if limit and w.size > limit:
                    raise FailedPrecondition(
                        f"blob {digest or '(unnamed)'} is larger than its {limit} bytes",
                        reason="IMAGE_DIGEST_MISMATCH",
                    )
        return w.got

    def read_json(self, digest: str) -> Any:
        """A manifest, index or config from the store: capped, and refused as
        IMAGE_INVALID when it is not JSON."""
        with self.path(digest).open("rb") as f:
            body = f.read(MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise FailedPrecondition(
                f"{digest} is larger than {MAX_MANIFEST_BYTES} bytes", reason="IMAGE_INVALID"
            )
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise FailedPrecondition(f"{digest} is not JSON", reason="IMAGE_INVALID") from exc


class _BlobWriter:
    def __init__(self, store: BlobStore, digest: str) -> None:
        self.store, self.digest = store, digest
        self.tmp = store.root / f".incoming.{os.getpid()}.{id(self)}"
        self.got = ""
        self.hash = hashlib.sha256()
        self.size = 0
        self.f = self.tmp.open("wb")

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.size += len(chunk)
        self.f.write(chunk)

    def __enter__(self) -> _BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.f.close()
        try:
            if exc_type is not None:
                return
            self.got = "sha256:" + self.hash.hexdigest()
            if self.digest and self.got != self.digest:
                raise FailedPrecondition(
                    f"blob {self.digest} arrived with digest {self.got} ({self.size} bytes): "
                    "corrupt or truncated",
                    reason="IMAGE_DIGEST_MISMATCH",
                )
            os.rename(self.tmp, self.store.path(self.got))
        finally:
            self.tmp.unlink(missing_ok=True)


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _pick_platform(index: dict[str, Any], ref: str) -> dict[str, Any]:
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        if p.get("os", "linux") == "linux" and p.get("architecture", _arch()) == _arch():
            return dict(m)
    raise FailedPrecondition(
        f"image {ref} has no linux/{_arch()} variant", reason="IMAGE_PLATFORM_UNAVAILABLE"
    )


def _manifest_image(
    ref: ImageRef, digest: str, manifest: dict[str, Any], blobs: BlobStore
) -> Image:
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


# ------------------------------------------------------------------ OCI layout


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
            desc = _pick_platform(blobs.read_json(desc["digest"]), str(ref))
        take(desc["digest"], desc.get("size"))
        manifest = blobs.read_json(desc["digest"])
        take(manifest["config"]["digest"], manifest["config"].get("size"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise FailedPrecondition(
            f"{ref.path}: a malformed index or manifest ({exc})", reason="IMAGE_INVALID"
        ) from exc
    image = _manifest_image(ref, desc["digest"], manifest, blobs)
    for i, layer in enumerate(image.layers):
        progress(f"layer {i + 1}/{len(image.layers)} {layer.digest[7:19]}", 0, layer.size)
        take(layer.digest, layer.size)
    return image


# ------------------------------------------------------------------ docker-archive


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
                fileobj=raw, mode="r:*", tarinfo=layers_mod.BoundedTarInfo
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


# ------------------------------------------------------------------ registry


def _insecure(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    if host in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127."):
        return True
    return registry in {r.strip() for r in os.environ.get(INSECURE_ENV, "").split(",")}


def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return {k: v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


class _Registry:
    """The distribution API's read side: manifests and blobs, with the token dance."""

    def __init__(self, ref: ImageRef, http: httpx.AsyncClient) -> None:
        scheme = "http" if _insecure(ref.registry) else "https"
        self.base = f"{scheme}://{ref.registry}/v2/{ref.repository}"
        self.ref = ref
        self.http = http
        self.token = ""

    async def _get(self, url: str, accept: str = "") -> httpx.Response:
        resp = await self._send(url, accept)
        if resp.status_code == 401 and not self.token:
            await resp.aclose()
            await self._authenticate(resp.headers.get("www-authenticate", ""))
            resp = await self._send(url, accept)
        if resp.status_code == 404:
            await resp.aclose()
            raise NotFound(f"image {self.ref} not found in its registry", reason="IMAGE_NOT_FOUND")
        if resp.status_code in (401, 403):
            await resp.aclose()
            raise FailedPrecondition(
                f"registry {self.ref.registry} refused access to {self.ref.repository} "
                f"(HTTP {resp.status_code}); only anonymous pulls are supported",
                reason="IMAGE_ACCESS_DENIED",
            )
        if resp.status_code >= 400:
            await resp.aclose()
            raise Unavailable(
                f"registry {self.ref.registry} answered HTTP {resp.status_code} for {url}",
                reason="REGISTRY_UNAVAILABLE",
            )
        return resp

    async def _send(self, url: str, accept: str) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            req = self.http.build_request("GET", url, headers=headers)
            return await self.http.send(req, stream=True, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"cannot reach registry {self.ref.registry}: {exc}", reason="REGISTRY_UNAVAILABLE"
            ) from exc

    async def _authenticate(self, header: str) -> None:
        params = _challenge(header)
        if "realm" not in params:
            return
        query = {"service": params.get("service", ""), "scope": params.get("scope", "")}
        if not query["scope"]:
            query["scope"] = f"repository:{self.ref.repository}:pull"
        url = params["realm"] + "?" + urllib.parse.urlencode(query)
        try:
            resp = await self.http.get(url)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(
                f"registry {self.ref.registry}: token request failed: {exc}",
                reason="REGISTRY_UNAVAILABLE",
            ) from exc
        self.token = str(body.get("token") or body.get("access_token") or "")

    async def manifest(self, reference: str) -> tuple[str, str, bytes]:
        """(media type, digest, bytes); a digest reference is verified."""
        resp = await self._get(
            f"{self.base}/manifests/{reference}", ", ".join((*MANIFESTS, *INDEXES))
        )
        async with contextlib.aclosing(_limited(resp, MAX_MANIFEST_BYTES)) as chunks:
            body = b"".join([c async for c in chunks])
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise FailedPrecondition(
                f"manifest {reference} arrived with digest {digest}", reason="IMAGE_DIGEST_MISMATCH"
            )
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        try:
            media = json.loads(body).get("mediaType") or media
        except ValueError as exc:
            raise FailedPrecondition(
                f"manifest of {self.ref} is not JSON", reason="IMAGE_INVALID"
            ) from exc
        return media, digest, body

    async def blob(self, digest: str, blobs: BlobStore, progress: Progress, label: str) -> None:
        if blobs.has(digest):
            progress(f"{label} (cached)", 1, 1)
            return
        resp = await self._get(f"{self.base}/blobs/{digest}")
        total = int(resp.headers.get("content-length") or 0)
        try:
            with blobs.writer(digest) as w:
                async for chunk in resp.aiter_bytes(1 << 20):
                    w.write(chunk)
                    progress(label, w.size, total)
        finally:
            await resp.aclose()


async def _limited(resp: httpx.Response, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    try:
        async for chunk in resp.aiter_bytes():
            seen += len(chunk)
            if seen > limit:
                raise FailedPrecondition("manifest too large", reason="IMAGE_INVALID")
            yield chunk
    finally:
        await resp.aclose()


async def _pull(ref: ImageRef, blobs: BlobStore, progress: Progress) -> Image:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as http:
        reg = _Registry(ref, http)
        media, digest, body = await reg.manifest(ref.reference)
        if media in INDEXES:
            chosen = _pick_platform(json.loads(body), str(ref))
            media, digest, body = await reg.manifest(str(chosen["digest"]))
        if media not in MANIFESTS:
            raise FailedPrecondition(
                f"image {ref} has a manifest of type {media!r}", reason="IMAGE_INVALID"
            )
        with blobs.writer(digest) as w:
            w.write(body)
        manifest = json.loads(body)
        await reg.blob(manifest["config"]["digest"], blobs, progress, "config")
        image = _manifest_image(ref, digest, manifest, blobs)
        for i, layer in enumerate(image.layers):
            label = f"layer {i + 1}/{len(image.layers)} {layer.digest[7:19]}"
            await reg.blob(layer.digest, blobs, progress, label)
        return image


async def fetch(ref: ImageRef, blobs: BlobStore, progress: Progress) -> Image:
    """The image's manifest, config and layers, all in the blob store."""
    if ref.transport == "oci":
        return await asyncio.to_thread(_read_oci_layout, ref, blobs, progress)
    if ref.transport == "docker-archive":
        return await asyncio.to_thread(_read_docker_archive, ref, blobs, progress)
    return await _pull(ref, blobs, progress)
