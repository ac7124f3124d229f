"""The local provider: one runc container per sandbox.

Layout of a sandbox (every directory 0700; nothing a host user can traverse):
  <store>/sandboxes/<id>/      root's: the bundle
    disk.img   sparse ext4 image: its size is the sandbox's disk limit
    disk/      the image, mounted nosuid,nodev; the overlay's upper and work dirs
    config.json, agent.log, init.pid
  <runtime>/<id>/              the sandbox root's (runc's init must traverse it)
    rootfs/    overlayfs, nosuid,nodev: the template's layers + the upper layer
    ctl/       root's, bound read-only at /.computesdk/ctl (the channel socket)
  <runtime>/agents/<id>.sock   root's: the agent's control socket, bound by the
                               daemon and inherited by init as fd 3; the sandbox
                               has no path to it, so it cannot be swapped
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from computesdkd.domain.errors import (
    ComputeError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from computesdkd.domain.model import (
    Command,
    FileInfo,
    Output,
    Probe,
    ProcessEvent,
    ProcessInfo,
    Resources,
    Sandbox,
    TemplateDefinition,
    TemplateInfo,
    Usage,
)
from computesdkd.providers import base
from computesdkd.providers.base import ProcessRun, Provider, ProviderContext
from computesdkd.providers.local import builder, host, idmap, layers, network, safefs, storage
from computesdkd.providers.local import rootfs as rootfs_mod
from computesdkd.providers.local.agent import CLOSE, STDIN, Agent, AgentConnection, AgentGone
from computesdkd.providers.local.agentpb import agent_pb2 as agentpb
from computesdkd.providers.local.fs import SandboxFS
from computesdkd.providers.local.host import mount as _mount
from computesdkd.providers.local.host import run as _run
from computesdkd.providers.local.host import umount as _umount
from computesdkd.providers.local.oci import runtime_spec
from computesdkd.providers.local.templates import TEMPLATES, process_env
from computesdkd.support import logs
from computesdkd.support.testhooks import crash

log = logs.get(__name__)

NAME = "local"
DEFAULTS = Resources(cpu_cores=1.0, memory_mb=1024, disk_mb=2048, pids_limit=512)
MAX_CPU_CORES = float(os.cpu_count() or 1)
READY_TIMEOUT_S = 10.0
CGROUP_PARENT = "/computesdk"
RUNTIME_ROOT = Path("/run/computesdk-sandboxes")
MIB = 1024 * 1024
SANDBOX_PREFIX = "sbx-"  # the daemon's sandbox ids; what else is in the dirs is not one
ADOPT_PING_TIMEOUT_S = 5.0
# Sizes a sandbox may ask for. Below the minimums mkfs, runc or the agent fail;
# above MAX_DISK_MB (256 GiB unless set) a disk is refused however free the store.
MIN_CPU_CORES = 0.01  # runc's smallest CFS quota: 1 ms a 100 ms period
MIN_MEMORY_MB = 16
MIN_DISK_MB = 32
MIN_PIDS = 8
MAX_DISK_MB = int(os.environ.get("COMPUTESDK_LOCAL_MAX_DISK_MB", str(256 * 1024)))
# Empty disk images kept to clone from: the default size always, and this many of
# the other sizes, most recently used first (a client cycling sizes cannot fill
# the store).
EMPTY_DISK_CACHE = 3


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 32768


async def _mount_image(image: Path, target: Path) -> None:
    """Loop-mounts an ext4 image with direct I/O: its writes reach the store without
    a second page cache, so memory is counted once and a snapshot (which must see
    them on the store) has nothing left to flush but the ext4's own dirty pages.
    The device autoclears: it goes with the unmount, even when a test or a crash
    skips ours."""
    flags = host.LO_FLAGS_AUTOCLEAR | host.LO_FLAGS_DIRECT_IO
    with host.loop_device(str(image), flags) as device:
        # noinit_itable: mkfs left the inode tables lazy; zeroing them in the
        # background would write tens of MB to the store for every new sandbox.
        _mount(device, str(target), "ext4", "noinit_itable", host.MS_NOSUID | host.MS_NODEV)


def _prepare_layers(disk: Path) -> None:
    """On a new disk: the overlay's upper and work dirs, owned by the storage root
    (the overlay works in them through the sandbox's idmapping)."""
    for sub in ("upper", "work"):
        (disk / sub).mkdir(exist_ok=True)
        os.chown(disk / sub, rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
    with contextlib.suppress(OSError):
        (disk / "lost+found").rmdir()


def _mount_root(lowers: tuple[Path, ...], disk: Path, target: Path, userns: int, uid: int) -> None:
    """The sandbox's root: an overlay of the template's layers and its upper layer,
    each an idmapped view (storage ids -> the sandbox's range) that exists only as
    an fd. nosuid,nodev: a setuid file or device node made inside is inert on the
    host (inside, no_new_privs already ignores setuid bits)."""
    flags = idmap.MOUNT_ATTR_NOSUID | idmap.MOUNT_ATTR_NODEV
    fds: list[int] = []
    try:
        for p in lowers:
            fds.append(idmap.idmapped_clone(str(p), userns, flags | idmap.MOUNT_ATTR_RDONLY))
        lower_fds = list(fds)
        top = idmap.idmapped_clone(str(disk), userns, flags)
        fds.append(top)
        dirs = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        upper = os.open("upper", dirs, dir_fd=top)
        fds.append(upper)
        work = os.open("work", dirs, dir_fd=top)
        fds.append(work)
        idmap.mount_overlay(lower_fds, upper, work, str(target), uid)
    finally:
        for fd in fds:
            os.close(fd)


def _unmount_volumes(rt: Path) -> None:
    """Each volume's view for this sandbox (before anything removes rt: a recursive
    remove would walk into a mounted volume)."""
    with contextlib.suppress(FileNotFoundError):
        for point in (rt / "volumes").iterdir():
            _umount(str(point))


def _private_images(image_dir: Path) -> None:
    """The base is owned by the storage uid and holds its setuid files (su, mount):
    no host user may reach them, whatever the umask made of the dir."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(image_dir, 0o700)


def _warn_subuid_overlap() -> None:
    """A host user whose /etc/subuid range covers the storage or sandbox uids can
    become them (newuidmap, rootless containers): say so at start."""
    ours = [
        (rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT + rootfs_mod.ID_RANGE),
        (idmap.SLOT_BASE, idmap.host_base(idmap.MAX_SLOTS)),
    ]
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                user, _, rest = line.partition(":")
                start, _, count = rest.partition(":")
                if not (start.isdigit() and count.isdigit()):
                    continue
                lo, hi = int(start), int(start) + int(count)
                if any(lo < b and a < hi for a, b in ours):
                    log.warning(
                        "a subordinate id range overlaps the sandboxes' host ids",
                        file=path,
                        user=user,
                        start=lo,
                        count=hi - lo,
                    )


def _fresh_workdir(disk: Path) -> None:
    """The overlay's work dir holds nothing between mounts; a disk made before uid
    ranges has one owned by host root, which an idmapped overlay cannot use."""
    fd = safefs.open_trusted_dir(disk)
    try:
        with contextlib.suppress(FileNotFoundError):
            safefs.remove_tree(fd, "work")
        os.mkdir("work", 0o700, dir_fd=fd)
        os.chown("work", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT, dir_fd=fd)
    finally:
        os.close(fd)


async def _wait_exit(pid: int, timeout: float) -> None:
    """Waits for a process to end: its pidfd becomes readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(TimeoutError):
            await host.wait_pidfd(fd, timeout)
    finally:
        os.close(fd)


def _in_cgroup(pid: int, cgroup: str) -> bool:
    with open(f"/proc/{pid}/cgroup") as f:
        return any(line.rstrip("\n").endswith(":" + cgroup) for line in f)


def _kill_init(pid: int, cgroup: str) -> bool:
    """SIGKILLs a sandbox's init without a `runc kill` process (~6 ms). The pidfd
    pins the process before its cgroup is checked, so a recycled pid is never hit."""
    if pid <= 0:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not _in_cgroup(pid, cgroup):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _open_init_root(pid: int, cgroup: str) -> int:
    """An O_PATH fd on `/` as the sandbox's init sees it, in its own mount namespace.
    The pidfd pins the process while its cgroup is checked and the root opened; a
    signal 0 through it afterwards proves the pid was not recycled in between."""
    if pid <= 0:
        raise ProcessLookupError(pid)
    pidfd = os.pidfd_open(pid)
    try:
        if not _in_cgroup(pid, cgroup):
            raise ProcessLookupError(pid)
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except BaseException:
            os.close(root)
            raise
        return root
    finally:
        os.close(pidfd)


def _is_live_init(pid: int, cgroup: str) -> bool:
    """Whether pid is a live (not zombie) process in the sandbox's cgroup."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        mine = _in_cgroup(pid, cgroup)
    except OSError:
        return False
    return mine and stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _unescape(field: str) -> str:
    """A mountinfo field as the path it names (the kernel octal-escapes blanks)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every mount in the daemon's mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), _unescape(fields[sep + 2])))
    return out


async def _remove_cgroups(sandbox_id: str, orphan: bool = False) -> bool:
    """Removes the sandbox's cgroup in every v1 hierarchy (runc delete does, unless
    it was cut short), killing what still runs in it first. False if one stays."""
    removed = True
    for d in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT.strip('/')}/{sandbox_id}"):
        if not d.is_dir():
            continue
        for _ in range(50):
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                for sub in sorted(d.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()
                d.rmdir()
                if orphan:
                    log.warning("removed an orphan cgroup", path=str(d))
                break
            except FileNotFoundError:
                break
            except OSError:
                await asyncio.sleep(0.02)  # killed tasks leave their cgroup as they exit
        else:
            log.error("could not remove a cgroup", path=str(d))
            removed = False
    return removed


def _mounted_device(target: Path) -> str:
    return next((source for point, source in _mounts() if point == str(target)), "")


def default_agent_binary() -> Path:
    env = os.environ.get("COMPUTESDK_AGENT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "_bin" / "computesdk-agent"


@base.register("local")
class LocalProvider(Provider):
    name = "local"
    capabilities = frozenset(
        {
            base.EXEC,
            base.EXEC_STDIN,
            base.EXEC_RESUME,
            base.BACKGROUND,
            base.SIGNALS,
            base.FILESYSTEM,
            base.EVENTS,
            base.RESOURCE_LIMITS,
            base.USAGE,
            base.OOM_EVENTS,
            base.NETWORK_ISOLATION,
            base.DISK_LIMIT,
            base.RESET,
            base.RESET_HARD,
            base.SHARED_NETWORK,
            base.PORT_FORWARD,
            base.SNAPSHOTS,
            base.RESTART,
            base.VOLUMES,
            base.TEMPLATE_BUILD,
        }
    )

    def __init__(self, cfg: base.ProviderConfig) -> None:
        self._state = Path()
        self._store = Path()
        self._reflink = False
        self._empty_lock: dict[int, asyncio.Lock] = {}
        self._empty_users: dict[int, int] = {}  # creates cloning each cached size now
        self._base = rootfs_mod.base_path()
        self._agent_binary = default_agent_binary()
        self._agent_copy = self._agent_binary
        self._runtime = RUNTIME_ROOT
        self._unavailable = "not started"
        self._emit: Callable[..., object] | None = None
        self._templates: builder.TemplateStore | None = None
        self._slots = idmap.Slots(Path(), RUNTIME_ROOT, "")  # made for real in start()
        self._warming: asyncio.Task[None] | None = None
        self._userns = idmap.UserNamespaces()
        # Template layers each live sandbox stands on: its overlay holds them by fd,
        # so the mount table no longer tells, and a template delete must not free them.
        self._pins: dict[str, set[str]] = {}

    # -------------------------------------------------------------- set-up

    async def start(self, ctx: ProviderContext) -> None:
        self._emit = ctx.emit
        self._state = ctx.state_dir / "local"
        self._state.mkdir(parents=True, exist_ok=True)
        # Traversable (a build's runc init must reach its root in the store), not
        # listable; everything with content below is 0700.
        os.chmod(self._state, 0o711)
        _private_images(self._base.parent)
        _warn_subuid_overlap()
        self._store, self._reflink = await asyncio.to_thread(storage.ensure_store, self._state)
        for sub in ("sandboxes", "snapshots", "volumes", "cache", "tmp"):
            (self._store / sub).mkdir(exist_ok=True)
            os.chmod(self._store / sub, 0o700)
        self._templates = builder.TemplateStore(
            self._store, self._base, self._runc, CGROUP_PARENT, self._pinned_layers
        )
        await self._templates.clean_leftovers()
        # Volume mounts do not outlive a reboot of the host; put them back.
        for d in sorted((self._store / "volumes").iterdir()):
            if (d / "volume.img").exists():
                with contextlib.suppress(Internal, OSError):
                    await self._volume_mount(d.name)
        # What the sandbox's unprivileged init must reach (its root mount, the agent
        # binary, its ctl dir) lives under /run, whose parents anyone may traverse, so
        # the state dir may sit under a private directory (a mktemp dir, /root).
        key = hashlib.sha256(str(self._state.resolve()).encode()).hexdigest()[:12]
        self._runtime = RUNTIME_ROOT / key
        (self._runtime / "agents").mkdir(parents=True, exist_ok=True)
        for d, mode in ((RUNTIME_ROOT, 0o711), (self._runtime, 0o711)):
            os.chmod(d, mode)
        os.chmod(self._runtime / "agents", 0o700)
        leases = RUNTIME_ROOT / "uid-slots"  # host-wide: every daemon's sandboxes
        leases.mkdir(mode=0o700, exist_ok=True)
        os.chmod(leases, 0o700)
        self._slots = idmap.Slots(leases, RUNTIME_ROOT, key)
        self._unavailable = self._check()
        if not self._unavailable:
            self._agent_copy = self._runtime / "computesdk-agent"
            tmp = self._runtime / f".agent-{os.getpid()}"
            shutil.copyfile(self._agent_binary, tmp)
            os.chmod(tmp, 0o755)
            tmp.rename(self._agent_copy)  # running sandboxes keep the inode they mounted
            self._warming = asyncio.create_task(self._userns.warm(self._slots.likely(2)))
        if self._unavailable:
            log.warning("local provider unavailable", why=self._unavailable)

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        self._userns.close()

    def _check(self) -> str:
        if os.geteuid() != 0:
            return "the local provider needs root (runc, overlayfs, cgroups)"
        if shutil.which("runc") is None:
            return "runc is not installed (apt-get install -y runc)"
        if not rootfs_mod.is_built():
            return (
                f"the base root filesystem is not built at {self._base} "
                "(python -m computesdkd.providers.local.rootfs)"
            )
        if not self._agent_binary.is_file():
            return f"the sandbox agent is not built at {self._agent_binary} (scripts/setup.sh)"
        return ""

    def availability(self) -> str:
        return self._unavailable

    def templates(self) -> list[str]:
        return self._templates.names() if self._templates else sorted(TEMPLATES)

    def template_infos(self) -> list[TemplateInfo]:
        if self._templates is None:
            return super().template_infos()
        return self._templates.infos()

    async def build_template(
        self, definition: TemplateDefinition, no_cache: bool, report: base.BuildReport
    ) -> tuple[TemplateInfo, bool]:
        self._require()
        assert self._templates is not None
        return await self._templates.build(definition, no_cache, report)

    async def delete_template(self, name: str) -> None:
        self._require()
        assert self._templates is not None
        await self._templates.delete(name)

    def _template(self, name: str) -> builder.Template:
        """The template a sandbox starts from; a clear error when it cannot."""
        tpl = self._templates.lookup(name) if self._templates else None
        if tpl is None:
            raise NotFound(
                f"template {name!r} is not known to provider 'local' "
                f"(known: {', '.join(self.templates())})",
                reason="TEMPLATE_NOT_FOUND",
                template=name,
                provider="local",
            )
        if tpl.info.unavailable:
            raise FailedPrecondition(
                f"template {name!r} cannot run on provider 'local': {tpl.info.unavailable}",
                reason="TEMPLATE_UNAVAILABLE",
                template=name,
                provider="local",
            )
        return tpl

    def _require(self) -> None:
        if self._unavailable:
            raise Unavailable(
                f"provider 'local' cannot run here: {self._unavailable}",
                reason="PROVIDER_UNAVAILABLE",
                provider="local",
            )

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self._state / "runc"), *args]

    # -------------------------------------------------------------- lifecycle

    def resolve_resources(self, sandbox: Sandbox) -> Resources:
        r = sandbox.spec.resources
        if r.gpu_enabled:
            raise FailedPrecondition(
                "provider 'local' has no GPU on this host",
                reason="GPU_UNAVAILABLE",
                provider="local",
                feature="gpu",
            )
        cpu = r.cpu_cores or DEFAULTS.cpu_cores
        if cpu > MAX_CPU_CORES:
            raise ResourceExhausted(
                f"cpu_cores {cpu} exceeds this host's {MAX_CPU_CORES:g}",
                reason="RESOURCES_UNAVAILABLE",
                resource="cpu_cores",
            )
        res = Resources(
            cpu_cores=cpu,
            memory_mb=r.memory_mb or DEFAULTS.memory_mb,
            disk_mb=r.disk_mb or DEFAULTS.disk_mb,
            pids_limit=r.pids_limit or DEFAULTS.pids_limit,
        )
        # Every bound is checked before anything is made: a refused size costs
        # nothing, and the error names the resource (RESOURCE_EXHAUSTED when the
        # host cannot give it, INVALID_ARGUMENT when no sandbox could use it).
        for name, value, low in (
            ("cpu_cores", res.cpu_cores, MIN_CPU_CORES),
            ("memory_mb", res.memory_mb, MIN_MEMORY_MB),
            ("disk_mb", res.disk_mb, MIN_DISK_MB),
            ("pids_limit", res.pids_limit, MIN_PIDS),
        ):
            if not value >= low:  # also NaN
                raise InvalidArgument(
                    f"{name} {value:g} is below the minimum of {low:g}",
                    reason="INVALID_RESOURCES",
                    resource=name,
                )
        if res.memory_mb * MIB > _host_memory():
            raise ResourceExhausted(
                f"memory_mb {res.memory_mb} exceeds this host's memory",
                reason="RESOURCES_UNAVAILABLE",
                resource="memory_mb",
            )
        pid_max = _pid_max()
        if res.pids_limit > pid_max:
            raise ResourceExhausted(
                f"pids_limit {res.pids_limit} exceeds this host's pid_max {pid_max}",
                reason="RESOURCES_UNAVAILABLE",
                resource="pids_limit",
            )
        self._check_disk(res.disk_mb)
        return res

    def _check_disk(self, disk_mb: int, grow_mb: int | None = None) -> None:
        """A disk image is sparse, but its size is a promise: no larger than the cap,
        nor (the new part, grow_mb, when an existing disk grows) than what the store
        has free."""
        if disk_mb > MAX_DISK_MB:
            raise ResourceExhausted(
                f"disk_mb {disk_mb} exceeds the cap of {MAX_DISK_MB} "
                "(COMPUTESDK_LOCAL_MAX_DISK_MB)",
                reason="RESOURCES_UNAVAILABLE",
                resource="disk_mb",
                limit_mb=str(MAX_DISK_MB),
            )
        try:
            free_mb = shutil.disk_usage(self._store).free // MIB
        except OSError:
            return
        if (disk_mb if grow_mb is None else grow_mb) > free_mb:
            raise ResourceExhausted(
                f"disk_mb {disk_mb} exceeds the {free_mb} MB free in the sandbox store",
                reason="RESOURCES_UNAVAILABLE",
                resource="disk_mb",
                limit_mb=str(free_mb),
            )

    async def create(self, sandbox: Sandbox) -> None:
        self._require()
        self._template(sandbox.spec.template)
        # Set by the daemon to start from a snapshot's files instead of the template's.
        source = sandbox.provider_data.get("from_snapshot", "")
        layer = sandbox.provider_data.get("import_layer", "")
        volumes = sandbox.provider_data.get("volumes", "[]")
        res = sandbox.resources = self.resolve_resources(sandbox)
        bundle = self._store / "sandboxes" / sandbox.id
        sandbox.provider_sandbox_id = sandbox.id
        sandbox.provider_data = {
            "bundle": str(bundle),
            "runtime": str(self._runtime / sandbox.id),
            "volumes": volumes,
        }
        try:
            bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self._new_disk(
                bundle, res.disk_mb, self._snapshot_path(source) if source else None
            )
            if layer:
                await self._import_layer(bundle, Path(layer))
            await self._boot(sandbox)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.destroy(sandbox)
            raise

    def _snapshot_path(self, snapshot_id: str) -> Path:
        path = self._store / "snapshots" / f"{snapshot_id}.img"
        if not snapshot_id.replace("-", "").isalnum() or not path.exists():
            raise NotFound(f"snapshot {snapshot_id!r} has no data", reason="SNAPSHOT_NOT_FOUND")
        return path

    async def _new_disk(self, bundle: Path, disk_mb: int, source: Path | None) -> None:
        """The upper layer's disk: a clone of a snapshot, or a new empty ext4."""
        img = bundle / "disk.img"
        if source is not None:
            await asyncio.to_thread(storage.clone_file, source, img, self._reflink)
            if img.stat().st_size < disk_mb * 1024 * 1024:
                with img.open("r+b") as f:
                    f.truncate(disk_mb * 1024 * 1024)
                await _run("e2fsck", "-fp", str(img))
                await _run("resize2fs", str(img))
        elif self._reflink:
            # A clone of an empty disk made once per size: cheaper than mkfs.
            self._empty_users[disk_mb] = self._empty_users.get(disk_mb, 0) + 1
            try:
                empty = await self._empty_disk(disk_mb)
                await asyncio.to_thread(storage.clone_file, empty, img, True)
            finally:
                self._empty_users[disk_mb] -= 1
                if not self._empty_users[disk_mb]:
                    del self._empty_users[disk_mb]
        else:
            await self._mkfs(img, disk_mb)
        crash("create.disk")

    async def _empty_disk(self, disk_mb: int) -> Path:
        path = self._store / "cache" / f"empty-{disk_mb}.img"
        async with self._empty_lock.setdefault(disk_mb, asyncio.Lock()):
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                await self._mkfs(tmp, disk_mb)
                mnt = path.with_suffix(".mnt")
                mnt.mkdir(exist_ok=True)
                await _mount_image(tmp, mnt)
                try:
                    _prepare_layers(mnt)
                finally:
                    _umount(str(mnt))
                    mnt.rmdir()
                tmp.rename(path)
                self._prune_empty_disks()  # only a new size can overfill the cache
            else:
                os.utime(path)  # its mtime is its last use, across restarts too
        return path

    def _prune_empty_disks(self) -> None:
        """Keeps the default size and the EMPTY_DISK_CACHE most recently used other
        sizes; deletes the rest, never one being made or cloned from right now."""
        sizes: list[tuple[float, int, Path]] = []
        for img in (self._store / "cache").glob("empty-*.img"):
            with contextlib.suppress(ValueError, OSError):
                sizes.append((img.stat().st_mtime, int(img.stem.removeprefix("empty-")), img))
        others = sorted((e for e in sizes if e[1] != DEFAULTS.disk_mb), reverse=True)
        for _, size, img in others[EMPTY_DISK_CACHE:]:
            lock = self._empty_lock.get(size)
            if self._empty_users.get(size) or (lock is not None and lock.locked()):
                continue
            img.unlink(missing_ok=True)
            self._empty_lock.pop(size, None)
            log.info("dropped a cached empty disk", disk_mb=size)

    async def _mkfs(self, img: Path, disk_mb: int) -> None:
        with img.open("wb") as f:
            f.truncate(disk_mb * 1024 * 1024)
        # With a journal, an image cloned while the sandbox writes is what a power
        # cut would leave, and mounting it replays to a consistent filesystem: that
        # is what lets a snapshot skip freezing the sandbox.
        await _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            # 4 KiB blocks even on small disks: the direct-I/O loop device has
            # 4 KiB sectors, and mkfs would pick 1 KiB under 512 MiB.
            "-b",
            "4096",
            "-J",
            "size=8",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            str(img),
        )

    async def _boot(self, sandbox: Sandbox) -> None:
        """Mounts the disk and the overlay, and starts the container on them."""
        uid = self._uid_base(sandbox)
        userns = await self._userns.mapping(uid)
        bundle, rt = self._paths(sandbox)
        disk = bundle / "disk"
        disk.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The sandbox's root owns its runtime dir so that runc's init (that uid, in
        # its user namespace) can reach rootfs/ and ctl/; 0700 keeps everyone
        # else on the host, and every other sandbox, out of the sandbox's files.
        rt.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(rt, uid, uid)
        os.chmod(rt, 0o700)
        for sub, mode in (("rootfs", 0o700), ("ctl", 0o755), ("volumes", 0o700)):
            (rt / sub).mkdir(mode=mode, exist_ok=True)
        lowers = self._template(sandbox.spec.template).lowers
        # Kept with the record: after a restart of the daemon, these (not what the
        # template names by then) are what this sandbox's overlay stands on.
        sandbox.provider_data["layers"] = json.dumps([p.name for p in lowers])
        self._pins[sandbox.id] = {p.name for p in lowers}
        await _mount_image(bundle / "disk.img", disk)
        # The disk's root is host root's: through the idmapping that is an unmapped
        # owner, so the overlay may pass it only as "others" (the bundle, 0700,
        # keeps host users out).
        os.chmod(disk, 0o711)
        if not (disk / "upper").exists():
            _prepare_layers(disk)
        else:
            await asyncio.to_thread(_fresh_workdir, disk)
        _mount_root(lowers, disk, rt / "rootfs", userns, uid)
        volumes = json.loads(sandbox.provider_data.get("volumes", "[]"))
        for i, (name, _, _) in enumerate(volumes):
            # The volume as this sandbox's ids see it, for runc to bind in.
            point = rt / "volumes" / str(i)
            point.mkdir(mode=0o700, exist_ok=True)
            _umount(str(point))
            mnt = idmap.idmapped_clone(
                str(self._volume_dir(name) / "data"),
                userns,
                idmap.MOUNT_ATTR_NOSUID | idmap.MOUNT_ATTR_NODEV,
            )
            try:
                idmap.attach(mnt, str(point))
            finally:
                os.close(mnt)
        spec = runtime_spec(
            sandbox_id=sandbox.id,
            root_path=str(rt / "rootfs"),
            ctl_dir=str(rt / "ctl"),
            agent_binary=str(self._agent_copy),
            resources=sandbox.resources,
            cgroup_parent=CGROUP_PARENT,
            uid_base=uid,
            volumes=[
                (str(rt / "volumes" / str(i)), path, bool(ro))
                for i, (_, path, ro) in enumerate(volumes)
            ],
        )
        log_path = bundle / "agent.log"
        with contextlib.ExitStack() as held:
            container_ns = await self._userns.container(uid)  # the slot's, kept
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "user":
                    ns["path"] = f"/proc/{os.getpid()}/fd/{container_ns}"
            (bundle / "config.json").write_text(json.dumps(spec))
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            log_fd = os.open(log_path, flags, 0o600)
            held.callback(os.close, log_fd)
            # A restart binds a new socket: the last agent's queue must not be reused.
            # Init holds it once started; once init is gone, connects are refused.
            control = held.enter_context(host.listen_unix(self._agent_socket(sandbox)))
            try:
                await host.spawn(
                    self._runc(
                        "run",
                        "--detach",
                        # A keyring per sandbox would count against its root's key
                        # quota for nothing: keyctl is refused inside anyway.
                        "--no-new-keyring",
                        "--preserve-fds",
                        "1",
                        "--bundle",
                        str(bundle),
                        "--pid-file",
                        str(bundle / "init.pid"),
                        sandbox.id,
                    ),
                    fds={1: log_fd, 2: log_fd, 3: control.fileno()},
                )
            except Internal as exc:
                tail = log_path.read_text(errors="replace")[-2000:].strip()
                raise Internal(f"runc could not start the sandbox: {tail}") from exc
        sandbox.provider_data["init_pid"] = (bundle / "init.pid").read_text().strip()
        await self._agent(sandbox).wait_ready(READY_TIMEOUT_S)

    def _paths(self, sandbox: Sandbox) -> tuple[Path, Path]:
        """(bundle, runtime dir), also for a record that a create killed before its
        provider_data was saved names neither."""
        bundle = Path(sandbox.provider_data.get("bundle") or self._store / "sandboxes" / sandbox.id)
        runtime = sandbox.provider_data.get("runtime") or (
            sandbox.provider_data.get("bundle") or self._runtime / sandbox.id
        )
        return bundle, Path(runtime)

    async def _halt(self, sandbox: Sandbox) -> None:
        """Stops the container and unmounts its layers; the disk image stays.
        Idempotent: on a sandbox already halted (or never started) it checks, and
        raises when the container or a mount is still there, so the caller retries."""
        bundle, rt = self._paths(sandbox)
        # `runc delete --force` on a running container sleeps 100 ms before it
        # looks again; killing init (and with it the pid namespace) and watching
        # it go first makes the delete a quick cleanup. SIGKILL also ends a
        # stopped (SIGSTOP, frozen) init.
        pid = self._init_pid(sandbox)
        killed = _kill_init(pid, f"{CGROUP_PARENT}/{sandbox.id}")
        if not killed and (self._state / "runc" / sandbox.id).exists():
            with contextlib.suppress(Internal):
                await _run(*self._runc("kill", sandbox.id, "KILL"), timeout=10.0)
        if killed:
            await _wait_exit(pid, 5.0)
        if (self._state / "runc" / sandbox.id).exists():
            with contextlib.suppress(Internal, TimeoutError):
                await _run(*self._runc("delete", "--force", sandbox.id), timeout=15.0)
            if (self._state / "runc" / sandbox.id).exists():
                raise Internal(f"runc could not delete container {sandbox.id}")
        sandbox.provider_data.pop("init_pid", None)  # a recycled pid must never be hit
        if not await _remove_cgroups(sandbox.id):
            raise Internal(f"the cgroups of {sandbox.id} cannot be removed")
        _umount(str(rt / "rootfs"))
        _unmount_volumes(rt)
        _umount(str(bundle / "disk"))

    async def destroy(self, sandbox: Sandbox, graceful_timeout_s: float = 0.0) -> None:
        """Frees the container, mounts (and with them the loop device), cgroups and
        dirs. Safe to call again on a sandbox destroyed in part; raises Internal
        while anything is left, and the daemon retries."""
        bundle, rt = self._paths(sandbox)
        if graceful_timeout_s > 0:
            await self._stop_gracefully(sandbox, graceful_timeout_s)
        await self._halt(sandbox)
        crash("destroy.halted")
        for d in {bundle, rt}:
            # Never through a mount (a volume's view, should one be left).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safefs.remove_dir, d)
        self._agent_socket(sandbox).unlink(missing_ok=True)
        left = [str(d) for d in {bundle, rt} if d.exists()]
        if left:
            raise Internal(f"destroy left {', '.join(sorted(left))} behind")
        self._release(sandbox)

    async def restart(self, sandbox: Sandbox, wipe: bool) -> None:
        """A new container on the same disk (or, with wipe, a new empty one)."""
        bundle = Path(sandbox.provider_data["bundle"])
        self._template(sandbox.spec.template)
        sandbox.resources = self.resolve_resources(sandbox)
        await self._halt(sandbox)
        if wipe:
            (bundle / "disk.img").unlink(missing_ok=True)
            await self._new_disk(bundle, sandbox.resources.disk_mb, None)
        await self._boot(sandbox)

    # -------------------------------------------------------------- volumes
    # Each volume is an ext4 image (its size is the limit) mounted once on the host
    # and bind-mounted into every sandbox that uses it.

    def _volume_dir(self, name: str) -> Path:
        return self._store / "volumes" / name

    async def volume_create(self, name: str, size_mb: int) -> None:
        self._require()
        d = self._volume_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        img = d / "volume.img"
        if not img.exists():
            with img.open("wb") as f:
                f.truncate(size_mb * 1024 * 1024)
            await _run(
                "mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", "-E", "nodiscard", str(img)
            )
        await self._volume_mount(name)

    async def _volume_mount(self, name: str) -> None:
        # Only root passes: each sandbox reaches the volume through its own
        # idmapped view in its runtime dir, never through this path.
        d = self._volume_dir(name)
        os.chmod(d, 0o700)
        (d / "data").mkdir(exist_ok=True)
        if storage.is_mountpoint(d / "data"):
            return
        await _mount_image(d / "volume.img", d / "data")
        # Root in a sandbox owns the volume's root directory.
        os.chown(d / "data", rootfs_mod.UID_SHIFT, rootfs_mod.UID_SHIFT)
        with contextlib.suppress(OSError):
            (d / "data" / "lost+found").rmdir()

    async def volume_delete(self, name: str) -> None:
        d = self._volume_dir(name)
        _umount(str(d / "data"))
        await asyncio.to_thread(shutil.rmtree, d, True)

    def volume_used_bytes(self, name: str) -> int:
        try:
            st = os.statvfs(self._volume_dir(name) / "data")
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    # -------------------------------------------------------------- snapshots

    async def snapshot_create(self, sandbox: Sandbox, snapshot_id: str) -> int:
        bundle = Path(sandbox.provider_data["bundle"])
        dst = self._store / "snapshots" / f"{snapshot_id}.img"

        def take() -> int:
            # Everything written before this call reaches the image, then one
            # atomic clone (XFS holds the image's I/O lock while it remaps). No
            # freeze: on this kernel a freeze waits out RCU grace periods (~25 ms).
            storage.syncfs(bundle / "disk")
            storage.clone_file(bundle / "disk.img", dst, self._reflink)
            st = os.statvfs(bundle / "disk")
            return (st.f_blocks - st.f_bfree) * st.f_frsize

        return await asyncio.to_thread(take)

    async def snapshot_restore(self, sandbox: Sandbox, snapshot_id: str) -> None:
        source = self._snapshot_path(snapshot_id)
        bundle = Path(sandbox.provider_data["bundle"])
        await self._halt(sandbox)
        await asyncio.to_thread(storage.clone_file, source, bundle / "disk.img", self._reflink)
        await self._boot(sandbox)

    async def _import_layer(self, bundle: Path, layer: Path) -> None:
        """Fills a new disk's upper layer from a tar layer, before the first boot."""
        disk = bundle / "disk"
        disk.mkdir(parents=True, exist_ok=True)
        await _mount_image(bundle / "disk.img", disk)
        try:
            _prepare_layers(disk)
            await asyncio.to_thread(layers.read_layer, layer, disk / "upper")
        finally:
            _umount(str(disk))

    async def snapshot_export(self, snapshot_id: str, layer: Path) -> None:
        # A twin of the snapshot is mounted read-write, so that its journal is
        # replayed there and the snapshot itself stays as it was taken.
        tmp = self._store / "tmp"
        tmp.mkdir(exist_ok=True)
        twin = tmp / f"export-{snapshot_id}.img"
        mnt = tmp / f"export-{snapshot_id}"
        mnt.mkdir(exist_ok=True)
        try:
            await asyncio.to_thread(
                storage.clone_file, self._snapshot_path(snapshot_id), twin, self._reflink
            )
            await _mount_image(twin, mnt)
            try:

                def write() -> None:
                    with layer.open("wb") as out:
                        layers.write_layer(mnt / "upper", out)

                await asyncio.to_thread(write)
            finally:
                _umount(str(mnt))
        finally:
            twin.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def snapshot_ids(self) -> list[str]:
        snaps = self._store / "snapshots"
        # Half-written clones (*.tmp) of a daemon that died are listed to be freed too.
        return (
            sorted(p.name.removesuffix(".img") for p in snaps.iterdir()) if snaps.exists() else []
        )

    async def snapshot_delete(self, snapshot_id: str) -> None:
        (self._store / "snapshots" / f"{snapshot_id}.img").unlink(missing_ok=True)
        (self._store / "snapshots" / f"{snapshot_id}").unlink(missing_ok=True)

    async def _stop_gracefully(self, sandbox: Sandbox, timeout_s: float) -> None:
        """SIGTERM to every process, then up to timeout_s for them to end. Each agent
        call has only what is left of the grace: a hung or frozen agent (one that
        accepts and never answers) costs the grace, never more."""
        agent = self._agent(sandbox)
        deadline = time.monotonic() + timeout_s

        async def call(step: Callable[[], Any]) -> Any:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(step(), left)

        with contextlib.suppress(Exception):
            await call(lambda: agent.killall(15))
            while time.monotonic() < deadline:
                procs: list[ProcessInfo] = await call(agent.processes)
                if not any(p.running for p in procs):
                    return
                await asyncio.sleep(0.05)

    async def adopt(self, sandbox: Sandbox) -> bool:
        # Bounded: a frozen agent must not hold up the daemon's start.
        try:
            state = json.loads(await _run(*self._runc("state", sandbox.id), timeout=10.0))
        except (Internal, ValueError, TimeoutError):
            return False
        if state.get("status") != "running":
            return False
        sandbox.provider_data["init_pid"] = str(state.get("pid", ""))
        if not sandbox.provider_data.get("uid_base"):
            return await self._upgrade(sandbox)
        self._uid_base(sandbox)  # its range stays taken
        try:
            await asyncio.wait_for(self._agent(sandbox).ping(), ADOPT_PING_TIMEOUT_S)
        except Exception:
            return False
        self._pins[sandbox.id] = self._layers_of(sandbox)
        return True

    async def _upgrade(self, sandbox: Sandbox) -> bool:
        """A sandbox an earlier version started: the storage uid for every sandbox,
        its agent on a socket in a dir the sandbox could write. It is not reached
        that way again: its processes end and it boots anew on the same disk, in a
        uid range of its own (as a restart would), so its files survive the
        upgrade."""
        log.warning("restarting a sandbox made by an earlier version on the same disk")
        try:
            await self._halt(sandbox)
            _, rt = self._paths(sandbox)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safefs.remove_dir, rt / "run")  # the old run dir
            await self._boot(sandbox)
        except (ComputeError, OSError) as exc:
            log.error("could not restart a sandbox of an earlier version", error=str(exc))
            return False
        if self._emit is not None:
            self._emit(
                sandbox.id,
                "restarted",
                "restarted by a daemon upgrade: its processes ended, its files are kept",
                cause="upgrade",
            )
        sandbox.provider_data["restarted_at_adopt"] = "1"  # the daemon forgets them
        return True

    def _layers_of(self, sandbox: Sandbox) -> set[str]:
        with contextlib.suppress(ValueError, TypeError):
            return {str(x) for x in json.loads(sandbox.provider_data["layers"])}
        with contextlib.suppress(ComputeError, KeyError):
            return {p.name for p in self._template(sandbox.spec.template).lowers}
        return set()

    async def reconcile(self, live_ids: set[str]) -> None:
        """At start, once the daemon has adopted its records: frees what no live
        sandbox owns, as a daemon killed mid-create, -destroy, -clone or -export
        leaves it (a container, overlay and disk mounts, a loop device, cgroups,
        bundle and runtime dirs, half-made cache images), one log line each.

        Only what is this daemon's: containers under its runc root, mounts and
        loop devices under its store and runtime dir, and the cgroups of the ids
        found there (the cgroup tree is shared with other daemons on the host)."""
        if self._unavailable or not self._state.parts:
            return
        # As the kernel names them (mountinfo, backing files): no symlink, no "..".
        store, runtime = self._store.resolve(), self._runtime.resolve()
        sandboxes = store / "sandboxes"
        runc_root = self._state / "runc"
        agents = runtime / "agents"
        ids: set[str] = set()
        for d, suffix in ((runc_root, ""), (sandboxes, ""), (runtime, ""), (agents, ".sock")):
            with contextlib.suppress(OSError):
                ids |= {
                    p.name.removesuffix(suffix)
                    for p in d.iterdir()
                    if p.name.startswith(SANDBOX_PREFIX) and p.name.endswith(suffix)
                }
        orphans = ids - live_ids
        # 1. Containers: `runc delete --force` kills init and removes the cgroups.
        for sid in sorted(orphans):
            if (runc_root / sid).exists():
                with contextlib.suppress(Internal, TimeoutError):
                    await _run(*self._runc("delete", "--force", sid), timeout=15.0)
                if (runc_root / sid).exists():
                    # A state dir runc cannot read (killed mid-create): nothing runs
                    # from it once its cgroups are empty (step 4).
                    await asyncio.to_thread(shutil.rmtree, runc_root / sid, True)
                log.warning("removed an orphan container", sandbox_id=sid)

        # 2. Mounts, deepest first.
        def owned_by_orphan(path: str) -> bool:
            for root in (sandboxes, runtime):
                rel = Path(path).relative_to(root) if Path(path).is_relative_to(root) else None
                if rel is not None and rel.parts and rel.parts[0].startswith(SANDBOX_PREFIX):
                    return rel.parts[0] not in live_ids
            parent = Path(path).parent
            return (parent == store / "cache" and path.endswith(".mnt")) or Path(
                path
            ).is_relative_to(store / "tmp")

        kept: set[str] = set()
        for target, _ in sorted(_mounts(), key=lambda m: len(m[0]), reverse=True):
            if owned_by_orphan(target):
                try:
                    _umount(target)
                    log.warning("removed an orphan mount", path=target)
                except OSError as exc:
                    kept |= {target}
                    log.error("could not remove an orphan mount", path=target, error=str(exc))
        # 3. Loop devices backed by an image in the store that nothing mounts: an
        # attached device that was never mounted does not autoclear.
        sources = {source for _, source in _mounts()}
        prefix = str(store) + "/"
        for device, backing in host.loop_devices():
            if backing.removesuffix(" (deleted)").startswith(prefix) and device not in sources:
                try:
                    host.loop_detach(device)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: it autocleared meanwhile
                        log.error("could not detach a loop device", device=device, error=str(exc))
                    continue
                log.warning("removed an orphan loop device", device=device, backing=backing)
        # 4. Cgroups, then 5. dirs (never through a mount still there).
        for sid in sorted(orphans):
            await _remove_cgroups(sid, orphan=True)
            for d in (sandboxes / sid, runtime / sid):
                if any(Path(k).is_relative_to(d) for k in kept):
                    continue
                if d.exists():
                    try:
                        await asyncio.to_thread(safefs.remove_dir, d)
                        log.warning("removed an orphan dir", path=str(d))
                    except OSError as exc:
                        log.error("could not remove an orphan dir", path=str(d), error=str(exc))
            sock = agents / f"{sid}.sock"
            if sock.exists():
                sock.unlink(missing_ok=True)
                log.warning("removed an orphan socket", path=str(sock))
        leftovers = [p for p in (store / "cache").glob("empty-*") if p.suffix != ".img"]
        with contextlib.suppress(OSError):
            leftovers += list((store / "tmp").iterdir())
        leftovers += [p for p in runtime.glob(".agent-*") if p.name != f".agent-{os.getpid()}"]
        for p in leftovers:
            if any(Path(k).is_relative_to(p) for k in kept):
                continue
            if p.is_dir() and not p.is_symlink():
                await asyncio.to_thread(shutil.rmtree, p, True)
            else:
                p.unlink(missing_ok=True)
            log.warning("removed an orphan file", path=str(p))
        # Only now are the layers of every adopted sandbox pinned.
        if self._templates is not None:
            await asyncio.to_thread(self._templates.collect_garbage)

    async def healthy(self, sandbox: Sandbox) -> bool:
        # A round trip to the agent: the container runs and can start processes.
        try:
            await asyncio.wait_for(self._agent(sandbox).ping(), 2.0)
        except Exception:
            return False
        return True

    async def reset(self, sandbox: Sandbox, hard: bool) -> None:
        if hard:
            # A new container on a new upper layer, under the same id: nothing of
            # the old one (files, processes, mounts) can survive.
            await self.restart(sandbox, wipe=True)
            return
        agent = self._agent(sandbox)
        await agent.killall(9)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not any(p.running for p in await agent.processes()):
                return
            await asyncio.sleep(0.01)
        raise Internal("processes survived SIGKILL during reset")

    def _live_init(self, sandbox: Sandbox) -> int:
        """The init pid, checked to be this sandbox's (its cgroup) before its
        namespaces are entered by /proc/PID: a recycled pid is never used."""
        pid = self._init_pid(sandbox)
        if not _is_live_init(pid, f"{CGROUP_PARENT}/{sandbox.id}"):
            raise Unavailable(f"sandbox {sandbox.id} is not running", reason="SANDBOX_NOT_RUNNING")
        return pid

    def _init_pid(self, sandbox: Sandbox) -> int:
        return int(sandbox.provider_data.get("init_pid") or 0)

    async def create_network(self, network_id: str) -> None:
        self._require()
        await network.create_bridge(network_id)

    async def delete_network(self, network_id: str) -> None:
        await network.delete_bridge(network_id)

    async def attach_network(
        self, sandbox: Sandbox, network_id: str, ifname: str, address: str, prefix: int
    ) -> None:
        await network.attach(network_id, self._live_init(sandbox), ifname, address, prefix)

    async def detach_network(self, sandbox: Sandbox, ifname: str) -> None:
        await network.detach(self._live_init(sandbox), ifname)

    async def open_port(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await network.open_port(self._live_init(sandbox), port)

    def listen_in_sandbox(self, sandbox: Sandbox, name: str) -> socket.socket:
        # ctl/ is root's and read-only inside: the sandbox can connect to the
        # socket but never swap it for a link (which a chmod by path would follow).
        return host.listen_unix(self._paths(sandbox)[1] / "ctl" / name, mode=0o666)

    def _cgroup_file(self, sandbox: Sandbox, controller: str, name: str) -> Path:
        return Path("/sys/fs/cgroup") / controller / CGROUP_PARENT.strip("/") / sandbox.id / name

    def _read_int(self, path: Path) -> int:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    async def probe(self, sandbox: Sandbox) -> Probe:
        pid = int(sandbox.provider_data.get("init_pid") or 0)
        # A killed init may stay a zombie until whoever inherited it reaps it, and a
        # reaped one's pid can be reused: alive is this sandbox's init, not dead.
        alive = _is_live_init(pid, f"{CGROUP_PARENT}/{sandbox.id}")
        oom = 0
        with contextlib.suppress(OSError):
            for line in (
                self._cgroup_file(sandbox, "memory", "memory.oom_control").read_text().splitlines()
            ):
                if line.startswith("oom_kill "):
                    oom = int(line.split()[1])
        return Probe(alive=alive, oom_kills=oom)

    async def usage(self, sandbox: Sandbox) -> Usage:
        disk_used = disk_total = 0
        bundle = Path(sandbox.provider_data["bundle"])
        with contextlib.suppress(OSError):
            st = os.statvfs(bundle / "disk")
            disk_total = st.f_blocks * st.f_frsize
            disk_used = (st.f_blocks - st.f_bfree) * st.f_frsize
        rx, tx, has_net = self._network(sandbox)
        return Usage(
            memory_used_bytes=self._read_int(
                self._cgroup_file(sandbox, "memory", "memory.usage_in_bytes")
            ),
            memory_limit_bytes=self._read_int(
                self._cgroup_file(sandbox, "memory", "memory.limit_in_bytes")
            ),
            process_count=self._read_int(self._cgroup_file(sandbox, "pids", "pids.current")),
            cpu_time_ns=self._read_int(self._cgroup_file(sandbox, "cpuacct", "cpuacct.usage")),
            disk_used_bytes=disk_used,
            disk_limit_bytes=disk_total,
            network_rx_bytes=rx,
            network_tx_bytes=tx,
            has_network=has_net,
        )

    def _network(self, sandbox: Sandbox) -> tuple[int, int, bool]:
        """Bytes through the sandbox's interfaces other than loopback, from its netns."""
        pid = sandbox.provider_data.get("init_pid", "")
        rx = tx = 0
        has_net = False
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
                name, _, fields = line.partition(":")
                if name.strip() == "lo":
                    continue
                cols = fields.split()
                rx, tx, has_net = rx + int(cols[0]), tx + int(cols[8]), True
        return rx, tx, has_net

    async def set_limits(
        self, sandbox: Sandbox, *, cpu_cores: float = 0.0, memory_mb: int = 0, disk_mb: int = 0
    ) -> Resources:
        cur = sandbox.resources
        if cpu_cores > MAX_CPU_CORES:
            raise ResourceExhausted(
                f"cpu_cores {cpu_cores:g} exceeds this host's {MAX_CPU_CORES:g}",
                reason="RESOURCES_UNAVAILABLE",
                resource="cpu_cores",
            )
        if memory_mb and memory_mb * 1024 * 1024 > _host_memory():
            raise ResourceExhausted(
                f"memory_mb {memory_mb} exceeds this host's memory",
                reason="RESOURCES_UNAVAILABLE",
                resource="memory_mb",
            )
        if disk_mb and disk_mb < cur.disk_mb:
            raise FailedPrecondition(
                "a running sandbox's disk can grow but not shrink",
                reason="DISK_SHRINK_UNSUPPORTED",
                provider=NAME,
            )
        if disk_mb > cur.disk_mb:
            self._check_disk(disk_mb, grow_mb=disk_mb - cur.disk_mb)
        args: list[str] = []
        if cpu_cores:
            args += [
                "--cpu-quota",
                str(int(cpu_cores * 100_000)),
                "--cpu-period",
                "100000",
                "--cpu-share",
                str(max(2, int(cpu_cores * 1024))),
            ]
        if args:
            await _run(*self._runc("update", *args, sandbox.id))
        if memory_mb:
            await self._set_memory(sandbox, memory_mb)
        if disk_mb and disk_mb > cur.disk_mb:
            await self._grow_disk(sandbox, disk_mb)
        return replace(
            cur,
            cpu_cores=cpu_cores or cur.cpu_cores,
            memory_mb=memory_mb or cur.memory_mb,
            disk_mb=disk_mb or cur.disk_mb,
        )

    async def _set_memory(self, sandbox: Sandbox, memory_mb: int) -> None:
        """cgroup v1 refuses a limit below current use rather than reclaiming it, so
        the daemon does what the OOM killer would: it kills the largest process
        (never the agent) until the limit fits, and says so in an event."""
        limit = str(memory_mb * 1024 * 1024)
        for _ in range(20):
            try:
                await _run(
                    *self._runc("update", "--memory", limit, "--memory-swap", limit, sandbox.id)
                )
                return
            except Internal as exc:
                if "unable to set memory limit" not in exc.message:
                    raise
            victim = self._largest_process(sandbox)
            if victim is None:
                break
            pid, rss = victim
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            log.warning(
                "killed the largest process to fit a lowered memory limit",
                pid=pid,
                rss_mb=rss >> 20,
                memory_mb=memory_mb,
            )
            if self._emit is not None:
                self._emit(
                    sandbox.id,
                    "out-of-memory",
                    f"a process using {rss >> 20} MB was killed to fit the new "
                    f"{memory_mb} MB limit",
                    cause="limit-lowered",
                    rss_bytes=str(rss),
                    memory_mb=str(memory_mb),
                )
            await asyncio.sleep(0.05)
        raise FailedPrecondition(
            f"the sandbox cannot fit in {memory_mb} MB",
            reason="MEMORY_LIMIT_TOO_LOW",
            memory_mb=str(memory_mb),
        )

    def _largest_process(self, sandbox: Sandbox) -> tuple[int, int] | None:
        init = int(sandbox.provider_data.get("init_pid") or 0)
        best: tuple[int, int] | None = None
        with contextlib.suppress(OSError):
            pids = self._cgroup_file(sandbox, "memory", "cgroup.procs").read_text().split()
            for pid in map(int, pids):
                if pid == init:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            rss = int(line.split()[1]) * 1024
                            if best is None or rss > best[1]:
                                best = (pid, rss)
        return best

    async def _grow_disk(self, sandbox: Sandbox, disk_mb: int) -> None:
        bundle = Path(sandbox.provider_data["bundle"])
        device = _mounted_device(bundle / "disk")
        if not device.startswith("/dev/loop"):
            raise Internal(f"cannot find the loop device of {bundle / 'disk'}")
        with (bundle / "disk.img").open("r+b") as f:
            f.truncate(disk_mb * 1024 * 1024)
        await _run("losetup", "-c", device)
        await _run("resize2fs", device)

    # -------------------------------------------------------------- processes

    def _uid_base(self, sandbox: Sandbox) -> int:
        """The first host uid of the sandbox's own range (kept across restarts)."""
        base = self._slots.take(sandbox.id, int(sandbox.provider_data.get("uid_base") or 0))
        sandbox.provider_data["uid_base"] = str(base)
        return base

    def _release(self, sandbox: Sandbox) -> None:
        """The sandbox is gone: its uid range and its hold on template layers too."""
        self._slots.release(sandbox.id)
        self._pins.pop(sandbox.id, None)

    def _pinned_layers(self) -> set[str]:
        return set().union(*self._pins.values()) if self._pins else set()

    def _agent_socket(self, sandbox: Sandbox) -> Path:
        return self._runtime / "agents" / f"{sandbox.id}.sock"

    def _agent(self, sandbox: Sandbox) -> Agent:
        return Agent(self._agent_socket(sandbox))

    def _start_request(self, sandbox: Sandbox, command: Command, tag: str) -> agentpb.StartRequest:
        template_env = self._templates.env(sandbox.spec.template) if self._templates else None
        env = process_env(sandbox, command, template_env)
        return agentpb.StartRequest(
            args=command.args,
            env=[f"{k}={v}" for k, v in env.items()],
            cwd=command.cwd,
            timeout_ms=command.timeout_ms,
            stdin=command.stdin,
            tag=tag,
        )

    def run(
        self, sandbox: Sandbox, command: Command, *, tag: str = "", kill_on_close: bool = True
    ) -> ProcessRun:
        req = self._start_request(sandbox, command, tag)
        req.attach, req.kill_on_close = True, kill_on_close
        return _LocalRun(self._agent(sandbox), agentpb.Request(start=req))

    async def start_process(self, sandbox: Sandbox, command: Command, tag: str) -> ProcessInfo:
        return await self._agent(sandbox).start(self._start_request(sandbox, command, tag))

    async def attach(
        self,
        sandbox: Sandbox,
        process_id: str,
        stdout_offset: int,
        stderr_offset: int,
        output: bool = True,
    ) -> AsyncIterator[ProcessEvent]:
        conn, started = await self._agent(sandbox).follow(
            agentpb.Request(
                attach=agentpb.AttachRequest(
                    id=process_id,
                    stdout_offset=stdout_offset,
                    stderr_offset=stderr_offset,
                    no_output=not output,
                )
            )
        )
        try:
            yield started
            async for ev in conn.events(stdout_offset, stderr_offset):
                yield ev
        finally:
            await conn.close()

    async def write_stdin(
        self, sandbox: Sandbox, process_id: str, data: bytes, close: bool
    ) -> None:
        await self._agent(sandbox).write_stdin(process_id, data, close)

    async def signal(self, sandbox: Sandbox, process_id: str, signal: int) -> None:
        if not 0 < signal < 65:
            raise InvalidArgument(
                f"signal {signal} is not a valid signal number", reason="INVALID_SIGNAL"
            )
        await self._agent(sandbox).signal(process_id, signal)

    async def list_processes(self, sandbox: Sandbox) -> list[ProcessInfo]:
        return await self._agent(sandbox).processes()

    # -------------------------------------------------------------- files

    def _fs(self, sandbox: Sandbox) -> SandboxFS:
        def open_root() -> int:
            try:
                return _open_init_root(self._init_pid(sandbox), f"{CGROUP_PARENT}/{sandbox.id}")
            except OSError as exc:
                raise Unavailable(
                    f"sandbox {sandbox.id} is not running", reason="SANDBOX_NOT_RUNNING"
                ) from exc

        # A sandbox started before uid ranges runs in the storage range itself.
        return SandboxFS(
            open_root, int(sandbox.provider_data.get("uid_base") or rootfs_mod.UID_SHIFT)
        )

    async def read_file(
        self, sandbox: Sandbox, path: str, offset: int, length: int
    ) -> AsyncIterator[bytes]:
        async for chunk in self._fs(sandbox).read(path, offset, length):
            yield chunk

    async def write_file(
        self,
        sandbox: Sandbox,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        mode: int,
        make_parents: bool,
        append: bool,
    ) -> tuple[FileInfo, int]:
        return await self._fs(sandbox).write(path, chunks, mode, make_parents, append)

    async def list_dir(self, sandbox: Sandbox, path: str) -> list[FileInfo]:
        return await asyncio.to_thread(self._fs(sandbox).list_sync, path)

    async def stat(self, sandbox: Sandbox, path: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).stat_sync, path)

    async def mkdir(self, sandbox: Sandbox, path: str, parents: bool) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).mkdir_sync, path, parents)

    async def remove(self, sandbox: Sandbox, path: str, recursive: bool) -> None:
        await asyncio.to_thread(self._fs(sandbox).remove_sync, path, recursive)

    async def move(self, sandbox: Sandbox, source: str, destination: str) -> FileInfo:
        return await asyncio.to_thread(self._fs(sandbox).move_sync, source, destination)


