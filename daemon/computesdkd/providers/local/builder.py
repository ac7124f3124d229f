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
  builds/<id>/            a build in progress (removed on start-up if left)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from computesdkd.domain.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from computesdkd.domain.model import BuildStep, Resources, TemplateDefinition, TemplateInfo
from computesdkd.providers.base import BuildReport
from computesdkd.providers.local import buildnet, idmap, images, layers, safefs
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.host import MS_NODEV, MS_NOSUID, mount, run, umount
from computesdkd.providers.local.oci import build_spec
from computesdkd.providers.local.templates import DEFAULT_PATH, TEMPLATES
from computesdkd.support import logs

log = logs.get(__name__)

BASE_LAYER = "base"  # the Debian rootfs, kept outside the layer store
RECORD_VERSION = 1
BUILD_RESOURCES = Resources(cpu_cores=float(os.cpu_count() or 1), memory_mb=4096, pids_limit=4096)
STEP_TIMEOUT_S = 1800.0
LOG_LINE_MAX = 4096
# CA bundles of Debian, Alpine and Fedora-like images.
HOST_TRUST = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
PACKAGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9+.:=~_-]{0,127}$")

# Installs with whichever package manager the base has, and leaves no index behind.
_INSTALL = """set -e
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends {pkgs}
  apt-get clean
  rm -rf /var/lib/apt/lists/*
elif command -v apk >/dev/null 2>&1; then
  apk add --no-cache {pkgs}
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y {pkgs} && dnf clean all
else
  echo "the base image has no package manager (apt-get, apk or dnf)" >&2
  exit 127
fi
"""


