"""Custom templates of the local provider: built once, kept as stacked layers.

A template is a stack of read-only overlay lower dirs: the base (the Debian
rootfs, another template's stack, or an OCI image's unpacked layers) and one
build layer on top holding what the packages and setup commands wrote. The
build's cache key is a sha256 over the base's digest and the definition, so
building the same definition again finds the layer and runs nothing. Layers
and blobs are content-addressed and shared; deleting a template frees those no
other template names.

Layout under the store:
  templates/<name>.json   the record (definition, digest, layer stack, env)
  layers/<hex>/           an unpacked layer (image layers: by blob digest;
                          build layers: by the sha256 of their OCI tar)
  blobs/sha256/<hex>      image manifests, configs and compressed layers
  builds/<id>/            a build in progress (removed on start-up if left),
                          run through its bind mount under the runtime dir
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from computesdkd.domain.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unavailable,
    template_not_found,
)
from computesdkd.domain.model import BuildStep, TemplateDefinition, TemplateInfo
from computesdkd.providers.capabilities import BuildReport
from computesdkd.providers.common import templates as tpls
from computesdkd.providers.common.templates import NPM, TEMPLATES
from computesdkd.providers.local import blobs, buildnet, images, imagesources, layerin
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local import tplrecords as records
from computesdkd.providers.local.buildrun import NPM_GLOBAL, PACKAGE_NAMES, BuildRunner
from computesdkd.providers.local.host import run, umount
from computesdkd.providers.local.tplrecords import Record, Template
from computesdkd.support import logs

log = logs.get(__name__)

BASE_LAYER = "base"  # the Debian rootfs, kept outside the layer store
HUB_RETRY_S = 300.0  # how long an unanswering Docker Hub is not asked again


@dataclass
class _Base:
    layers: list[str]  # top first
    env: dict[str, str]
    digest: str
    blobs: list[str]


class TemplateStore:
    def __init__(
        self,
        store: Path,
        builds: Path,
        base: Path,
        runc: Callable[..., list[str]],
        cgroup: str,
        pinned: Callable[[], set[str]],
        insecure_registries: frozenset[str],
    ) -> None:
        self.base = base
        # Layers running sandboxes stand on (their overlays hold them by fd).
        self._pinned = pinned
        self.records = store / "templates"
        self.layers = store / "layers"
        # Builds in progress, seen where a build's runc init (the storage uid) can
        # reach them (layout.py binds the store's builds/ there), each in a 0700 dir.
        self.builds = builds
        self._scratch = store / "builds"  # the same dir, on the layers' mount (renames)
        for d in (self.records, self.layers):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self.blobs = blobs.BlobStore(store / "blobs")
        os.chmod(self.blobs.root.parent, 0o700)
        self._runc = runc
        self._runner = BuildRunner(builds, store / "builds", self.layers, runc, cgroup)
        self._insecure = insecure_registries
        # Records, read once: exec looks up its sandbox's template env every call.
        self._cache = records.load(self.records)
        # One build at a time: a build takes every core, and two builds of one
        # definition must not race (the second finds the first's layer).
        self._lock = asyncio.Lock()
        self._hub_down_until = 0.0

    # -------------------------------------------------------------- lookup

    def _record(self, name: str) -> Record | None:
        return self._cache.get(name)

    def built(self, name: str) -> bool:
        return self._record(name) is not None

    def _all_records(self) -> list[Record]:
        return [self._cache[n] for n in sorted(self._cache)]

    def _lower(self, layer: str) -> Path:
        return self.base if layer == BASE_LAYER else self.layers / layer

    def require(self, name: str) -> Template:
        """The template a sandbox (or a build) starts from; a clear error when it cannot."""
        tpl = self._lookup(name)
        if tpl is None:
            raise template_not_found(name, "local")
        if tpl.info.unavailable:
            known = TEMPLATES.get(name) or tpls.Template(name, "")
            raise tpls.cannot_run(known, name, "local", tpl.info.unavailable)
        return tpl

    def _lookup(self, name: str) -> Template | None:
        tpl = TEMPLATES.get(name or "base")
        rec = self._record(name)
        if tpl is not None and (tpl.recipe is None or rec is None):
            unavailable = tpl.unavailable
            if tpl.recipe is not None:
                unavailable += (
                    f"; not built on this host yet: the first create builds it (and waits), "
                    f"or `computesdk template build {tpl.name}` ahead "
                    f"(packages: {', '.join(tpl.recipe.packages)})"
                )
            info = TemplateInfo(
                name=tpl.name,
                provider="local",
                description=tpl.description,
                definition=tpl.recipe,
                env=dict(tpl.env),
                layer_count=1,
                unavailable=unavailable,
            )
            return Template(info, (self.base,))
        if rec is None:
            return None
        info = records.info(rec)
        if tpl is not None:  # a predefined name, built from its recipe
            info = replace(info, builtin=True, description=tpl.description)
        lowers = tuple(self._lower(x) for x in records.strs(rec.get("layers")))
        missing = [str(p) for p in lowers if not p.is_dir()]
        if missing:
            info = replace(info, unavailable=f"its layers are missing from the store: {missing}")
        return Template(info, lowers)

    def infos(self) -> list[TemplateInfo]:
        return [t.info for n in self.names() if (t := self._lookup(n)) is not None]

    def env(self, name: str) -> dict[str, str] | None:
        """A built template's env, on every exec: from the record in memory, with
        none of require()'s checks on disk. None for the predefined ones."""
        env = (self._record(name) or {}).get("env")
        return env if isinstance(env, dict) else None

    def names(self) -> list[str]:
        built = [str(r["name"]) for r in self._all_records()]
        return sorted(TEMPLATES) + [n for n in built if n not in TEMPLATES]

    # -------------------------------------------------------------- build

    async def build(
        self, definition: TemplateDefinition, no_cache: bool, report: BuildReport
    ) -> tuple[TemplateInfo, bool]:
        predefined = TEMPLATES.get(definition.name)
        if predefined is not None:
            empty = TemplateDefinition(name=definition.name)
            if predefined.recipe is None or definition != empty:
                raise InvalidArgument(
                    f"{definition.name!r} is a predefined template"
                    + (" (build it by name alone)" if predefined.recipe else ""),
                    reason="TEMPLATE_NAME_RESERVED",
                )
            definition = replace(predefined.recipe, description=predefined.description)
        manager = self._manager(definition)
        names = PACKAGE_NAMES[manager]
        for pkg in definition.packages:
            if not names.fullmatch(pkg):
                raise InvalidArgument(
                    f"package {pkg[:200]!r} is not a {manager} package name",
                    reason="BAD_PACKAGE",
                    package_manager=manager,
                )
        same = None if no_cache else self._unchanged(definition, manager)
        if same is not None:  # a client's build before each create: no lock to wait for
            report(BuildStep(1, 1, f"cache hit: {definition.name} is built from this definition"))
            return records.info(same), True
        started = time.monotonic()
        async with self._lock:
            return await self._build(definition, manager, no_cache, report, started)

    def _unchanged(self, d: TemplateDefinition, manager: str) -> Record | None:
        """d.name's record when it was built from d itself, on a base known without
        a download that has not changed since."""
        rec, base = self._record(d.name), self._on_host(d.base_image)
        asked = replace(d, package_manager=records.package_manager(d))
        if rec is None or base is None or records.info(rec).definition != asked:
            return None
        if rec.get("digest") != records.cache_key(base.digest, d, manager):
            return None
        layers = [self._lower(x) for x in records.strs(rec.get("layers"))]
        return rec if all(p.is_dir() for p in layers) else None

    def _manager(self, d: TemplateDefinition) -> str:
        """What installs d.packages: the definition's choice, or by its base (auto),
        a built template's own choice for template:NAME."""
        asked = records.package_manager(d)
        if asked not in tpls.PACKAGE_MANAGERS:
            raise InvalidArgument(
                f"template {d.name!r}: package_manager {asked[:64]!r} is not one of "
                + ", ".join(tpls.PACKAGE_MANAGERS),
                reason="TEMPLATE_DEFINITION_INVALID",
            )
        if asked != "auto":
            return asked
        parent = self._record(d.base_image.removeprefix("template:"))
        if d.base_image.startswith("template:") and parent is not None:
            return str(parent.get("package_manager") or tpls.APT)
        return tpls.packages_by(d.base_image)

    async def _build(
        self,
        d: TemplateDefinition,
        manager: str,
        no_cache: bool,
        report: BuildReport,
        started: float,
    ) -> tuple[TemplateInfo, bool]:
        run_steps = (1 if d.packages else 0) + len(d.setup)
        total = 2 + run_steps + 1  # base, key/cache, steps, commit
        report(BuildStep(1, total, f"resolving base {d.base_image or 'debian (built in)'}"))
        base = await self._resolve_base(d.base_image, report, total)
        key = records.cache_key(base.digest, d, manager)
        report(BuildStep(2, total, f"cache key {key[:19]}"))
        hit = None if no_cache else self._find_built(key)
        env = {**base.env, **d.env}
        if manager == NPM and d.packages:  # global packages, found by require()
            env.setdefault("NODE_PATH", NPM_GLOBAL)
        if hit is not None:
            report(BuildStep(total, total, f"cache hit: {hit['name']} has {key[:19]}"))
            layer_list = records.strs(hit["layers"])
        else:
            lowers = [self._lower(x) for x in base.layers]
            top = await self._runner.run(d, lowers, env, report, total, manager)
            layer_list = [top, *base.layers]
        rec: Record = {
            "v": records.RECORD_VERSION,
            "name": d.name,
            "description": d.description,
            "definition": {
                "base_image": d.base_image,
                "packages": list(d.packages),
                "env": d.env,
                "setup": list(d.setup),
                "package_manager": records.package_manager(d),
            },
            "package_manager": manager,
            "digest": key,
            "base_image_digest": base.digest if d.base_image else "",
            "env": env,
            "layers": layer_list,
            "blobs": base.blobs,
            "created_at": time.time(),
            # A hit has the same layers: their size is known, and the walk is not free.
            "size_bytes": hit["size_bytes"]
            if hit is not None and "size_bytes" in hit
            else await asyncio.to_thread(self._size, layer_list),
        }
        records.write(records.path(self.records, d.name), rec)
        self._cache[d.name] = rec
        # A rebuild under the same name may leave the old layers unused.
        await asyncio.to_thread(self.collect_garbage)
        log.info(
            "template built",
            template=d.name,
            digest=key,
            cache_hit=hit is not None,
            seconds=round(time.monotonic() - started, 2),
        )
        return records.info(rec), hit is not None

    def _find_built(self, key: str) -> Record | None:
        for rec in self._all_records():
            if rec.get("digest") == key and all(
                self._lower(x).is_dir() for x in records.strs(rec.get("layers"))
            ):
                return rec
        return None

    def _on_host(self, ref: str) -> _Base | None:
        """The base when it needs no download (the Debian base, a template, a Hub name
        it stands in for while the Hub does not answer); None when it may."""
        debian = (
            "computesdk:"
            + hashlib.sha256(json.dumps(rootfs_mod.recipe(), sort_keys=True).encode()).hexdigest()
        )
        if not ref or (tpls.local_base(ref) and self._hub_down_until > time.monotonic()):
            return _Base([BASE_LAYER], {}, debian, [])
        if not ref.startswith("template:"):
            return None
        parent = self.require(ref[len("template:") :])
        rec = self._record(parent.info.name)
        if rec is None:  # a predefined one: the Debian base, with its env
            return _Base([BASE_LAYER], dict(parent.info.env), debian, [])
        layers, held = records.strs(rec["layers"]), records.strs(rec["blobs"])
        return _Base(layers, dict(parent.info.env), str(rec["digest"]), held)

    async def _resolve_base(self, ref: str, report: BuildReport, total: int) -> _Base:
        here = self._on_host(ref)
        if here is not None:
            if tpls.local_base(ref):
                why = f"{images.DOCKER_HUB} did not answer in the last minutes"
                report(BuildStep(1, total, f"{why}: {ref} builds on the local Debian base"))
            return here

        def progress(label: str, done: int, size: int) -> None:
            report(BuildStep(1, total, f"fetching {label}", bytes_done=done, bytes_total=size))

        try:
            image = await imagesources.fetch(
                images.parse(ref), self.blobs, progress, self._insecure
            )
        except Unavailable as exc:
            # No registry answers: a Hub name the Debian base stands in for builds on
            # it, and the Hub is not asked again for a while (a client that builds
            # before each create must not wait out a connect timeout every time).
            if tpls.local_base(ref) is None:
                raise tpls.no_local_base(ref, exc) from exc
            self._hub_down_until = time.monotonic() + HUB_RETRY_S
            why = f"no registry answers for {ref} ({exc.message[:120]})"
            report(BuildStep(1, total, f"{why}: building on the local Debian bookworm base"))
            return await self._resolve_base("", report, total)
        unpacked = []
        for i, layer in enumerate(image.layers):
            hexd = layer.digest.split(":", 1)[1]
            report(BuildStep(1, total, f"unpacking layer {i + 1}/{len(image.layers)} {hexd[:12]}"))
            await asyncio.to_thread(self._unpack, layer.digest)
            unpacked.append(hexd)
        held = [image.digest, image.config_digest, *(x.digest for x in image.layers)]
        return _Base(list(reversed(unpacked)), image.env(), image.digest, held)

    def _unpack(self, digest: str) -> None:
        final = self.layers / digest.split(":", 1)[1]
        if final.is_dir():
            return
        tmp = self._scratch / f"unpack-{final.name[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            layerin.read_layer(self.blobs.path(digest), tmp, skip_devices=True)
            os.chown(tmp, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
            os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (OSError, EOFError, ValueError)):
                raise FailedPrecondition(
                    f"layer {digest} cannot be unpacked: {exc}", reason="IMAGE_INVALID"
                ) from exc
            raise

    def _size(self, layer_list: list[str]) -> int:
        total = 0
        for layer in layer_list:
            if layer == BASE_LAYER:
                continue
            # fd by fd, never following a link the layer holds.
            for _, _, files, dfd in os.fwalk(self._lower(layer)):
                for f in files:
                    with contextlib.suppress(OSError):
                        total += os.stat(f, dir_fd=dfd, follow_symlinks=False).st_blocks * 512
        return total

    # -------------------------------------------------------------- delete and clean

    async def delete(self, name: str) -> None:
        if name in TEMPLATES and (TEMPLATES[name].recipe is None or name not in self._cache):
            raise FailedPrecondition(
                f"{name!r} is a predefined template and cannot be deleted",
                reason="TEMPLATE_NAME_RESERVED",
            )
        if name not in self._cache:
            raise template_not_found(name, "local")
        async with self._lock:
            records.path(self.records, name).unlink(missing_ok=True)
            del self._cache[name]
            await asyncio.to_thread(self.collect_garbage)

    def collect_garbage(self) -> None:
        """Frees layers and blobs no template names and no mounted sandbox stands on,
        and builds left by a crash."""
        used_layers = _mounted_lowers(self.layers) | self._pinned()
        used_blobs = set[str]()
        for rec in self._all_records():
            used_layers.update(records.strs(rec.get("layers")))
            used_blobs.update(x.split(":", 1)[-1] for x in records.strs(rec.get("blobs")))
        for d in self.layers.iterdir():
            if d.name not in used_layers:
                shutil.rmtree(d, ignore_errors=True)
        for b in self.blobs.root.iterdir():
            if b.name not in used_blobs:
                b.unlink(missing_ok=True)

    async def clean_leftovers(self) -> None:
        """A daemon killed mid-build leaves a runc container, a mount and a scratch
        dir; frees them. (Unused layers go later, in collect_garbage, once the
        provider knows which layers its adopted sandboxes stand on.)"""
        dead = []
        for d in self.builds.iterdir():
            if d.name.startswith("build-"):
                with contextlib.suppress(Internal):
                    await run(*self._runc("delete", "--force", d.name))
                dead.append(d.name)
            with contextlib.suppress(OSError):
                umount(str(d / "sys"))
            with contextlib.suppress(OSError):
                umount(str(d / "rootfs"))
            await asyncio.to_thread(shutil.rmtree, d, True)
        # Their network namespaces and, with the host's last build network, its rules.
        with contextlib.suppress(Internal, OSError):
            await buildnet.remove_leftovers(dead)


def _mounted_lowers(layer_dir: Path) -> set[str]:
    """Layers some mounted overlay (a running sandbox) stands on."""
    prefix = str(layer_dir) + "/"
    used = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "overlay":
                for opt in fields[3].split(","):
                    if opt.startswith("lowerdir="):
                        for lower in opt[len("lowerdir=") :].split(":"):
                            if lower.startswith(prefix):
                                used.add(lower[len(prefix) :])
    return used