class _LocalRun(ProcessRun):
    def __init__(self, agent: Agent, req: agentpb.Request) -> None:
        self._agent = agent
        self._req = req
        self._conn: AgentConnection | None = None
        self._closed = False

    async def events(self) -> AsyncIterator[ProcessEvent]:
        self._conn, started = await self._agent.follow(self._req)
        yield started
        offsets = {"stdout": 0, "stderr": 0}
        try:
            async for ev in self._conn.events():
                if isinstance(ev, Output):
                    offsets[ev.stream] = ev.offset + len(ev.data)
                yield ev
            return
        except AgentGone:
            if self._closed:  # closed on purpose (a failed input): nothing to resume
                raise
            # Input racing the exit can reset this connection (asyncio then drops
            # what was still buffered, the exit status too). The agent keeps the
            # process, so re-attach where the output stopped; if the sandbox is
            # really gone, this fails in turn and says so.
            pass
        conn, _ = await self._agent.follow(
            agentpb.Request(
                attach=agentpb.AttachRequest(
                    id=started.process_id,
                    stdout_offset=offsets["stdout"],
                    stderr_offset=offsets["stderr"],
                )
            )
        )
        try:
            async for ev in conn.events(offsets["stdout"], offsets["stderr"]):
                yield ev
        finally:
            await conn.close()

    def _need(self) -> AgentConnection:
        if self._conn is None:
            raise FailedPrecondition("the process has not started yet", reason="NOT_STARTED")
        return self._conn

    async def send_stdin(self, data: bytes) -> None:
        await self._need().send(STDIN, data)

    async def close_stdin(self) -> None:
        await self._need().send(CLOSE, b"")

    async def send_signal(self, signal: int) -> None:
        await self._need().send_signal(signal)

    async def aclose(self) -> None:
        self._closed = True
        if self._conn is not None:
            await self._conn.close()