@dataclass(frozen=True)
class Template:
    """What a sandbox needs from its template: its lower dirs (top first) and env."""

    info: TemplateInfo
    lowers: tuple[Path, ...]


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
        base: Path,
        runc: Callable[..., list[str]],
        cgroup: str,
        pinned: Callable[[], set[str]] = set,
    ) -> None:
        self.base = base
        # Layers running sandboxes stand on (their overlays hold them by fd).
        self._pinned = pinned
        self.records = store / "templates"
        self.layers = store / "layers"
        self.builds = store / "builds"
        # Only root passes, but builds/: a build's runc init (the storage uid)
        # must reach its root, in a dir of the build's own that is 0700.
        for d, mode in ((self.records, 0o700), (self.layers, 0o700), (self.builds, 0o711)):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
        self.blobs = images.BlobStore(store / "blobs")
        os.chmod(self.blobs.root.parent, 0o700)
        self._runc = runc
        self._cgroup = cgroup
        # Records, read once: exec looks up its sandbox's template env every call.
        self._cache: dict[str, dict[str, object]] = {}
        for p in sorted(self.records.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                rec = dict(json.loads(p.read_text()))
                self._cache[str(rec["name"])] = rec
        # One build at a time: a build takes every core, and two builds of one
        # definition must not race (the second finds the first's layer).
        self._lock = asyncio.Lock()

    # -------------------------------------------------------------- lookup

    def _record(self, name: str) -> dict[str, object] | None:
        return self._cache.get(name)

    def _all_records(self) -> list[dict[str, object]]:
        return [self._cache[n] for n in sorted(self._cache)]

    def _lower(self, layer: str) -> Path:
        return self.base if layer == BASE_LAYER else self.layers / layer

    def lookup(self, name: str) -> Template | None:
        tpl = TEMPLATES.get(name or "base")
        rec = self._record(name)
        if tpl is not None and (tpl.recipe is None or rec is None):
            unavailable = tpl.unavailable
            if tpl.recipe is not None:
                unavailable += (
                    f"; it is defined but not built on this host: `computesdk template "
                    f"build {tpl.name}` builds it (packages: {', '.join(tpl.recipe.packages)})"
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
        info = _info(rec)
        if tpl is not None:  # a predefined name, built from its recipe
            info = replace(info, builtin=True, description=tpl.description)
        lowers = tuple(self._lower(str(x)) for x in _strs(rec.get("layers")))
        missing = [str(p) for p in lowers if not p.is_dir()]
        if missing:
            info = replace(info, unavailable=f"its layers are missing from the store: {missing}")
        return Template(info, lowers)

    def infos(self) -> list[TemplateInfo]:
        return [t.info for n in self.names() if (t := self.lookup(n)) is not None]

    def env(self, name: str) -> dict[str, str] | None:
        """A built template's env, on every exec: from the record in memory, with
        none of lookup()'s checks on disk. None for the predefined ones."""
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
        for pkg in definition.packages:
            if not PACKAGE.match(pkg):
                raise InvalidArgument(
                    f"package {pkg!r} is not a package name", reason="BAD_PACKAGE"
                )
        started = time.monotonic()
        async with self._lock:
            return await self._build(definition, no_cache, report, started)

    async def _build(
        self, d: TemplateDefinition, no_cache: bool, report: BuildReport, started: float
    ) -> tuple[TemplateInfo, bool]:
        run_steps = (1 if d.packages else 0) + len(d.setup)
        total = 2 + run_steps + 1  # base, key/cache, steps, commit
        report(BuildStep(1, total, f"resolving base {d.base_image or 'debian (built in)'}"))
        base = await self._resolve_base(d.base_image, report, total)
        key = _cache_key(base.digest, d)
        report(BuildStep(2, total, f"cache key {key[:19]}"))
        hit = None if no_cache else self._find_built(key)
        if hit is not None:
            report(BuildStep(total, total, f"cache hit: {hit['name']} has {key[:19]}"))
            layer_list = _strs(hit["layers"])
        else:
            top = await self._run_steps(d, base, report, total)
            layer_list = [top, *base.layers]
        env = {**base.env, **d.env}
        rec: dict[str, object] = {
            "v": RECORD_VERSION,
            "name": d.name,
            "description": d.description,
            "definition": {
                "base_image": d.base_image,
                "packages": list(d.packages),
                "env": d.env,
                "setup": list(d.setup),
            },
            "digest": key,
            "base_image_digest": base.digest if d.base_image else "",
            "env": env,
            "layers": layer_list,
            "blobs": base.blobs,
            "created_at": time.time(),
            "size_bytes": await asyncio.to_thread(self._size, layer_list),
        }
        _write_json(self.records / f"{_file_name(d.name)}.json", rec)
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
        return _info(rec), hit is not None

    def _find_built(self, key: str) -> dict[str, object] | None:
        for rec in self._all_records():
            if rec.get("digest") == key and all(
                self._lower(x).is_dir() for x in _strs(rec.get("layers"))
            ):
                return rec
        return None

    async def _resolve_base(self, ref: str, report: BuildReport, total: int) -> _Base:
        if not ref:
            digest = (
                "computesdk:"
                + hashlib.sha256(
                    json.dumps(rootfs_mod.recipe(), sort_keys=True).encode()
                ).hexdigest()
            )
            return _Base([BASE_LAYER], {}, digest, [])
        if ref.startswith("template:"):
            parent = self.lookup(ref[len("template:") :])
            if parent is None:
                raise NotFound(f"base template {ref!r} not found", reason="TEMPLATE_NOT_FOUND")
            if parent.info.unavailable:
                raise FailedPrecondition(
                    f"base template {ref!r}: {parent.info.unavailable}",
                    reason="TEMPLATE_UNAVAILABLE",
                )
            rec = self._record(parent.info.name)
            if rec is None:  # a predefined one: the Debian base, with its env
                base = await self._resolve_base("", report, total)
                return _Base(base.layers, dict(parent.info.env), base.digest, [])
            return _Base(
                _strs(rec["layers"]), dict(parent.info.env), str(rec["digest"]), _strs(rec["blobs"])
            )

        def progress(label: str, done: int, size: int) -> None:
            report(BuildStep(1, total, f"fetching {label}", bytes_done=done, bytes_total=size))

        image = await images.fetch(images.parse(ref), self.blobs, progress)
        unpacked = []
        for i, layer in enumerate(image.layers):
            hexd = layer.digest.split(":", 1)[1]
            report(BuildStep(1, total, f"unpacking layer {i + 1}/{len(image.layers)} {hexd[:12]}"))
            await asyncio.to_thread(self._unpack, layer.digest)
            unpacked.append(hexd)
        blobs = [image.digest, image.config_digest, *(x.digest for x in image.layers)]
        return _Base(list(reversed(unpacked)), image.env(), image.digest, blobs)

    def _unpack(self, digest: str) -> None:
        final = self.layers / digest.split(":", 1)[1]
        if final.is_dir():
            return
        tmp = self.builds / f"unpack-{final.name[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            layers.read_layer(self.blobs.path(digest), tmp, skip_devices=True)
            os.chown(tmp, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
            os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, (OSError, EOFError, ValueError)):
                raise FailedPrecondition(
                    f"layer {digest} cannot be unpacked: {exc}", reason="IMAGE_INVALID"
                ) from exc
            raise

    async def _run_steps(
        self, d: TemplateDefinition, base: _Base, report: BuildReport, total: int
    ) -> str:
        """Runs the packages and setup steps on the base; returns the new layer's name."""
        build_id = f"build-{os.urandom(6).hex()}"
        work = self.builds / build_id
        upper, scratch, root = work / "upper", work / "work", work / "rootfs"
        for p in (upper, scratch, root):
            p.mkdir(parents=True)
        os.chown(upper, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        os.chown(work, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        os.chmod(work, 0o700)  # runc's init passes; no other host user does
        lowers = ":".join(str(self._lower(x)) for x in base.layers)
        try:
            mount(
                "overlay",
                str(root),
                "overlay",
                f"lowerdir={lowers},upperdir={upper},workdir={scratch}",
                MS_NOSUID | MS_NODEV,
            )
            # The build's own user namespace (0 -> the storage uid, owned by it, not
            # host root: per-user limits of a step do not starve the host's root);
            # it owns the build's netns, and each step joins both.
            userns = await idmap.container_userns(rootfs_mod.UID_SHIFT)
            userns_path = f"/proc/{os.getpid()}/fd/{userns}"
            try:
                _sandbox_defaults(root)
                # Its own NAT'd network namespace, never the host's (buildnet.py).
                net = await buildnet.setup(build_id, userns_path)
                (work / "resolv.conf").write_text(net.resolv_conf)
                await buildnet.mount_sysfs(net, work / "sys")
                env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
                env.update(base.env)
                env.update(d.env)
                scripts = []
                if d.packages:
                    pkgs = " ".join(shlex.quote(p) for p in d.packages)
                    scripts.append(
                        (f"installing {', '.join(d.packages)}", _INSTALL.format(pkgs=pkgs))
                    )
                scripts += [(f"setup: {cmd}", cmd) for cmd in d.setup]
                for i, (what, script) in enumerate(scripts, start=3):
                    report(BuildStep(i, total, what))
                    await self._run_step(
                        build_id, work, root, net, userns_path, script, env, i, total, report
                    )
            finally:
                os.close(userns)
                umount(str(work / "sys"))
                umount(str(root))
                # Also when setup was cancelled midway (its thread runs on; the lock
                # makes this wait for it).
                await buildnet.teardown(build_id)
            report(BuildStep(total, total, "committing the layer"))
            return await asyncio.to_thread(self._commit, upper)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _run_step(
        self,
        build_id: str,
        work: Path,
        root: Path,
        net: buildnet.BuildNet,
        userns: str,
        script: str,
        env: dict[str, str],
        step: int,
        total: int,
        report: BuildReport,
    ) -> None:
        spec = build_spec(
            build_id=build_id,
            root_path=str(root),
            script=script,
            env=env,
            resources=BUILD_RESOURCES,
            cgroup_parent=self._cgroup,
            netns=net.netns,
            userns=userns,
            sysfs=str(work / "sys"),
            binds=_host_files(root, work),
        )
        (work / "config.json").write_text(json.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            *self._runc("run", "--no-new-keyring", "--bundle", str(work), build_id),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        tail: list[str] = []

        async def pump(stream: asyncio.StreamReader | None, is_err: bool) -> None:
            assert stream is not None
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line past the reader's limit: take it in pieces
                    raw = await stream.read(LOG_LINE_MAX)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\n")[:LOG_LINE_MAX]
                tail.append(line)
                del tail[:-20]
                report(BuildStep(step, total, line=line, stderr=is_err))

        try:
            await asyncio.wait_for(
                asyncio.gather(pump(proc.stdout, False), pump(proc.stderr, True), proc.wait()),
                STEP_TIMEOUT_S,
            )
        except BaseException:
            # Cancelled (the client went away, the daemon stops) or timed out.
            with contextlib.suppress(Exception):
                await run(*self._runc("kill", build_id, "KILL"))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        finally:
            with contextlib.suppress(Exception):
                await run(*self._runc("delete", "--force", build_id))
        if proc.returncode != 0:
            raise FailedPrecondition(
                f"template build step {step} exited with {proc.returncode}: "
                + " | ".join(tail[-5:]),
                reason="TEMPLATE_BUILD_FAILED",
                step=str(step),
                exit_code=str(proc.returncode),
            )

    def _commit(self, upper: Path) -> str:
        """Names the build layer by the sha256 of its OCI tar and moves it in place."""
        sink = _HashSink()
        layers.write_layer(upper, sink)  # type: ignore[arg-type]
        name = sink.hash.hexdigest()
        final = self.layers / name
        if final.is_dir():
            shutil.rmtree(upper)
        else:
            os.rename(upper, final)
        return name

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
            raise NotFound(f"template {name!r} not found", reason="TEMPLATE_NOT_FOUND")
        async with self._lock:
            (self.records / f"{_file_name(name)}.json").unlink(missing_ok=True)
            del self._cache[name]
            await asyncio.to_thread(self.collect_garbage)

    def collect_garbage(self) -> None:
        """Frees layers and blobs no template names and no mounted sandbox stands on,
        and builds left by a crash."""
        used_layers = _mounted_lowers(self.layers) | self._pinned()
        used_blobs = set[str]()
        for rec in self._all_records():
            used_layers.update(_strs(rec.get("layers")))
            used_blobs.update(x.split(":", 1)[-1] for x in _strs(rec.get("blobs")))
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


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _host_files(root: Path, work: Path) -> list[tuple[str, str]]:
    """(host file, path in the step) bound read-only over the image's: the build
    network's resolver always (the target is written in the defaults), the host's
    CA bundle where the image has one to cover, so nothing new appears in the layer."""
    out = [(str(work / "resolv.conf"), "/etc/resolv.conf")]
    # The image's side is looked up inside the root (its symlinks resolve there,
    # as runc resolves the mount's target), and must itself be a regular file.
    with safefs.Tree.open(root, safefs.IN_ROOT) as tree:
        for path in HOST_TRUST:
            if Path(path).is_file() and _regular_in(tree, path):  # the host's own file
                out.append((path, path))
    return out


def _regular_in(tree: safefs.Tree, path: str) -> bool:
    try:
        fd = tree.open_at(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


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


def _sandbox_defaults(root: Path) -> None:
    """What every sandbox root needs whatever the image: mount points for the agent,
    a /workspace, and hostname files the daemon edits.

    The image is untrusted: its `etc` or `.computesdk` may be a symlink to a host
    directory, its agent a dangling symlink. Everything here goes fd by fd from
    the root, with no link followed; whatever stands where a directory (or a
    regular file) must be and is not one is removed and made anew."""
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


def _cache_key(base_digest: str, d: TemplateDefinition) -> str:
    body = {
        "v": RECORD_VERSION,
        "base": base_digest,
        "packages": list(d.packages),
        "env": dict(sorted(d.env.items())),
        "setup": list(d.setup),
    }
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _file_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _strs(value: object) -> list[str]:
    return [str(x) for x in value] if isinstance(value, list) else []


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _info(rec: dict[str, object]) -> TemplateInfo:
    d = rec.get("definition")
    d = d if isinstance(d, dict) else {}
    env = rec.get("env")
    return TemplateInfo(
        name=str(rec["name"]),
        provider="local",
        description=str(rec.get("description", "")),
        builtin=False,
        digest=str(rec.get("digest", "")),
        definition=TemplateDefinition(
            name=str(rec["name"]),
            base_image=str(d.get("base_image", "")),
            packages=tuple(_strs(d.get("packages"))),
            env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
            setup=tuple(_strs(d.get("setup"))),
            description=str(rec.get("description", "")),
        ),
        base_image_digest=str(rec.get("base_image_digest", "")),
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        layer_count=len(_strs(rec.get("layers"))),
        size_bytes=int(str(rec.get("size_bytes", 0))),
        created_at=float(str(rec.get("created_at", 0.0))),
    )
