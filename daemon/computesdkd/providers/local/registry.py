"""Pulling an image from a registry over the distribution API's read side:
anonymous pulls, with the bearer-token dance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import urllib.parse
from collections.abc import AsyncGenerator, Mapping

import httpx

from computesdkd.domain.errors import FailedPrecondition, NotFound, Unavailable
from computesdkd.providers.local.blobs import MAX_MANIFEST_BYTES, BlobStore
from computesdkd.providers.local.images import (
    INDEXES,
    MANIFESTS,
    Image,
    ImageRef,
    Progress,
    manifest_image,
    pick_platform,
)

# Registries reached over plain HTTP, as dockerd treats them: loopback always,
# others when the operator lists them (comma separated HOST:PORT).
INSECURE_ENV = "COMPUTESDK_INSECURE_REGISTRIES"


def insecure_registries(env: Mapping[str, str]) -> frozenset[str]:
    """The registries the operator lets the daemon reach over plain HTTP."""
    return frozenset(r.strip() for r in env.get(INSECURE_ENV, "").split(","))


def _insecure(registry: str, listed: frozenset[str]) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    if host in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127."):
        return True
    return registry in listed


def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return {k: v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


class _Registry:
    """The distribution API's read side: manifests and blobs, with the token dance."""

    def __init__(self, ref: ImageRef, http: httpx.AsyncClient, insecure: frozenset[str]) -> None:
        scheme = "http" if _insecure(ref.registry, insecure) else "https"
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


async def pull(
    ref: ImageRef, blobs: BlobStore, progress: Progress, insecure: frozenset[str]
) -> Image:
    """The image's manifest, config and layers, from its registry into the blob store.
    insecure: registries reached over plain HTTP besides loopback."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as http:
        reg = _Registry(ref, http, insecure)
        media, digest, body = await reg.manifest(ref.reference)
        if media in INDEXES:
            chosen = pick_platform(json.loads(body), str(ref))
            media, digest, body = await reg.manifest(str(chosen["digest"]))
        if media not in MANIFESTS:
            raise FailedPrecondition(
                f"image {ref} has a manifest of type {media!r}", reason="IMAGE_INVALID"
            )
        with blobs.writer(digest) as w:
            w.write(body)
        manifest = json.loads(body)
        await reg.blob(manifest["config"]["digest"], blobs, progress, "config")
        image = manifest_image(ref, digest, manifest, blobs)
        for i, layer in enumerate(image.layers):
            label = f"layer {i + 1}/{len(image.layers)} {layer.digest[7:19]}"
            await reg.blob(layer.digest, blobs, progress, label)
        return image
